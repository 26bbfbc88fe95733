"""This machine's limit: torch fp32 matmul FLOP/s, and probing and training throughput as a share of it."""

from __future__ import annotations

import time

import torch

from benchmarks.common import (
    Row,
    Sizes,
)


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
    rows += bf16_rows(sizes.matmul_seconds, rates["1024×1024×1024"])
    return rows, max(rates.values())


def bf16_rows(min_seconds: float, fp32_square: float) -> list[Row]:
    """The CPU's bf16 units and torch's bf16 matmul rate against fp32's (without bf16 units bf16 is emulated and
    far slower: a 512³ product then, to keep the measurement short)."""
    from ift_utils.training import cpu_bf16_kind

    kind = cpu_bf16_kind()
    n = 1024 if kind != "none" else 512
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    with torch.inference_mode():
        a @ b
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min(min_seconds, 1.0):
                break
    rate = 2.0 * n**3 * reps / elapsed
    return [Row("limit", f"torch matmul bf16 {n}³ vs fp32 1024³", rate / 1e9, fp32_square / 1e9, "GFLOP/s",
                f"CPU bf16 units: {kind} (AVX-512 BF16, AMX or none; /proc/cpuinfo)")]


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

