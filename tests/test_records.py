"""Row validation: malformed rows are counted by reason, never silently dropped."""

import json

from hypothesis import given
from hypothesis import strategies as st

from ift_utils.data_sources import load_jsonl_domain, load_mmlu, read_jsonl_rows
from ift_utils.records import validate_rows

GOOD = {"id": 1, "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 2, "explanation": "x", "raw": {}}


def test_each_rule():
    rows = [GOOD,
            {**GOOD, "id": 2, "answer": 4},                     # out of range
            {**GOOD, "id": 3, "choices": ["only"]},             # too few choices
            {**GOOD, "id": 1},                                  # duplicate id
            {k: v for k, v in GOOD.items() if k != "question"},  # missing field
            {**GOOD, "id": 6, "answer": float("nan")},           # NaN
            {**GOOD, "id": 7, "choices": ["a", "", "b", "c"]},  # empty option
            {**GOOD, "id": 8, "question": "  spaced\n question "},  # repaired
            {**GOOD, "id": 9, "question": "x" * 30_000},         # huge field
            "not an object",
            {**GOOD, "id": 11, "answer": True}]                  # bool is not an index
    kept, rep = validate_rows(rows, "t")
    assert [q.id for q in kept] == [1, 8]
    assert kept[1].question == "spaced\n question"
    assert rep.read == 11 and rep.kept == 2 and rep.repaired == 1 and rep.n_rejected == 9
    assert rep.rejected == {"answer_out_of_range": 1, "too_few_choices": 1, "duplicate_id": 1, "missing_question": 1,
                            "bad_answer": 2, "empty_choice": 1, "field_too_long": 1, "not_an_object": 1}
    assert "rejected 9" in str(rep)


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                          st.fixed_dictionaries({"question": st.text(max_size=5),
                                                 "choices": st.lists(st.text(max_size=3), max_size=5),
                                                 "answer": st.one_of(st.integers(-2, 6), st.floats())})),
                max_size=20))
def test_counts_always_add_up(rows):
    kept, rep = validate_rows(rows, "fuzz")
    assert rep.read == len(rows) == rep.kept + rep.n_rejected
    assert len(kept) == rep.kept
    for q in kept:
        assert 0 <= q.answer < len(q.choices) >= 2


def test_jsonl_folder(tmp_path):
    d = tmp_path / "history"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps(GOOD) + "\n{broken json\n\n" + json.dumps({**GOOD, "id": 2}) + "\n")
    (d / "test.jsonl").write_text(json.dumps(GOOD) + "\n")
    splits, reports, missing = load_jsonl_domain(tmp_path, "history")
    assert missing == ["dev"]
    assert len(splits["train"]) == 2
    assert reports[0].rejected == {"invalid_json": 1} and reports[0].read == 3


def test_wrong_encoding(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"\xff\xfe\x00garbage")
    try:
        read_jsonl_rows(p, "x")
    except ValueError as e:
        assert "UTF-8" in str(e)
    else:
        raise AssertionError("expected a DataError")


def test_mmlu_drops_the_two_stray_header_rows():
    by_subject, rep = load_mmlu()
    assert rep.read == 14_044 and rep.kept == 14_042
    assert rep.rejected == {"bad_answer": 2}
    assert len(by_subject) == 57


LINES = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries(
        {"id": st.one_of(st.integers(0, 5), st.text(max_size=3)), "question": st.text(max_size=8),
         "choices": st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=6),
         "answer": st.one_of(st.integers(-3, 7), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=2))})),
    st.sampled_from(['{"id": 1, "question": "Q", "choices": ["a", "b"], "answer": NaN}', "Infinity", "[]", "{",
                     "\x00", '"just a string"', json.dumps(GOOD)]),
    st.text(max_size=20))


@given(st.one_of(st.lists(LINES, max_size=15).map(lambda ls: "\n".join(ls).encode()), st.binary(max_size=200)))
def test_any_jsonl_file_is_counted_or_refused_by_name(tmp_path_factory, content):
    """Whatever a JSONL file holds, it is either refused as a whole (not UTF-8) with an error naming the file,
    or every non-blank line is counted once: kept, or rejected with a reason."""
    import io

    from ift_utils.data_sources import DataError

    p = tmp_path_factory.mktemp("fuzz") / "train.jsonl"
    p.write_bytes(content)
    try:
        kept, rep = read_jsonl_rows(p, "fuzz")
    except DataError as e:
        assert "train.jsonl" in str(e) and "UTF-8" in str(e)
        return
    lines = [ln for ln in io.StringIO(content.decode("utf-8"), newline=None) if ln.strip()]
    assert rep.read == len(lines) == rep.kept + rep.n_rejected
    assert len(kept) == rep.kept and len({q.id for q in kept}) == len(kept)
    for q in kept:
        assert 0 <= q.answer < len(q.choices) and all(isinstance(c, str) and c for c in q.choices)


def test_empty_split_files_stop_with_the_folder_named(tmp_path):
    from ift_utils.config import load_params
    from ift_utils.data_sources import DataError, load_study_data

    d = tmp_path / "history"
    d.mkdir()
    (d / "train.jsonl").write_text("")
    (d / "test.jsonl").write_text(json.dumps(GOOD) + "\n")
    P = load_params("params/smoke.yaml", {"data_source": "jsonl", "data_path": str(tmp_path), "domains": ["history"],
                                          "id_ood_source": "none"})
    try:
        load_study_data(P)
    except DataError as e:
        assert "'history' needs train.jsonl and test.jsonl" in str(e) and str(d) in str(e)
    else:
        raise AssertionError("expected a DataError")
