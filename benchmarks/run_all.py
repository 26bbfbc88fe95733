"""Benchmarks, ours against the original method, side by side in one run: ``make bench``.

    python -m benchmarks.run_all [--quick] [--out outputs/bench] [--threads N] [--only probing,training,...]

Sections (each a function below; all use the default model in fp32 on the CPU unless told otherwise):

1. probing  — letter mode, 5-shot paper prompts with the MMLU quirk, on the same questions (40 from each of
   5 subjects, the subject's first 5 as demos, kept out of the scored set): the original loop
   (`score_reference`: one full prompt per forward pass, batch 1) against ours (`score_mcqs`: shared-prefix
   key/value cache, length-bucketed batches, last-position logits). Questions/s, speed-up, max |Δp|.
2. cloze    — our cloze scoring of the same questions: seconds per question against our letter mode.
3. explain  — explanation generation (`generate_explanations`, sampling as in params/default.yaml):
   new tokens/s with batches of 8 against one item at a time, on the same items.
4. training — LoRA-fp32 and QLoRA-NF4, each with response-only and full logits, one epoch on short chat
   examples, each configuration in a fresh process (`benchmarks.train_worker`): tokens/s and peak RSS.
5. eval     — 0-shot evaluation of fine-tuned cells as stage 04 runs it (chat template "model", cloze and letter,
   facts-suite test questions, LoRA r=16 adapters on all linear layers swapped on one base model): ours
   (`score_mcqs`, two levels: each question's context once, then only the options' later tokens on its cache)
   against the previous method (`two_level=False`: one row per option on the shared-prefix cache), interleaved
   cell by cell on the same cells and questions. Scored options/s, speed-up, max |Δp|. The adapters are random
   (lora_B ~ N(0, 0.02)): trained weights cost the same.
6. flops    — fp32 matmul FLOP/s of torch on this machine (1024³ and the model's MLP shapes), and the
   achieved FLOP/s of probing (2 × non-embedding parameters × tokens processed / s) and of a training
   step (6 × non-embedding parameters × tokens / s) as a fraction of the best matmul rate.
7. e2e      — seconds per stage of outputs/smoke and outputs/default, read from their manifest.json.

Timing: `time.perf_counter`, one untimed warm-up before each timed measurement, `torch.inference_mode`
for everything that does not train. Writes bench.csv and bench.md (date, CPU, threads, versions) under
--out and prints the markdown table. Exit status 1 when ours and the original loop disagree by more than
1e-4 in any option probability. `--quick` shrinks every size to check that the code runs: its figures say
nothing about speed. Exit status 1 also when the evaluation methods disagree by more than 1e-5.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ift_utils.config import PROJECT_ROOT, load_params  # noqa: E402
from ift_utils.records import MCQ  # noqa: E402

SECTIONS = ("probing", "cloze", "explain", "training", "eval", "flops", "e2e")
# One MMLU subject per domain of the original study (medicine, history, engineering, jurisprudence) and one
# STEM subject; their 5-shot letter prompts are ~450-680 tokens.
SUBJECTS = ("college medicine", "prehistory", "electrical engineering", "international law",
            "high school mathematics")
MAX_DELTA_P = 1e-4
TARGET_SPEEDUP = 5.0
MAX_EVAL_DELTA_P = 1e-5  # evaluation, ours vs the previous method (issue 15)
TARGET_EVAL_SPEEDUP = 2.0


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
    matmul_seconds: float = 1.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(per_subject=2, explain_items=4, explain_batch=2, explain_new_tokens=8, train_examples=4,
                   train_batch=2, eval_questions=4, eval_cells=1, matmul_seconds=0.1)


@dataclass
class ProbeSet:
    """Questions of one subject with their k-shot demos (the subject's first k questions)."""

    subject: str
    demos: tuple[MCQ, ...]
    questions: list[MCQ]


# ---------------------------------------------------------------------------------------------- helpers


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


# ---------------------------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------------------------- benchmarks


def bench_probing(model, tok, sets: list[ProbeSet], max_batch: int) -> tuple[list[Row], dict]:
    """Letter mode: the original one-question loop against ours on the same questions."""
    from ift_utils.probing import score_mcqs, score_reference

    first = sets[0]
    warm = ProbeSet(first.subject, first.demos, first.questions[:1])
    score_reference(model, tok, warm.questions, paper_spec(warm))
    score_mcqs(model, tok, warm.questions, paper_spec(warm), max_batch=max_batch, show_progress=False)

    ref, t_ref = timed(lambda: [score_reference(model, tok, ps.questions, paper_spec(ps)) for ps in sets])
    ours, t_ours = timed(lambda: [score_mcqs(model, tok, ps.questions, paper_spec(ps), max_batch=max_batch,
                                             show_progress=False) for ps in sets])
    p_ref = np.array([p for f in ref for p in f.probs.tolist()])
    p_ours = np.array([p for f in ours for p in f.probs.tolist()])
    ids_ref = [i for f in ref for i in f.id]
    ids_ours = [i for f in ours for i in f.id]
    if ids_ref != ids_ours:
        raise RuntimeError("the two methods returned questions in different orders")
    delta = float(np.abs(p_ref - p_ours).max())
    n = len(ids_ref)
    counts = [token_counts(tok, ps.questions, paper_spec(ps)) for ps in sets]
    full_tokens = sum(c[0] for c in counts)
    our_tokens = sum(c[1] for c in counts)
    acc_ref = float(np.mean([c for f in ref for c in f.correct]))
    acc_ours = float(np.mean([c for f in ours for c in f.correct]))
    same = sum(int(a == b) for f, g in zip(ref, ours, strict=True) for a, b in zip(f.pred, g.pred, strict=True))
    rows = [
        Row("probing (letter)", "questions/s: ours vs original loop", n / t_ours, n / t_ref, "q/s",
            f"ratio = speed-up (target ≥ {TARGET_SPEEDUP:g}×); {n} questions, {len(sets)} subjects, "
            f"{len(sets[0].demos)}-shot"),
        Row("probing (letter)", "seconds per question: ours vs original loop", t_ours / n, t_ref / n, "s"),
        Row("probing (letter)", "max |Δp| ours vs original", delta, MAX_DELTA_P, "",
            "ratio ≤ 1 required (limit 1e-4, fp32)"),
        Row("probing (letter)", "mean prompt tokens (original encodes all)", full_tokens / n, None, "tokens"),
        Row("probing (letter)", "tokens processed per question: ours vs original", our_tokens / n, full_tokens / n,
            "tokens", "shared 5-shot prefix once per subject, then each question's own tokens"),
        Row("probing (letter)", "prompt tokens/s of the original loop", full_tokens / t_ref, None, "tokens/s"),
        Row("probing (letter)", "accuracy: ours vs original", acc_ours, acc_ref, "",
            f"same predicted letter on {same}/{n}"),
    ]
    info = {"n": n, "t_ours": t_ours, "t_ref": t_ref, "delta": delta, "full_tokens": full_tokens,
            "our_tokens": our_tokens, "speedup": t_ref / t_ours}
    return rows, info


def bench_cloze(model, tok, sets: list[ProbeSet], max_batch: int, letter_seconds_per_q: float) -> list[Row]:
    """Cloze mode (ours) on the same questions: cost per question against our letter mode."""
    from ift_utils.probing import score_mcqs

    first = sets[0]
    score_mcqs(model, tok, first.questions[:1], paper_spec(first, "cloze"), max_batch=max_batch,
               show_progress=False)
    frames, t = timed(lambda: [score_mcqs(model, tok, ps.questions, paper_spec(ps, "cloze"), max_batch=max_batch,
                                          show_progress=False) for ps in sets])
    n = sum(len(ps.questions) for ps in sets)
    counts = [token_counts(tok, ps.questions, paper_spec(ps, "cloze")) for ps in sets]
    acc = float(np.mean([c for f in frames for c in f.correct]))
    return [
        Row("probing (cloze)", "seconds per question: cloze vs letter (both ours)", t / n, letter_seconds_per_q, "s",
            "ratio = cloze cost in letter-mode units; one row per option"),
        Row("probing (cloze)", "tokens processed per question: cloze (ours)", sum(c[1] for c in counts) / n, None,
            "tokens", f"{sum(c[2] for c in counts) / n:.1f} options per question; contexts once (two levels)"),
        Row("probing (cloze)", "accuracy (cloze)", acc, None, ""),
    ]


def bench_explanations(model, tok, questions: list[MCQ], sizes: Sizes) -> list[Row]:
    """Explanation generation: batched (as configured) against one item at a time, same items and seeds."""
    from ift_utils.explanations import ExplainConfig, generate_explanations

    P = load_params(PROJECT_ROOT / "params" / "default.yaml")
    new_tokens = sizes.explain_new_tokens or P.explanation_max_new_tokens
    items = [(q, q.answer) for q in questions]

    def run(batch: int, its: list[tuple[MCQ, int]], limit: int) -> dict:
        cfg = ExplainConfig(style=P.explanation_style, temperature=P.explanation_temperature,
                            top_p=P.explanation_top_p, max_new_tokens=limit, batch_size=batch, seed=P.data_seed)
        with tempfile.TemporaryDirectory() as tmp:  # an empty cache: every item is generated
            _, stats = generate_explanations(model, tok, its, cfg, Path(tmp) / "cache.jsonl", progress=False)
        return stats

    run(1, items[:1], 4)  # warm-up
    single = run(1, items, new_tokens)
    batched = run(sizes.explain_batch, items, new_tokens)
    note = (f"{len(items)} items, style {P.explanation_style}, T={P.explanation_temperature}, "
            f"top-p {P.explanation_top_p}, ≤{new_tokens} new tokens")
    return [
        Row("explanations", f"new tokens/s: batch {sizes.explain_batch} vs batch 1",
            batched["new_tokens"] / batched["seconds"], single["new_tokens"] / single["seconds"], "tokens/s", note),
        Row("explanations", f"seconds per item: batch {sizes.explain_batch} vs batch 1",
            batched["seconds"] / len(items), single["seconds"] / len(items), "s",
            f"new tokens {batched['new_tokens']} vs {single['new_tokens']}; fallbacks {batched['fallback']} vs "
            f"{single['fallback']}"),
    ]


TRAIN_CONFIGS = (  # (label, TrainConfig fields)
    ("LoRA fp32, response-only logits", {"method": "lora", "response_only_logits": True}),
    ("LoRA fp32, full logits", {"method": "lora", "response_only_logits": False}),
    ("QLoRA NF4, response-only logits", {"method": "qlora", "response_only_logits": True}),
    ("QLoRA NF4, full logits", {"method": "qlora", "response_only_logits": False}),
)


def train_in_subprocess(model_name: str, examples_file: Path, fields_: dict, out_dir: Path,
                        threads: int) -> dict:
    """Run one configuration with `benchmarks.train_worker` in a fresh Python; return its JSON figures."""
    spec = {"model": model_name, "examples_file": str(examples_file), "out_dir": str(out_dir), "threads": threads,
            "config": fields_}
    spec_file = out_dir.with_suffix(".json")
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_worker", str(spec_file)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"training worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def bench_training(model_name: str, tok, questions: list[MCQ], sizes: Sizes, threads: int) -> tuple[list[Row], dict]:
    """Tokens/s and peak RSS of each training configuration, every one in its own process."""
    examples = chat_examples(tok, questions)
    common = {"lora_r": 16, "lora_alpha": 32, "epochs": 1, "max_length": 160, "batch_size": sizes.train_batch,
              "seed": 0}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ex_file = Path(tmp) / "examples.json"
        ex_file.write_text(json.dumps(examples), encoding="utf-8")
        for i, (label, cfg) in enumerate(TRAIN_CONFIGS):
            results[label] = train_in_subprocess(model_name, ex_file, {**common, **cfg}, Path(tmp) / f"cell{i}",
                                                 threads)
    base_label = TRAIN_CONFIGS[0][0]
    base = results[base_label]
    rows = []
    for label, r in results.items():
        warm = "" if r["warm_up_excluded"] else "first step included; "
        rows.append(Row("training", f"tokens/s: {label} (vs {base_label})", r["tokens_per_s"],
                        base["tokens_per_s"], "tokens/s",
                        f"{warm}{r['timed_tokens']} tokens over {r['timed_steps']} steps; loss "
                        f"{r['first_loss']:.2f}→{r['last_loss']:.2f}"))
    for label, r in results.items():
        rows.append(Row("training", f"peak RSS: {label} (vs {base_label})", r["peak_rss_mb"],
                        base["peak_rss_mb"], "MiB", "fresh process; model load included"))
    note = (f"{len(examples)} chat examples (facts suite, model template), batch {sizes.train_batch}, "
            "LoRA r=16 all linear layers, 1 epoch, first step untimed")
    rows[0].note = f"{note}; {rows[0].note}"
    return rows, {"lora_tokens_per_s": base["tokens_per_s"]}


def eval_questions(n: int) -> list[MCQ]:
    """Held-out questions of the default study's facts suite (city → country), as stage 04 scores them."""
    from ift_utils.data_facts import build_facts_suite

    suite = build_facts_suite(seed=0, domains=["city_country"], n_train=1, n_dev=1, n_test=n, n_id=1)
    return suite["city_country"]["test"][:n]


def random_adapters(model_name: str, n: int, folder: Path, r: int = 16, alpha: int = 32) -> list[Path]:
    """`n` LoRA adapters (all linear layers, as the default study trains) with random non-zero B matrices."""
    from peft import LoraConfig, get_peft_model

    from ift_utils.models import load_model

    base, _ = load_model(model_name, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear"))
    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        dirs.append(folder / f"cell{i}")
        model.save_pretrained(dirs[-1])
    return dirs


def bench_eval(model_name: str, questions: list[MCQ], sizes: Sizes, max_batch: int) -> tuple[list[Row], dict]:
    """Stage 04's scoring of fine-tuned cells, ours (two levels) against the previous method, cell by cell."""
    from ift_utils.models import load_model
    from ift_utils.probing import PromptSpec, score_mcqs
    from ift_utils.study import AdapterSwapper

    base, tok = load_model(model_name, dtype=torch.float32)  # its own copy: peft injects layers into it
    rows: list[Row] = []
    info: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = random_adapters(model_name, sizes.eval_cells, Path(tmp))
        swapper = AdapterSwapper(base)
        specs = {mode: PromptSpec(mode=mode, template="model") for mode in ("cloze", "letter")}
        seconds = {(mode, tl): 0.0 for mode in specs for tl in (False, True)}
        probs: dict[tuple[str, bool], list[float]] = {key: [] for key in seconds}
        for i, d in enumerate(dirs):
            model = swapper.activate(d)  # each cell once: the swapper cannot re-activate the current adapter
            for mode, spec in specs.items():
                for two_level in (False, True):
                    if i == 0:  # warm-up
                        score_mcqs(model, tok, questions[:2], spec, max_batch=max_batch, show_progress=False,
                                   two_level=two_level)
                    t0 = time.perf_counter()
                    f = score_mcqs(model, tok, questions, spec, max_batch=max_batch, show_progress=False,
                                   two_level=two_level)
                    seconds[mode, two_level] += time.perf_counter() - t0
                    probs[mode, two_level] += [p for ps in f.probs for p in ps]
        n_opt = sum(len(q.choices) for q in questions) * len(dirs)
        for mode, spec in specs.items():
            new, old = seconds[mode, True], seconds[mode, False]
            delta = float(np.abs(np.array(probs[mode, True]) - np.array(probs[mode, False])).max())
            full, ours, _ = token_counts(tok, questions, spec, two_level=True)
            _, before, _ = token_counts(tok, questions, spec, two_level=False)
            label = f"evaluation ({mode}, fine-tuned 0-shot)"
            rows += [
                Row(label, "scored options/s: ours vs previous method", n_opt / new, n_opt / old, "options/s",
                    f"ratio = speed-up (target ≥ {TARGET_EVAL_SPEEDUP:g}× in cloze mode); {len(questions)} "
                    f"questions × {len(dirs)} cells, chat template 'model', max_batch {max_batch}"),
                Row(label, "seconds per cell: ours vs previous method", new / len(dirs), old / len(dirs), "s"),
                Row(label, "max |Δp| ours vs previous method", delta, MAX_EVAL_DELTA_P, "",
                    "ratio ≤ 1 required (limit 1e-5, fp32)"),
                Row(label, "tokens processed per question: ours vs previous method", ours / len(questions),
                    before / len(questions), "tokens",
                    f"full prompts: {full / len(questions):.0f} tokens per question "
                    f"({'one row per question' if mode == 'letter' else 'one row per option'})"),
            ]
            info[f"{mode}_speedup"] = old / new
            info[f"{mode}_delta"] = delta
    return rows, info


def matmul_flops(m: int, k: int, n: int, min_seconds: float) -> float:
    """fp32 FLOP/s of torch.matmul for (m×k)·(k×n), repeated for at least `min_seconds` after a warm-up."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    with torch.inference_mode():
        torch.matmul(a, b, out=out)
        reps, t0 = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            reps += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
    return 2.0 * m * k * n * reps / elapsed


def bench_matmul(model, sizes: Sizes) -> tuple[list[Row], float]:
    """Matmul FLOP/s for a square shape and the model's MLP shapes (512 tokens); return rows and the best."""
    hidden = getattr(model.config, "hidden_size", 576)
    inter = getattr(model.config, "intermediate_size", 1536)
    shapes = {"1024×1024×1024": (1024, 1024, 1024),
              f"512×{hidden}×{inter} (MLP up)": (512, hidden, inter),
              f"512×{inter}×{hidden} (MLP down)": (512, inter, hidden)}
    rates = {name: matmul_flops(*s, sizes.matmul_seconds) for name, s in shapes.items()}
    rows = [Row("limit", f"torch matmul fp32 {name}", r / 1e9, None, "GFLOP/s") for name, r in rates.items()]
    return rows, max(rates.values())


def flops_rows(n_params: int, peak: float, probing: dict | None, training: dict | None) -> list[Row]:
    """Achieved FLOP/s of probing and training as a fraction of the best matmul rate."""
    rows = []
    note = f"{n_params / 1e6:.1f} M non-embedding parameters; attention and the LM head not counted"
    if probing:
        rows.append(Row("limit", "probing ours: 2·N·tokens processed / s vs matmul peak",
                        2 * n_params * probing["our_tokens"] / probing["t_ours"] / 1e9, peak / 1e9, "GFLOP/s",
                        note))
        rows.append(Row("limit", "probing original: 2·N·prompt tokens / s vs matmul peak",
                        2 * n_params * probing["full_tokens"] / probing["t_ref"] / 1e9, peak / 1e9, "GFLOP/s"))
    if training:
        rows.append(Row("limit", "training LoRA fp32: 6·N·tokens / s vs matmul peak",
                        6 * n_params * training["lora_tokens_per_s"] / 1e9, peak / 1e9, "GFLOP/s",
                        "6·N is the full fine-tuning count; LoRA skips frozen weight gradients (≈4·N)"))
    return rows


def e2e_rows(root: Path) -> list[Row]:
    """Seconds per stage of the smoke and default runs, from their manifests ("not run" when absent)."""
    rows = []
    for run in ("smoke", "default"):
        path = root / run / "manifest.json"
        if not path.exists():
            rows.append(Row("end to end", f"{run}", "not run", None, "s"))
            continue
        try:
            stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {})
        except (OSError, json.JSONDecodeError):
            rows.append(Row("end to end", f"{run}", "unreadable manifest", None, "s"))
            continue
        total = 0.0
        for name, st in stages.items():
            secs = st.get("seconds")
            if isinstance(secs, (int, float)):
                total += secs
            rows.append(Row("end to end", f"{run} {name}", secs if secs is not None else st.get("status", "?"),
                            None, "s", st.get("status", "") if st.get("status") != "done" else ""))
        rows.append(Row("end to end", f"{run} total of finished stages", total, None, "s"))
    return rows


# ---------------------------------------------------------------------------------------------- report


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
                     f"evaluation {sizes.eval_questions} questions × {sizes.eval_cells} cells"}


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs (figures meaningless)")
    ap.add_argument("--out", default=str(PROJECT_ROOT / "outputs" / "bench"), help="folder for bench.csv and bench.md")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name or local folder")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument("--per-subject", type=int, default=None, help="scored questions per subject (default 40)")
    ap.add_argument("--max-batch", type=int, default=None,
                    help="our scorer's max_batch (default: params/default.yaml's batch_size_eval)")
    ap.add_argument("--subjects", default="|".join(SUBJECTS), help="MMLU subjects separated by |")
    ap.add_argument("--runs-root", default=str(PROJECT_ROOT / "outputs"), help="where the smoke/default runs live")
    args = ap.parse_args(argv)
    args.subjects = [s.strip() for s in args.subjects.split("|") if s.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = Sizes.quick() if args.quick else Sizes()
    args.max_batch = args.max_batch or load_params(PROJECT_ROOT / "params" / "default.yaml").batch_size_eval
    if args.per_subject:
        sizes = Sizes(**{**asdict(sizes), "per_subject": args.per_subject})
    t_start = time.perf_counter()
    from ift_utils.models import load_model

    model, tok = load_model(args.model, dtype=torch.float32)
    rows: list[Row] = []
    checks: list[str] = []
    seconds: dict[str, float] = {}
    probing = training = None
    peak = None
    failed = False

    def section(name: str, fn: Callable[[], Any]) -> Any:
        out, seconds[name] = timed(fn)
        print(f"[bench] {name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)
        return out

    if "flops" in args.only:
        r, peak = section("matmul", lambda: bench_matmul(model, sizes))
        rows += r
    if {"probing", "cloze"} & set(args.only):
        sets = probe_sets(args.subjects, sizes)
        max_batch = args.max_batch
        if "probing" in args.only:
            r, probing = section("probing", lambda: bench_probing(model, tok, sets, max_batch))
            rows += r
            ok = probing["delta"] <= MAX_DELTA_P
            failed |= not ok
            checks.append(f"{'PASS' if ok else 'FAIL'}: max |Δp| = {probing['delta']:.1e} (limit {MAX_DELTA_P:g})")
            fast = probing["speedup"] >= TARGET_SPEEDUP
            checks.append(f"{'PASS' if fast else 'BELOW TARGET'}: probing speed-up {probing['speedup']:.2f}× "
                          f"(target ≥ {TARGET_SPEEDUP:g}×){' — quick run, not meaningful' if args.quick else ''}")
        if "cloze" in args.only:
            if probing is None:  # our letter mode on the same questions, for the ratio
                from ift_utils.probing import score_mcqs

                _, t = timed(lambda: [score_mcqs(model, tok, ps.questions, paper_spec(ps), max_batch=max_batch,
                                                 show_progress=False) for ps in sets])
                per_q = t / sum(len(ps.questions) for ps in sets)
            else:
                per_q = probing["t_ours"] / probing["n"]
            rows += section("cloze", lambda: bench_cloze(model, tok, sets, max_batch, per_q))
    if "explain" in args.only:
        rows += section("explain", lambda: bench_explanations(model, tok, fact_questions(sizes.explain_items), sizes))
    if "training" in args.only:
        r, training = section("training", lambda: bench_training(args.model, tok, fact_questions(sizes.train_examples),
                                                                  sizes, args.threads))
        rows += r
    if "eval" in args.only:
        r, ev = section("eval", lambda: bench_eval(args.model, eval_questions(sizes.eval_questions), sizes,
                                                   args.max_batch))
        rows += r
        delta = max(ev["cloze_delta"], ev["letter_delta"])
        ok = delta <= MAX_EVAL_DELTA_P
        failed |= not ok
        checks.append(f"{'PASS' if ok else 'FAIL'}: evaluation max |Δp| = {delta:.1e} (limit {MAX_EVAL_DELTA_P:g})")
        fast = ev["cloze_speedup"] >= TARGET_EVAL_SPEEDUP
        checks.append(f"{'PASS' if fast else 'BELOW TARGET'}: evaluation (cloze) speed-up {ev['cloze_speedup']:.2f}× "
                      f"(target ≥ {TARGET_EVAL_SPEEDUP:g}×){' — quick run, not meaningful' if args.quick else ''}")
    if "flops" in args.only:
        rows += flops_rows(non_embedding_params(model), peak, probing, training)
    if "e2e" in args.only:
        rows += e2e_rows(Path(args.runs_root))

    meta = machine_meta(args, sizes)
    meta["bench seconds"] = (f"{time.perf_counter() - t_start:.0f} in all ("
                             + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ")")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, meta, checks)
    (out / "bench.md").write_text(text, encoding="utf-8")
    write_csv(rows, out / "bench.csv")
    print(text)
    print(f"written: {out / 'bench.md'}, {out / 'bench.csv'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
