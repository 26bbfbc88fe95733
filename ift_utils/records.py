"""The one multiple-choice record type, and row validation that counts what it rejects.

Schema of the original study (one JSON object per line):
``{"id": int, "question": str, "choices": [str, ...], "answer": int (0-based), "explanation": str, "raw": {...}}``.
We add ``domain``, ``subject``, ``context`` and ``popularity`` (all optional on input).

Rejection rule (stated once, applied by every source): a row is *rejected* when it is not a JSON
object, lacks ``question``/``choices``/``answer``, has fewer than 2 choices, an answer index that is not
an integer in range, a non-finite number, an empty question or choice, or an id already seen; it is
*repaired* (and counted as such) when only surrounding whitespace needed stripping, an integral float
answer or a numeric-string id needed converting, or an id was missing (the row's position is used). Nothing is dropped without being counted in a `RowReport`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

LETTERS = "ABCDEFGHIJ"
MAX_FIELD_CHARS = 20_000


class DataError(ValueError):
    """Input data that cannot be used at all (missing folder or file, unreadable file)."""


@dataclass(frozen=True)
class MCQ:
    """One multiple-choice question with its gold answer (0-based index into `choices`)."""

    id: int
    question: str
    choices: tuple[str, ...]
    answer: int
    explanation: str = ""
    domain: str = ""
    subject: str = ""
    context: str = ""
    popularity: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The original schema plus our optional fields, as a plain dict."""
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d


@dataclass
class RowReport:
    """Counts of rows read, kept, repaired and rejected (with reasons) for one input file."""

    source: str
    read: int = 0
    kept: int = 0
    repaired: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "read": self.read, "kept": self.kept, "repaired": self.repaired,
                "rejected": self.n_rejected, "reasons": dict(sorted(self.rejected.items()))}

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (f"{self.source}: read {self.read}, kept {self.kept} (repaired {self.repaired}), "
                f"rejected {self.n_rejected} ({reasons})")


class RowError(ValueError):
    """A row that breaks the rejection rule; `reason` is a short stable key for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _clean(text: Any, what: str) -> tuple[str, bool]:
    if not isinstance(text, str):
        if isinstance(text, (int, float)) and not isinstance(text, bool) and math.isfinite(text):
            text = str(text)
        else:
            raise RowError(f"bad_{what}", f"{what} must be text, got {type(text).__name__}")
    if len(text) > MAX_FIELD_CHARS:
        raise RowError("field_too_long", f"{what} has {len(text)} characters (max {MAX_FIELD_CHARS})")
    cleaned = text.strip()  # inner whitespace is content (MMLU questions hold newlines): kept as is
    return cleaned, cleaned != text


def parse_row(row: Any, *, position: int, domain: str = "", subject: str = "") -> tuple[MCQ, bool]:
    """Validate one raw row into an MCQ; return (record, repaired). Raises RowError by the rule above."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"got {type(row).__name__}")
    for key in ("question", "choices", "answer"):
        if key not in row:
            raise RowError(f"missing_{key}")
    repaired = False
    question, rep = _clean(row["question"], "question")
    repaired |= rep
    if not question:
        raise RowError("empty_question")
    choices_raw = row["choices"]
    if not isinstance(choices_raw, (list, tuple)):
        raise RowError("bad_choices", "choices must be a list")
    if len(choices_raw) < 2:
        raise RowError("too_few_choices", f"{len(choices_raw)} choice(s)")
    if len(choices_raw) > len(LETTERS):
        raise RowError("too_many_choices", f"{len(choices_raw)} choices (max {len(LETTERS)})")
    choices = []
    for c in choices_raw:
        text, rep = _clean(c, "choice")
        repaired |= rep
        if not text:
            raise RowError("empty_choice")
        choices.append(text)
    answer = row["answer"]
    if isinstance(answer, float) and math.isfinite(answer) and answer.is_integer():
        answer, repaired = int(answer), True
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise RowError("bad_answer", f"answer must be an integer index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise RowError("answer_out_of_range", f"answer {answer} with {len(choices)} choices")
    rid = row.get("id")
    if rid is None:
        rid, repaired = position, True
    if isinstance(rid, bool) or not isinstance(rid, int):
        if isinstance(rid, str) and rid.strip().lstrip("-").isdigit():
            rid, repaired = int(rid), True
        else:
            raise RowError("bad_id", f"id must be an integer, got {rid!r}")
    explanation, rep = _clean(row.get("explanation") or "", "explanation")
    repaired |= rep
    context, rep = _clean(row.get("context") or "", "context")
    repaired |= rep
    pop = row.get("popularity")
    if pop is not None:
        if isinstance(pop, bool) or not isinstance(pop, (int, float)) or not math.isfinite(pop):
            raise RowError("bad_popularity", f"popularity must be a finite number, got {pop!r}")
        pop = float(pop)
    raw = row.get("raw") if isinstance(row.get("raw"), dict) else {}
    rec = MCQ(id=rid, question=question, choices=tuple(choices), answer=answer, explanation=explanation,
              domain=str(row.get("domain") or domain), subject=str(row.get("subject") or subject),
              context=context, popularity=pop, raw=raw)
    return rec, repaired


def validate_rows(rows: list[Any], source: str, *, domain: str = "", subject: str = "") -> tuple[list[MCQ], RowReport]:
    """Validate raw rows by the module's rule; duplicates of an id already kept are rejected."""
    report = RowReport(source=source)
    kept: list[MCQ] = []
    seen: set[int] = set()
    for i, row in enumerate(rows):
        report.read += 1
        try:
            rec, repaired = parse_row(row, position=i, domain=domain, subject=subject)
            if rec.id in seen:
                raise RowError("duplicate_id", str(rec.id))
        except RowError as e:
            report.rejected[e.reason] += 1
            continue
        seen.add(rec.id)
        kept.append(rec)
        report.kept += 1
        report.repaired += int(repaired)
    return kept, report
