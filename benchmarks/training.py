"""Training speed, today's method against the new one, side by side: ``python -m benchmarks.training [--quick]``.

Every variant trains the same examples (the default study's kind: chat-formatted fact questions with cloze answers
plus generated general tasks, half and half) in the same batches from the same initial weights, with its own
optimizer, and the variants take turns step by step, so that load from other processes on a shared machine falls
on all of them alike. The step is `train_adapter`'s: collate, the loss module (response-only logits), backward,
gradient clipping, AdamW and the LR schedule.

Variants (noise reference: today's method from another LoRA init seed, same batches): today (`shared_prefix=False`, fp32), ours in fp32 (the batch's common prefix run once), ours under CPU
bf16 autocast (LoRA: frozen weights in bf16, adapter weights and sums in fp32; where the CPU has bf16 units, or
with --bf16 on), and full fine-tuning both
ways. LoRA dropout is the study's 0.05: today with torch's masks (`nn.Dropout`, as peft builds it), ours with
`FastDropout` (numpy-drawn masks). Other masks make other loss curves, as another init seed does: the noise
reference shows how far. Whether sharing the prefix changes the arithmetic is measured on the same weights with
dropout off (rows "max |Δloss|/|Δgrad| ... same weights").

Figures: examples/s and non-padding tokens/s over the steps after the first (warm-up), the ratio to today,
examples per CPU-second of the process (with --threads 1 it barely moves when other processes load the machine),
max |Δloss| per step against today, max |Δgrad| on the same weights (today's model, first steps, both loss paths),
and the share of the measured matmul peak (fp32, or bf16 for bf16 variants) counted two ways: 6·N·tokens over the
non-padding tokens, and over the tokens each method actually computes (padding included; the shared prefix once
per batch). N = the base model's parameters (the tied embedding counts once, as the LM head; LoRA's left out).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass, replace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTION = "training"
CURRENT_LABEL = "LoRA ours fp32 (shared prefix + FastDropout)"  # the kit's method at 056326c: eager fp32
NEW_LABEL = "LoRA new fp32 (compiled layers + hashed FastDropout)"


def training_examples(tok: Any, n: int, seed: int = 0) -> list[dict]:
    """`n` chat examples as the default study trains them: fact questions (cloze answers) and general tasks."""
    from benchmarks.common import chat_examples, fact_questions
    from ift_utils.general_tasks import general_example, generate_general_tasks

    facts = chat_examples(tok, fact_questions(n - n // 2))
    general = [general_example(t, "model", tok) for t in generate_general_tasks(n // 2, seed=seed)]
    rng = np.random.default_rng(seed)
    both = facts + general
    return [both[i] for i in rng.permutation(len(both))]


def matmul_peak(threads: int, dtype: torch.dtype, n: int = 1536, reps: int = 4) -> float:
    """Best GFLOP/s of an n×n matmul at this thread count (the machine's practical peak for that dtype)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


@dataclass
class _Variant:
    """One way of training: its config, model, optimizer and what it measured."""

    label: str
    cfg: Any
    model: Any = None
    loss_module: Any = None
    optimizer: Any = None
    scheduler: Any = None
    share: bool = False
    seconds: list = None  # type: ignore[assignment]
    cpu_seconds: list = None  # type: ignore[assignment]
    losses: list = None  # type: ignore[assignment]
    computed: list = None  # type: ignore[assignment]


def _setup(v: _Variant, path: str, total_steps: int) -> None:
    """Build the variant's model from the common seed, its optimizer, schedule and loss module."""
    from accelerate.utils import set_seed

    from ift_utils.training import (
        _build_model,
        _LossModule,
        _trainable,
        cpu_autocast_wanted,
        make_scheduler,
        prefix_sharing_ok,
    )

    set_seed(v.cfg.seed)
    v.model = _build_model(path, v.cfg, torch.device("cpu"))
    v.optimizer = torch.optim.AdamW(list(_trainable(v.model).values()), lr=v.cfg.learning_rate,
                                    weight_decay=v.cfg.weight_decay)
    v.scheduler = make_scheduler(v.optimizer, v.cfg, total_steps)
    v.share = prefix_sharing_ok(v.model, v.cfg, 1)[0]
    autocast = cpu_autocast_wanted(v.cfg, torch.device("cpu"))
    v.loss_module = _LossModule(v.model, v.cfg.response_only_logits, autocast, v.share)
    v.seconds, v.cpu_seconds, v.losses, v.computed = [], [], [], []


def _step(v: _Variant, batch: dict[str, torch.Tensor]) -> None:
    """One optimizer step as train_adapter takes it (one micro-batch); time, loss and computed tokens."""
    from ift_utils.training import _trainable, shared_prefix_length

    t0, c0 = time.perf_counter(), time.process_time()
    summed, count = v.loss_module(**batch)
    (summed / count).backward()
    torch.nn.utils.clip_grad_norm_(list(_trainable(v.model).values()), v.cfg.max_grad_norm)
    v.optimizer.step()
    v.scheduler.step()
    v.optimizer.zero_grad(set_to_none=True)
    v.seconds.append(time.perf_counter() - t0)
    v.cpu_seconds.append(time.process_time() - c0)
    v.losses.append(float(summed.detach() / count))
    B, W = batch["input_ids"].shape
    prefix = shared_prefix_length(**batch) if v.share else 0
    prefix = prefix if prefix >= 4 else 0
    v.computed.append(prefix + B * (W - prefix))


def _grad_gap(v: _Variant, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """max |Δloss| and max |Δgrad| between the plain and the shared-prefix loss on the same weights (fp32,
    dropout off: eval mode, so both passes compute the same function)."""
    from ift_utils.training import _trainable, response_loss

    v.model.eval()
    out = []
    for shared in (False, True):
        v.model.zero_grad(set_to_none=True)
        summed, count = response_loss(v.model, **batch, shared_prefix=shared)
        (summed / count).backward()
        out.append((float(summed.detach() / count),
                    {n: p.grad.detach().clone() for n, p in _trainable(v.model).items() if p.grad is not None}))
    v.model.zero_grad(set_to_none=True)
    v.model.train()
    (l0, g0), (l1, g1) = out
    return abs(l0 - l1), max(float((g0[n] - g1[n]).abs().max()) for n in g0)


STAGE03_STEPS = 1200  # steps of one default stage 03: 36.4 min at ≈ 1.8 s a step (docs/results.md)


def bench_training_rows(model: str = "smollm2-135m-instruct", n_examples: int = 64, batch_size: int = 8,
                        threads: int = 2, bf16: str | bool = "auto", full: bool = True, epochs: float = 1,
                        grad_checks: int = 3, noise_reference: bool = True, compiled: bool = True,
                        stage_steps: int = STAGE03_STEPS, current_vs_new: bool = False) -> list[dict]:
    """Rows (section, measure, ours, baseline, ratio, unit, note) comparing today's training step with the new
    one on the same cells, for the benchmark driver to print."""
    from transformers import AutoTokenizer

    from ift_utils.models import MODEL_NAMES, resolve_model
    from ift_utils.training import TrainConfig, collate, cpu_has_bf16, encode_example, graph_breaks, plan_steps

    torch.set_num_threads(threads)
    path = resolve_model(model) if model in MODEL_NAMES else model
    tok = AutoTokenizer.from_pretrained(path)
    examples = training_examples(tok, n_examples)
    base = TrainConfig(lora_r=16, lora_alpha=32, lora_dropout=0.05, epochs=epochs, learning_rate=2e-4,
                       max_length=256, batch_size=batch_size, seed=0, shared_prefix=False, fast_dropout=False)
    encoded = [e for ex in examples if (e := encode_example(tok, ex["prompt"], ex["response"], base.max_length))]
    lengths = [len(e["input_ids"]) for e in encoded]
    steps, _ = plan_steps(lengths, base)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [collate([encoded[i] for i in step.micro[0]], pad) for step in steps]

    use_bf16 = cpu_has_bf16() if bf16 == "auto" else bool(bf16)
    ours = replace(base, shared_prefix=True, fast_dropout=True)
    variants = [_Variant("LoRA today (fp32, every row whole, torch dropout masks)", base),
                _Variant("LoRA shared prefix only (torch dropout masks)", replace(base, shared_prefix=True)),
                _Variant(CURRENT_LABEL, ours)]
    if current_vs_new:  # only the kit's current method against the new one (and their bf16 forms)
        variants = [v for v in variants if v.label == CURRENT_LABEL]
    if compiled:  # the new method: decoder layers compiled by inductor, FastDropout's hashed (traceable) masks
        variants.append(_Variant(NEW_LABEL, replace(ours, compile="on")))
    if use_bf16:
        variants.append(_Variant("LoRA ours bf16 (shared prefix + FastDropout + CPU bf16 autocast)",
                                 replace(ours, cpu_bf16=True)))
        if compiled:
            variants.append(_Variant("LoRA new bf16 (compiled layers + CPU bf16 autocast)",
                                     replace(ours, cpu_bf16=True, compile="on")))
    if noise_reference:  # today's method from another LoRA init and masks: how far loss curves move for no reason
        variants.append(_Variant("LoRA today, other init seed (noise reference)", replace(base, seed=1)))
    if full:
        full_cfg = replace(base, method="full", learning_rate=2e-5)
        variants += [_Variant("full FT today (fp32)", full_cfg),
                     _Variant("full FT ours fp32 (shared prefix)", replace(full_cfg, shared_prefix=True))]
        if use_bf16:
            variants.append(_Variant("full FT ours bf16", replace(full_cfg, shared_prefix=True, cpu_bf16=True)))
    for v in variants:
        _setup(v, path, len(steps))
    n_params = sum(p.numel() for name, p in variants[0].model.named_parameters() if "lora_" not in name)

    gaps = []
    for k, batch in enumerate(batches):
        if k < grad_checks:
            gaps.append(_grad_gap(variants[0], batch))
        for v in variants:
            _step(v, batch)

    peak32 = matmul_peak(threads, torch.float32)
    peak16 = matmul_peak(threads, torch.bfloat16) if use_bf16 else float("nan")
    timed = slice(1, None) if len(batches) > 1 else slice(None)
    n_timed = sum(len(s.micro[0]) for s in steps[timed])
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[timed])
    rows: list[dict] = []

    def row(measure: str, ours: float, baseline: float, unit: str, note: str = "") -> None:
        ratio = ours / baseline if baseline and not np.isnan(baseline) else float("nan")
        rows.append({"section": SECTION, "measure": measure, "ours": ours, "baseline": baseline, "ratio": ratio,
                     "unit": unit, "note": note})

    def figures(v: _Variant) -> dict[str, float]:
        sec = sum(v.seconds[timed])
        peak = peak16 if v.cfg.cpu_bf16 is True else peak32
        return {"ex_s": n_timed / sec, "tok_s": tokens / sec, "step_s": sec / len(v.seconds[timed]),
                "ex_cpu_s": n_timed / sum(v.cpu_seconds[timed]),
                "share_all": 6 * n_params * tokens / sec / (peak * 1e9),
                "share_computed": 6 * n_params * sum(v.computed[timed]) / sec / (peak * 1e9)}

    mean_len = float(np.mean(lengths))
    setup = (f"{len(encoded)} examples (mean {mean_len:.1f} tokens), batch {batch_size}, {len(steps)} steps "
             f"(first untimed), {threads} threads, LoRA r=16 all-linear, dropout 0.05; matmul peak fp32 "
             f"{peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s; N={n_params / 1e6:.1f}M")
    for group in ("LoRA", "full FT"):
        mine = [v for v in variants if v.label.startswith(group)]
        if not mine:
            continue
        today, f_today = mine[0], figures(mine[0])
        for v in mine:
            f = figures(v)
            dloss = max(abs(a - b) for a, b in zip(v.losses, today.losses, strict=True))
            row(f"examples/s: {v.label}", f["ex_s"], f_today["ex_s"], "examples/s",
                f"{f['step_s']:.2f} s/step; max |Δloss| per step vs today {dloss:.2e}; loss "
                f"{v.losses[0]:.3f}→{v.losses[-1]:.3f}")
            row(f"examples per CPU-second: {v.label}", f["ex_cpu_s"], f_today["ex_cpu_s"], "examples/cpu-s",
                "process CPU time: steadier than wall time on a shared machine (with 1 thread)")
            row(f"tokens/s: {v.label}", f["tok_s"], f_today["tok_s"], "tokens/s", "non-padding tokens")
            row(f"peak share (6N·all tokens): {v.label}", 100 * f["share_all"], 100 * f_today["share_all"], "%",
                "of the bf16 peak" if v.cfg.cpu_bf16 is True else "of the fp32 peak")
            row(f"peak share (6N·computed tokens): {v.label}", 100 * f["share_computed"],
                100 * f_today["share_computed"], "%", "padding counted, shared prefix once per batch")
    current = next(v for v in variants if v.label == CURRENT_LABEL)
    for v in (v for v in variants if v.cfg.compile == "on"):
        f, f_cur = figures(v), figures(current)
        compile_s = max(0.0, v.seconds[0] - f["step_s"])  # first step beyond a steady one: the compile
        with_compile = stage_steps / (stage_steps * f["step_s"] + compile_s)
        dloss = max(abs(a - b) for a, b in zip(v.losses, current.losses, strict=True))
        row(f"steady s/step, current (056326c: shared prefix, FastDropout, fp32 eager) vs {v.label}",
            f_cur["step_s"], f["step_s"], "s/step", "ratio = speed-up of the new method, compile not counted")
        row(f"examples/s, {v.label} vs current, compile not counted", f["ex_s"], f_cur["ex_s"], "examples/s",
            f"max |Δloss| per step vs current {dloss:.2e} (other dropout masks: compare the noise reference)")
        row(f"examples/s, {v.label} vs current, compile counted over one default stage 03",
            batch_size * with_compile, f_cur["ex_s"], "examples/s",
            f"{stage_steps} steps + one compile of {compile_s:.1f} s (first step {v.seconds[0]:.1f} s; current's "
            f"first step {current.seconds[0]:.1f} s); graph breaks {graph_breaks()}")
    if gaps:
        row("max |Δloss|, shared prefix vs whole rows (same weights)", max(g[0] for g in gaps), float("nan"), "nats",
            f"fp32, first {len(gaps)} batches")
        row("max |Δgrad|, shared prefix vs whole rows (same weights)", max(g[1] for g in gaps), float("nan"), "",
            f"fp32, first {len(gaps)} batches, over all LoRA parameters")
    rows[0]["note"] = f"{setup}; {rows[0]['note']}"
    return rows


def print_rows(rows: list[dict]) -> None:
    """A plain table of the rows."""
    for r in rows:
        ratio = "" if np.isnan(r["ratio"]) else f"{r['ratio']:.2f}x"
        base = "" if np.isnan(r["baseline"]) else f"{r['baseline']:.4g}"
        print(f"{r['measure']:<72} {r['ours']:>10.4g} {base:>10} {ratio:>7} {r['unit']:<10} {r['note']}")


def main(argv: list[str] | None = None) -> int:
    """Command line: run the comparison and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few examples, to check that it runs (not for figures)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=72)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--no-full", action="store_true", help="leave out full fine-tuning (also left out by --quick)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--current-vs-new", action="store_true",
                    help="only the current method (056326c) and the new compiled one, side by side")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled (new) variants")
    args = ap.parse_args(argv)
    n = 16 if args.quick else args.examples
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    with contextlib.suppress(Exception):
        import logging

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    full = not (args.no_full or args.quick or args.current_vs_new)
    rows = bench_training_rows(args.model, n, args.batch_size, args.threads, bf16, full, args.epochs,
                               grad_checks=1 if args.quick else 3,
                               noise_reference=not (args.quick or args.current_vs_new),
                               compiled=not args.no_compile, current_vs_new=args.current_vs_new)
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
