"""Benchmarks, ours against the original method, side by side in one run: ``make bench``.

    python -m benchmarks.run_all [--quick] [--out outputs/bench] [--threads N] [--only probing,training,...]

Sections (one file each under benchmarks/; all use the default model in fp32 on the CPU unless told otherwise):

1. probing  (benchmarks/probing.py) — letter mode, 5-shot paper prompts with the MMLU quirk, on the same questions (40 from each of
   5 subjects, the subject's first 5 as demos, kept out of the scored set): the original loop
   (`score_reference`: one full prompt per forward pass, batch 1) against ours (`score_mcqs`: shared-prefix
   key/value cache, length-bucketed batches, last-position logits). Questions/s, speed-up, max |Δp|.
2. cloze    (benchmarks/probing.py) — our cloze scoring of the same questions: seconds per question against our letter mode.
3. explain  (benchmarks/explanations.py) — explanation generation (`generate_explanations`, sampling as in params/default.yaml):
   new tokens/s with batches of 8 against one item at a time, on the same items.
4. training (benchmarks/training.py) — today's training step (every row whole) against ours (the batch's shared
   prefix once, keys/values broadcast, gradients through them), fp32 and, where the CPU has bf16 units, bf16
   autocast, and full fine-tuning, interleaved step by step on the same batches: examples/s, tokens/s, max |Δloss|,
   max |Δgrad|, the share of the matmul peak counted two ways.
4b. memory  (benchmarks/training_memory.py) — LoRA-fp32 and QLoRA-NF4, each with response-only and full logits, one epoch on short chat
   examples, each configuration in a fresh process (`benchmarks.train_worker`): tokens/s and peak RSS.
5. eval     (benchmarks/evaluation.py) — 0-shot evaluation of fine-tuned cells as stage 04 runs it (chat template "model", cloze and letter,
   facts-suite test questions, LoRA r=16 adapters on all linear layers swapped on one base model): ours
   (`score_mcqs`, two levels: each question's context once, then only the options' later tokens on its cache)
   against the previous method (`two_level=False`: one row per option on the shared-prefix cache), interleaved
   cell by cell on the same cells and questions. Scored options/s, speed-up, max |Δp|. The adapters are random
   (lora_B ~ N(0, 0.02)): trained weights cost the same.
5b. harness (benchmarks/harness.py) — ours against lm-evaluation-harness, the tool a researcher would otherwise use:
   cloze log-likelihood scoring of facts-suite questions, k-shot as stage 01 probes them, by `score_mcqs` and by
   lm-eval's Hugging Face backend (`HFLM.loglikelihood`, same model object, same context and option strings).
   Questions/s, options/s, speed-up, max |Δ| of each option's mean log-prob (lm-eval's sum ÷ its continuation
   tokens), same-choice share, and whether both tokenize the context/option seam alike. Needs lm_eval, which
   `make bench` installs (requirements-bench.txt); without it this section fails with that message (exit status 1)
   and the others still run.
6. flops    (benchmarks/machine.py) — fp32 matmul FLOP/s of torch on this machine (1024³ and the model's MLP shapes), and the
   achieved FLOP/s of probing (2 × non-embedding parameters × tokens processed / s) and of a training
   step (6 × non-embedding parameters × tokens / s) as a fraction of the best matmul rate.
7. e2e      (benchmarks/end_to_end.py) — seconds per stage of outputs/smoke and outputs/default, read from their manifest.json.

Timing: `time.perf_counter`, one untimed warm-up before each timed measurement, `torch.inference_mode`
for everything that does not train. Writes bench.csv and bench.md (date, CPU, threads, versions) under
--out and prints the markdown table. Exit status 1 when ours and the original loop disagree by more than
1e-4 in any option probability. `--quick` shrinks every size to check that the code runs: its figures say
nothing about speed. Exit status 1 also when the evaluation methods disagree by more than 1e-5, when ours and
lm-eval differ by more than 1e-4 in an option's mean log-prob where both tokenize it alike, or when lm_eval is
missing (harness section).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    SUBJECTS,
    Row,
    Sizes,
    fact_questions,
    machine_meta,
    markdown,
    non_embedding_params,
    paper_spec,
    probe_sets,
    timed,
    write_csv,
)
from benchmarks.end_to_end import e2e_rows
from benchmarks.evaluation import MAX_EVAL_DELTA_P, TARGET_EVAL_SPEEDUP, bench_eval, eval_questions
from benchmarks.explanations import bench_explanations
from benchmarks.harness import MAX_HARNESS_DELTA, HarnessUnavailable, bench_harness, harness_set
from benchmarks.machine import bench_matmul, flops_rows
from benchmarks.probing import MAX_DELTA_P, TARGET_SPEEDUP, bench_cloze, bench_probing
from benchmarks.training import bench_training_rows
from benchmarks.training_memory import bench_training
from ift_utils.config import load_params
from ift_utils.paths import PROJECT_ROOT

SECTIONS = ("probing", "cloze", "explain", "training", "memory", "eval", "harness", "flops", "e2e")


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


def _number(x: Any) -> float | None:
    """A finite number, or None (a missing reference)."""
    return float(x) if isinstance(x, (int, float)) and x == x else None


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
        got = section("training", lambda: bench_training_rows(
            model=args.model, n_examples=8 if args.quick else 72, batch_size=4 if args.quick else 8,
            threads=args.threads or torch.get_num_threads(), full=not args.quick, grad_checks=1 if args.quick else 3,
            noise_reference=not args.quick, compiled=not args.quick))  # quick: no compile (its own test compiles)
        rows += [Row(r["section"], r["measure"], r["ours"], _number(r.get("baseline")), r.get("unit", ""),
                     r.get("note", "")) for r in got]
    if "memory" in args.only:
        r, training = section("memory", lambda: bench_training(args.model, tok, fact_questions(sizes.train_examples),
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
    if "harness" in args.only:
        try:
            spec, questions = harness_set(sizes.harness_questions)
            r, hv = section("harness", lambda: bench_harness(model, tok, questions, spec, args.max_batch))
            rows += r
            ok = hv["delta_alike"] <= MAX_HARNESS_DELTA
            failed |= not ok
            checks.append(f"{'PASS' if ok else 'FAIL'}: ours vs lm-eval max |Δ mean log-prob| = {hv['delta']:.1e} "
                          f"(limit {MAX_HARNESS_DELTA:g} on the {hv['alike']}/{hv['options']} options both tokenize "
                          f"alike: {hv['delta_alike']:.1e}), same choice on {hv['same']:.0%} of questions")
        except HarnessUnavailable as e:
            print(f"[bench] harness: FAILED: {e}", file=sys.stderr, flush=True)
            rows.append(Row("harness (lm-eval cloze)", "not run", "not run", note=str(e)))
            checks.append(f"FAIL: harness section not run: {e}")
            failed = True
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
