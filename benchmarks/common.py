"""What every benchmark shares: the result row, sizes, the machine's description, the questions and examples
they time, and the markdown/CSV report."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ift_utils.records import MCQ

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# One MMLU subject per domain of the original study (medicine, history, engineering, jurisprudence) and one
# STEM subject; their 5-shot letter prompts are ~450-680 tokens.
SUBJECTS = ("college medicine", "prehistory", "electrical engineering", "international law",
            "high school mathematics")


@dataclass
class Row:
    """One line of the table: a measured value, what it is compared with, and their ratio."""

    section: str
    measure: str
    value: float | str | None
    reference: float | None = None
    unit: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / reference (speed-up, cost ratio or fraction of the limit, as the measure says)."""
        if isinstance(self.value, (int, float)) and self.reference:
            return float(self.value) / self.reference
        return None


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; `quick()` is for checking that the code runs, not for figures."""

    k_shot: int = 5
    per_subject: int = 40
    explain_items: int = 16
    explain_batch: int = 8
    explain_new_tokens: int | None = None  # None: params/default.yaml's explanation_max_new_tokens
    train_examples: int = 16
    train_batch: int = 4
    eval_questions: int = 100
    eval_cells: int = 2
    harness_questions: int = 100
    matmul_seconds: float = 1.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(per_subject=2, explain_items=4, explain_batch=2, explain_new_tokens=8, train_examples=4,
                   train_batch=2, eval_questions=4, eval_cells=1, harness_questions=4, matmul_seconds=0.1)


@dataclass
class ProbeSet:
    """Questions of one subject with their k-shot demos (the subject's first k questions)."""

    subject: str
    demos: tuple[MCQ, ...]
    questions: list[MCQ]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run fn once; return (its result, wall seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def non_embedding_params(model) -> int:
    """Parameters minus the input embedding (and an untied output head): what a token's forward multiplies."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total -= emb.numel()
    if head is not None and head.weight.data_ptr() != emb.data_ptr():
        total -= head.weight.numel()
    return total


def paper_spec(ps: ProbeSet, mode: str = "letter"):
    """The original study's k-shot prompt for one subject (paper strings, MMLU quirk) in either scoring mode."""
    from ift_utils.probing import PromptSpec

    return PromptSpec(mode=mode, demos=ps.demos, subject=ps.subject, template="none", mmlu_quirk=True)


def token_counts(tok, questions: Sequence[MCQ], spec, two_level: bool = True) -> tuple[int, int, int]:
    """(full prompt tokens, tokens `score_mcqs` processes, scored options) for one prompt set, mirroring it: the
    shared prefix once, then each context's own tokens and (cloze) each option's later tokens (two levels), or
    every option row's own tokens (`two_level=False`; letter mode: one row per question). Padding not counted."""
    from ift_utils.probing import encode_question

    encoded = [encode_question(tok, q, spec) for q in questions]
    n_options = sum(len(rows) for rows in encoded)
    if spec.mode == "letter":
        seqs = [rows[0][0] for rows in encoded]
        full = sum(len(s) for s in seqs)
        shared = max(0, min(len(os.path.commonprefix(seqs)), min(len(s) for s in seqs) - 1))
        return full, shared + sum(len(s) - shared for s in seqs), n_options
    full = sum(len(ctx) + len(scored) for rows in encoded for ctx, scored in rows)
    if two_level:
        contexts = {tuple(ctx): None for rows in encoded for ctx, _ in rows}
        seqs = [list(c) for c in contexts]
        shared = max(0, min(len(os.path.commonprefix(seqs)), min(len(s) for s in seqs) - 1))
        later = sum(len(scored) - 1 for rows in encoded for _, scored in rows)
        return full, shared + sum(len(s) - shared for s in seqs) + later, n_options
    rows = [(ctx + scored, len(scored)) for r in encoded for ctx, scored in r]
    seqs = [r[0] for r in rows]
    shared = len(os.path.commonprefix(seqs))
    shared = max(0, min(shared, min(len(s) for s in seqs) - 1 - max(r[1] for r in rows)))
    return full, shared + sum(len(s) - shared for s in seqs), n_options


def probe_sets(subjects: Sequence[str], sizes: Sizes) -> list[ProbeSet]:
    """Per subject: the first k questions as demos, the next `per_subject` as the scored set."""
    from ift_utils.data_sources import load_mmlu

    by_subject, _ = load_mmlu()
    out = []
    for s in subjects:
        qs = by_subject.get(s)
        if not qs or len(qs) < sizes.k_shot + sizes.per_subject:
            raise SystemExit(f"MMLU subject {s!r} is missing or has fewer than {sizes.k_shot + sizes.per_subject} "
                             "questions")
        out.append(ProbeSet(s, tuple(qs[: sizes.k_shot]), list(qs[sizes.k_shot: sizes.k_shot + sizes.per_subject])))
    return out


def fact_questions(n: int) -> list[MCQ]:
    """Short questions of the default study's facts suite (for explanations and training examples)."""
    from ift_utils.data_facts import build_facts_suite

    suite = build_facts_suite(seed=0, domains=["city_country"], n_train=n, n_dev=1, n_test=1, n_id=1)
    return suite["city_country"]["train"][:n]


def chat_examples(tok, questions: list[MCQ]) -> list[dict]:
    """Chat-formatted training pairs as the default study builds them (model template, cloze answers)."""
    from ift_utils.explanations import fallback_explanation
    from ift_utils.prompts import chat, ift_query, ift_response

    return [{"prompt": chat(ift_query(q, mode="cloze"), "model", tok),
             "response": ift_response(q, q.answer, fallback_explanation(q, q.answer), "cloze")} for q in questions]


def fmt(x: Any) -> str:
    """A number with ~3 significant digits (scientific for tiny ones); text as is; blank for None."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    x = float(x)
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.1e}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def markdown(rows: list[Row], meta: dict, checks: list[str]) -> str:
    """The report: machine and run details, checks, then one table row per measure."""
    lines = ["# Benchmarks: ours vs the original method", ""]
    if meta.get("quick"):
        lines += ["**--quick run: tiny sizes to check the code; the figures are not representative.**", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "quick"] + [""]
    if checks:
        lines += ["## Checks", ""] + [f"- {c}" for c in checks] + [""]
    lines += ["## Results", "", "| Benchmark | Measure | Value | Against | Ratio | Unit | Note |",
              "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else ""
        cells = [r.section, r.measure, fmt(r.value), fmt(r.reference), ratio, r.unit, r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    """bench.csv: the rows with their ratio."""
    names = [f.name for f in fields(Row)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*names, "ratio"])
        for r in rows:
            d = asdict(r)
            w.writerow([*(d[n] if d[n] is not None else "" for n in names), r.ratio if r.ratio is not None else ""])


def machine_meta(args, sizes: Sizes) -> dict:
    """Date, machine and versions for the report header."""
    import transformers

    return {"quick": args.quick, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "CPU": f"{cpu_model()} ({os.cpu_count()} logical CPUs, {platform.machine()})",
            "torch threads": torch.get_num_threads(),
            "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
                        f"transformers {transformers.__version__}",
            "model": f"{args.model} (fp32)",
            "our scorer": f"score_mcqs max_batch {args.max_batch}, max_tokens 4096",
            "sizes": f"{sizes.per_subject} questions × {len(args.subjects)} subjects, {sizes.k_shot}-shot; "
                     f"{sizes.explain_items} explanation items; {sizes.train_examples} training examples; "
                     f"evaluation {sizes.eval_questions} questions × {sizes.eval_cells} cells; "
                     f"harness {sizes.harness_questions} questions"}

