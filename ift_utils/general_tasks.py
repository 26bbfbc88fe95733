"""General (knowledge-free) instruction data: generated offline tasks with exact answers, and a loader
for alpaca-format JSON files.

Why: the paper mixes every domain IFT set 1:1 with alpaca-gpt4 so that the model also learns the
instruction format. No alpaca copy ships offline, so we generate short tasks whose answers need no world
knowledge (arithmetic, string and list manipulation, counting, case changes, JSON/CSV formatting); a
real alpaca file can be loaded instead when one is available. Generated examples are kept short
(prompt + answer ~20-50 tokens) because the default study trains on a laptop CPU.

Alpaca rejection rule (stated once): the file must be readable JSON whose top level is a list (else
`AlpacaError` naming the file; an empty file is an error too). A row is rejected when it is not an object,
its `instruction` or `output` is missing or not a string, its `instruction` or `output` is blank, its
`input` is present but neither a string nor null, or any of the three fields exceeds 20,000 characters.
A missing/null `input` is read as "" (not counted as a repair). Every rejection is counted by reason.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ift_utils.prompts import chat
from ift_utils.records import MAX_FIELD_CHARS, RowReport

WORDS = ("apple", "river", "candle", "garden", "pencil", "window", "silver", "rocket", "forest", "planet",
         "bridge", "guitar", "harbor", "jacket", "kitten", "lemon", "marble", "needle", "orange", "pillow",
         "rabbit", "saddle", "tunnel", "violin", "wagon", "yellow", "basket", "cotton", "dragon", "engine",
         "finger", "ginger", "hammer", "island", "jungle", "ladder", "mirror", "nectar", "oyster", "pepper",
         "banana", "cherry", "summer", "winter", "coffee", "butter", "letter", "button", "bottle", "paper")
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jules", "Kai", "Lena",
         "Mika", "Nora", "Omar", "Priya", "Rosa", "Sami", "Tomas", "Uma")
COLORS = ("red", "green", "blue", "black", "white", "pink", "gray", "brown", "purple", "gold")


class AlpacaError(ValueError):
    """An alpaca-format file that cannot be read at all; the message names the file."""


Task = dict[str, str]


def _t(kind: str, instruction: str, inp: str, output: str) -> Task:
    return {"instruction": instruction, "input": inp, "output": output, "kind": kind}


def _arith(rng: random.Random) -> Task:
    op = rng.choice("+-*")
    a, b = (rng.randint(2, 99), rng.randint(2, 99)) if op != "*" else (rng.randint(2, 30), rng.randint(2, 12))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return _t("arithmetic", f"What is {a} {op} {b}? Answer with the number only.", "", str(value))


def _reverse(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    return _t("reverse", "Reverse the letters of this word.", word, word[::-1])


def _sort(rng: random.Random) -> Task:
    nums = rng.sample(range(1, 100), rng.randint(3, 6))
    desc = rng.random() < 0.5
    order = "descending" if desc else "ascending"
    return _t("sort", f"Sort these numbers in {order} order.", ", ".join(map(str, nums)),
              ", ".join(map(str, sorted(nums, reverse=desc))))


def _count_letter(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    return _t("count_letter", f"How many times does the letter '{letter}' appear in the word '{word}'?", "",
              str(word.count(letter)))


def _count_words(rng: random.Random) -> Task:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
    return _t("count_words", "How many words are in this text?", " ".join(words), str(len(words)))


def _case(rng: random.Random) -> Task:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
    if rng.random() < 0.5:
        return _t("uppercase", "Convert this text to uppercase.", words, words.upper())
    mixed = "".join(c.upper() if rng.random() < 0.5 else c for c in words)
    return _t("lowercase", "Convert this text to lowercase.", mixed, mixed.lower())


def _to_json(rng: random.Random) -> Task:
    name, age, color = rng.choice(NAMES), rng.randint(18, 90), rng.choice(COLORS)
    obj = {"name": name, "age": age, "color": color}
    return _t("json", "Write this record as a JSON object with keys name, age and color.",
              f"name {name}, age {age}, color {color}", json.dumps(obj))


def _to_csv(rng: random.Random) -> Task:
    items = rng.sample(COLORS, rng.randint(3, 5))
    return _t("csv", "Write these items as one comma-separated line without spaces.", "; ".join(items),
              ",".join(items))


def _extreme(rng: random.Random) -> Task:
    nums = rng.sample(range(1, 100), rng.randint(3, 6))
    if rng.random() < 0.5:
        return _t("max", "What is the largest number in this list?", ", ".join(map(str, nums)), str(max(nums)))
    return _t("min", "What is the smallest number in this list?", ", ".join(map(str, nums)), str(min(nums)))


def _first_letters(rng: random.Random) -> Task:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 5))]
    return _t("first_letters", "Write the first letter of each word, joined together.", " ".join(words),
              "".join(w[0] for w in words))


GENERATORS: tuple[Callable[[random.Random], Task], ...] = (
    _arith, _reverse, _sort, _count_letter, _count_words, _case, _to_json, _to_csv, _extreme, _first_letters)


def generate_general_tasks(n: int, seed: int = 0) -> list[Task]:
    """`n` knowledge-free tasks with exact answers, kinds in rotation; the same seed gives the same list.

    Each is `{"instruction", "input", "output", "kind"}` (alpaca fields plus the task kind).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"general-tasks:{seed}")
    order = list(GENERATORS)
    tasks: list[Task] = []
    while len(tasks) < n:
        rng.shuffle(order)
        tasks.extend(gen(rng) for gen in order[:n - len(tasks)])
    return tasks


