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
