"""Probing: the original one-question loop against our shared-prefix batched scorer (letter mode, 5-shot paper
prompts with the MMLU quirk, the same questions), and our cloze mode beside our letter mode."""

from __future__ import annotations

import numpy as np

from benchmarks.common import (
    ProbeSet,
    Row,
    paper_spec,
    timed,
    token_counts,
)

MAX_DELTA_P = 1e-4


TARGET_SPEEDUP = 5.0


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

