"""General tasks: every generated answer is recomputed exactly; generation is seeded; the alpaca loader
keeps good rows, counts malformed ones by reason and fails clearly on unreadable files."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ift_utils.general_tasks import (
    AlpacaError,
    general_example,
    general_prompt,
    generate_general_tasks,
    load_alpaca,
)
from ift_utils.prompts import vicuna


def _numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(", ")]


def recompute(task: dict) -> str:
    """The answer of a generated task, recomputed from its instruction and input alone."""
    kind, ins, inp = task["kind"], task["instruction"], task["input"]
    if kind == "arithmetic":
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\? Answer with the number only\.", ins).groups()
        return str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])
    if kind == "reverse":
        return inp[::-1]
    if kind == "sort":
        return ", ".join(map(str, sorted(_numbers(inp), reverse="descending" in ins)))
    if kind == "count_letter":
        letter, word = re.fullmatch(r"How many times does the letter '(.)' appear in the word '(\w+)'\?", ins).groups()
        return str(word.count(letter))
    if kind == "count_words":
        return str(len(inp.split()))
    if kind == "uppercase":
        return inp.upper()
    if kind == "lowercase":
        return inp.lower()
    if kind == "json":
        name, age, color = re.fullmatch(r"name (\w+), age (\d+), color (\w+)", inp).groups()
        return json.dumps({"name": name, "age": int(age), "color": color})
    if kind == "csv":
        return ",".join(inp.split("; "))
    if kind == "max":
        return str(max(_numbers(inp)))
    if kind == "min":
        return str(min(_numbers(inp)))
    if kind == "first_letters":
        return "".join(w[0] for w in inp.split())
    raise AssertionError(f"unknown kind {kind}")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_answers_are_exact(seed: int) -> None:
    tasks = generate_general_tasks(300, seed)
    assert len(tasks) == 300
    for t in tasks:
        assert t["output"] == recompute(t), t
        assert set(t) == {"instruction", "input", "output", "kind"}
        assert t["output"].strip() and len(general_prompt(t)) + len(t["output"]) < 250


def test_kinds_rotate_and_seed_is_deterministic() -> None:
    a, b = generate_general_tasks(50, seed=3), generate_general_tasks(50, seed=3)
    assert a == b
    assert a != generate_general_tasks(50, seed=4)
    assert generate_general_tasks(0, 0) == []
    kinds = Counter(t["kind"].replace("lowercase", "uppercase").replace("min", "max") for t in a)
    assert len(kinds) == 10 and max(kinds.values()) == min(kinds.values()) == 5
    assert generate_general_tasks(7, 3) == generate_general_tasks(7, 3)
    with pytest.raises(ValueError):
        generate_general_tasks(-1)


def test_general_example() -> None:
    t = {"instruction": "Reverse the letters of this word.", "input": "paper", "output": "repap"}
    ex = general_example(t, "vicuna")
    assert ex == {"prompt": vicuna("Reverse the letters of this word.\n\npaper"), "response": "repap"}
    no_input = general_example({"instruction": "Say hi.", "input": "", "output": "hi"}, "none")
    assert no_input == {"prompt": "Say hi.", "response": "hi"}


def test_load_alpaca_good_and_malformed(tmp_path) -> None:
    rows = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Echo.", "output": "ok"},                       # input missing: read as ""
        {"instruction": "Echo.", "input": None, "output": "ok"},        # input null: read as ""
        "not an object",
        {"input": "x", "output": "y"},                                  # missing instruction
        {"instruction": 3, "output": "y"},                              # non-string instruction
        {"instruction": "x"},                                           # missing output
        {"instruction": "x", "output": ["y"]},                          # non-string output
        {"instruction": "x", "output": "   "},                          # empty output
        {"instruction": " ", "output": "y"},                            # empty instruction
        {"instruction": "x", "input": 5, "output": "y"},                # non-string input
        {"instruction": "x", "output": "y" * 20_001},                   # huge field
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    kept, report = load_alpaca(path)
    assert kept == [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
                    {"instruction": "Echo.", "input": "", "output": "ok"},
                    {"instruction": "Echo.", "input": "", "output": "ok"}]
    assert (report.read, report.kept, report.n_rejected) == (12, 3, 9)
    assert dict(report.rejected) == {"not_an_object": 1, "missing_instruction": 1, "bad_instruction": 1,
                                     "missing_output": 1, "bad_output": 1, "empty_output": 1,
                                     "empty_instruction": 1, "bad_input": 1, "field_too_long": 1}
    (tmp_path / "none.json").write_text("[]")
    assert load_alpaca(tmp_path / "none.json")[0] == []


@pytest.mark.parametrize("content, words", [("", "empty"), ("{not json", "not valid JSON"),
                                            ('{"instruction": "x"}', "expected a list")])
def test_load_alpaca_bad_files(tmp_path, content: str, words: str) -> None:
    path = tmp_path / "broken_alpaca.json"
    path.write_text(content)
    with pytest.raises(AlpacaError, match=words) as err:
        load_alpaca(path)
    assert "broken_alpaca.json" in str(err.value)
    with pytest.raises(AlpacaError, match="missing.json"):
        load_alpaca(tmp_path / "missing.json")


@given(st.one_of(st.binary(max_size=120),
                 st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=4),
                                    st.dictionaries(st.sampled_from(["instruction", "input", "output", "x"]),
                                                    st.one_of(st.none(), st.integers(), st.floats(),
                                                              st.text(max_size=6)))),
                          max_size=12).map(lambda rows: json.dumps(rows).encode())))
def test_any_alpaca_file_is_counted_or_refused_by_name(tmp_path_factory, content: bytes) -> None:
    """An alpaca file is refused as a whole (AlpacaError naming it) or every row is counted once."""
    p = tmp_path_factory.mktemp("fuzz") / "general.json"
    p.write_bytes(content)
    try:
        kept, report = load_alpaca(p)
    except AlpacaError as e:
        assert "general.json" in str(e)
        return
    assert report.read == len(json.loads(content)) == report.kept + report.n_rejected == len(kept) + report.n_rejected
    for t in kept:
        assert t["instruction"].strip() and t["output"].strip() and isinstance(t["input"], str)


def test_longer_request_starts_with_the_same_tasks() -> None:
    """general_only takes n + k tasks and the other cells the first k: a longer list must extend a shorter one."""
    from ift_utils.general_tasks import generate_general_tasks

    long = generate_general_tasks(57, seed=3)
    assert all(generate_general_tasks(m, seed=3) == long[:m] for m in (0, 1, 9, 10, 11, 30))
