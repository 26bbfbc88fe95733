"""Per-question metrics: accuracy with a Wilson interval, and knowledge consistency between two models.

Knowledge consistency compares, question by question, the base model's option distribution `p`
(5-shot probe) with the fine-tuned model's `q` (0-shot, chat template), as in the original study:

* ``kl_divergence(p, q)`` = KL(p ‖ q) in nats (the original uses ``scipy.stats.entropy(p, q)``;
  we clip ``q`` at ``eps`` so a zero never gives an infinite value).
* ``rank_correlation(p, q)`` = Pearson correlation of the *dense* ranks of the two vectors (ties share
  a rank, ranks 1..k consecutive); a constant vector makes it undefined and it counts as 0.0, as in the
  original code. Both vectors are ranked in the same direction, so the sign convention does not matter.

Both are averaged over the questions of a test set by ``consistency``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import rel_entr
from scipy.stats import rankdata
from statsmodels.stats.proportion import proportion_confint

ArrayLike1D = Sequence[float] | np.ndarray


def accuracy_ci(correct: Sequence[bool] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Accuracy and its Wilson score interval (acc, lo, hi), which stays inside [0, 1] even at 0 % or 100 %."""
    arr = np.asarray(correct, dtype=bool).ravel()
    n = int(arr.size)
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    k = int(arr.sum())
    lo, hi = proportion_confint(k, n, alpha=1.0 - level, method="wilson")
    return (k / n, float(lo), float(hi))


def _as_distribution(x: ArrayLike1D, name: str) -> np.ndarray:
    """A 1-D float vector of non-negative finite values with a positive sum, renormalized to sum 1."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite non-negative probabilities, got {arr.tolist()}")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to 0")
    return arr / total


def kl_divergence(p: ArrayLike1D, q: ArrayLike1D, eps: float = 1e-12) -> float:
    """KL(p ‖ q) in nats for one question (p = base, q = fine-tuned), after renormalizing and clipping q at eps."""
    pp = _as_distribution(p, "p")
    qq = _as_distribution(q, "q")
    if pp.shape != qq.shape:
        raise ValueError(f"p and q differ in length: {pp.size} vs {qq.size}")
    qq = np.clip(qq, eps, None)
    qq = qq / qq.sum()  # keep q a distribution after clipping, so KL >= 0 holds exactly (Gibbs)
    return max(float(rel_entr(pp, qq).sum()), 0.0)


def dense_rank(x: ArrayLike1D) -> np.ndarray:
    """Dense ranks 1..k of a vector (ties share a rank, no gaps), the ranking the original study correlates."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    return rankdata(arr, method="dense").astype(np.int64)


def rank_correlation(p: ArrayLike1D, q: ArrayLike1D) -> float:
    """Pearson correlation of the dense ranks of two option-probability vectors; 0.0 when undefined (constant)."""
    rp = dense_rank(p).astype(np.float64)
    rq = dense_rank(q).astype(np.float64)
    if rp.shape != rq.shape:
        raise ValueError(f"p and q differ in length: {rp.size} vs {rq.size}")
    dp = rp - rp.mean()
    dq = rq - rq.mean()
    denom = float(np.sqrt((dp * dp).sum() * (dq * dq).sum()))
    if rp.size < 2 or denom == 0.0:
        return 0.0
    return float(np.clip((dp * dq).sum() / denom, -1.0, 1.0))


def consistency(
    base_probs: Sequence[Sequence[float]], ft_probs: Sequence[Sequence[float]], eps: float = 1e-12
) -> dict[str, float | int]:
    """Mean KL(base ‖ ft) and mean rank correlation over questions (the study's knowledge-consistency metrics)."""
    if len(base_probs) != len(ft_probs):
        raise ValueError(f"base and fine-tuned cover different question counts: {len(base_probs)} vs {len(ft_probs)}")
    n = len(base_probs)
    if n == 0:
        return {"kl": float("nan"), "rank_corr": float("nan"), "n": 0}
    kls = [kl_divergence(p, q, eps=eps) for p, q in zip(base_probs, ft_probs, strict=True)]
    rcs = [rank_correlation(p, q) for p, q in zip(base_probs, ft_probs, strict=True)]
    return {"kl": float(np.mean(kls)), "rank_corr": float(np.mean(rcs)), "n": n}