def _check_row(row: Any) -> tuple[Task | None, str | None]:
    """One alpaca row by the module's rule: (task, None) or (None, rejection reason)."""
    if not isinstance(row, dict):
        return None, "not_an_object"
    for key in ("instruction", "output"):
        if key not in row:
            return None, f"missing_{key}"
        if not isinstance(row[key], str):
            return None, f"bad_{key}"
    inp = row.get("input")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        return None, "bad_input"
    if any(len(v) > MAX_FIELD_CHARS for v in (row["instruction"], inp, row["output"])):
        return None, "field_too_long"
    if not row["instruction"].strip():
        return None, "empty_instruction"
    if not row["output"].strip():
        return None, "empty_output"
    return {"instruction": row["instruction"], "input": inp, "output": row["output"]}, None


def load_alpaca(path: str | Path) -> tuple[list[Task], RowReport]:
    """Read an alpaca-format JSON list, keeping valid rows and counting rejections (rule above)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AlpacaError(f"cannot read alpaca file {path}: {e}") from e
    if not text.strip():
        raise AlpacaError(f"alpaca file {path} is empty (expected a JSON list of "
                          "{instruction, input, output} objects)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AlpacaError(f"alpaca file {path} is not valid JSON ({e}); expected a JSON list of "
                          "{instruction, input, output} objects") from e
    if not isinstance(data, list):
        raise AlpacaError(f"alpaca file {path} holds a JSON {type(data).__name__}, expected a list of "
                          "{instruction, input, output} objects")
    return alpaca_rows(data, str(path))


def alpaca_rows(rows: Any, source: str) -> tuple[list[Task], RowReport]:
    """Alpaca rows (a file's list, or a hub split) checked one by one: kept, or counted by rejection reason."""
    report = RowReport(source=source)
    kept: list[Task] = []
    for row in rows:
        report.read += 1
        task, reason = _check_row(row)
        if task is None:
            report.rejected[reason] += 1
            continue
        kept.append(task)
        report.kept += 1
    return kept, report


def general_prompt(task: Task) -> str:
    """The user turn of a general task: the instruction, then a blank line and the input when present."""
    inp = task.get("input") or ""
    return task["instruction"] + (f"\n\n{inp}" if inp else "")


def general_example(task: Task, template: str, tokenizer: Any = None) -> dict[str, str]:
    """A general task as a chat training example: `{"prompt": chat(user turn), "response": output}`."""
    return {"prompt": chat(general_prompt(task), template, tokenizer), "response": task["output"]}
