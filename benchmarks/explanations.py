"""Explanation generation: batches of 8 against one item at a time, on the same items."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import (
    Row,
    Sizes,
)
from ift_utils.config import load_params
from ift_utils.paths import PROJECT_ROOT
from ift_utils.records import MCQ


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

