"""The study's statistics: partial Spearman correlation, grouped regression, group differences and the verdict.

Choices stated once:

* **Partial Spearman** (DESIGN §1.5 and the original ``eval/analyse/partial_correlation.py``): rank x, y
  and the covariate (average ranks for ties), OLS-regress the x-rank and the y-rank on the covariate rank
  with a constant, then correlate the residuals. The original correlates the residuals with *Spearman*
  (``residual_method="spearman"``, the default; p-value from ``scipy.stats.spearmanr``, a t distribution
  with n-2 degrees of freedom). ``residual_method="pearson"`` gives the textbook Spearman partial
  correlation, equal to ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz²)(1 - r_yz²))`` on Spearman correlations,
  with its p-value from a t distribution with n-3 degrees of freedom (one covariate; as pingouin does).
* **Pooling for the partial correlation** (``partial_by_model``): per model, over domains × ratio conditions
  (incompatible, mixtures, self-aligning) and seeds, with x = 100 × rank_corr, y = ft_acc, covar = base_acc.
  The original computes it separately for each test set (HOMO / MMLU-ID / MMLU-OOD), which is our default;
  ``per_test_set=False`` pools the test sets. In the verdict, the interval for r is an approximate
  Fisher-z interval (standard error 1 / sqrt(n - 4) for one covariate); the decision uses r > 0 and p < 0.05.
* **Group differences** (harmonious/self-aligning/contextualized minus incompatible) are *paired* by
  (model, domain, seed, test_set): every pair is two fine-tuned models that differ only in their IFT data.
  The estimate is the mean paired difference in accuracy points (×100); its 95 % interval is, by default
  (``method="auto"``), a t interval over the pairs when there are fewer than 20 of them and the percentile
  bootstrap (2000 resamples, seed 0) from 20 on: a percentile bootstrap over a handful of values covers far
  less than 95 % (with 2 pairs its interval is just their range), while the t interval keeps its coverage
  for normal differences at any n. ``method="bootstrap"`` or ``"t"`` forces one. Pairs sharing a model and
  domain are not independent, so with few domains the interval is still optimistic; the method and the
  number of pairs are stated in every ``reading``. This pair-level path is now the fallback for runs without
  ``answers.csv``, and the cross-check (``t_lo``/``t_hi``) beside the question-level verdict.
* **Question-level verdict** (``study_verdict`` / ``answer_verdict``, issue 14): every difference (paper claims and
  the controls' readings) is estimated from every scored answer of the final models, a replicate (one (model,
  domain, seed) with all its groups, trained on its own data sample) weighing the same as any other; an untrained
  ``no_ift`` control (seed -1) pairs with every replicate. ``verdict_method="bootstrap"`` (default) resamples
  replicates and questions together within each domain, removes the known bias of that scheme and uses a t quantile
  (Satterthwaite df, between-replicate variance pooled over domains); ``"glmm"`` fits statsmodels'
  BinomialBayesMixedGLM (cell means per group × test set, random intercepts for question, run and replicate) and
  converts to accuracy points by the delta method. Measured on simulated studies with a known +3.4-point effect
  (``simulate_answers``): bootstrap coverage 0.967 (2 domains × 2 replicates × 100 questions, 150 studies), 0.967
  (2 × 3), 0.96 (3 × 4; SE 2.25 vs an estimate SD of 2.30), 0.1-0.4 s a study; GLMM 0.975 (2 × 3, 40 studies, SE 3.30
  vs 3.05) and 1.00 (2 × 2, 30 studies, SE 4.25 vs 3.15: its run-variance prior widens it with few runs), 4-9 s a
  study. The bootstrap is the default: as well calibrated, less conservative with few replicates, 25-50× faster.
  An interval of zero width never counts as support, in either path.
* **MDE**: (t_{0.975} + t_{0.80}) × SE with the interval's df (normal quantiles, 2.80, for the GLMM): the smallest
  difference the run detects with 80 % power at alpha 0.05. ``predict_mde`` plans a design from the measured
  variance components (``variance_components``/``power_table``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

TEST_SET_ORDER = ("HOMO", "ID", "OOD")
RATIO_GROUPS = ("incompatible", "mixture", "self_aligning")
PAIR_KEYS = ("model", "domain", "seed")

# Headline numbers of the paper (DESIGN.md §1), accuracy points.
PAPER_HARMONIOUS_MINUS_INCOMPATIBLE = {"HOMO": 11.27, "ID": 14.58, "OOD": 14.57}
PAPER_SELF_ALIGNING_MINUS_INCOMPATIBLE = {"HOMO": 5.25, "ID": 9.78, "OOD": 6.97}
PAPER_CONTEXTUALIZED_PER_MODEL = {"LLaMA-2-7B": 8.16, "LLaMA-2-13B": 9.48, "Mistral-7B": 3.98}
PAPER_CONTEXTUALIZED_MEAN = round(float(np.mean(list(PAPER_CONTEXTUALIZED_PER_MODEL.values()))), 2)
PAPER_PARTIAL_R = (0.78, 0.87)

CLAIM_HARMONIOUS = "harmonious > incompatible"
CLAIM_SELF_ALIGNING = "self-aligning > incompatible"
CLAIM_CONTEXTUALIZED = "contextualized > incompatible"
CLAIM_CONSISTENCY = "consistency predicts post-IFT accuracy"

_CONTEXT_NOTE = (
    "paper reports this per model (+8.16 LLaMA-2-7B, +9.48 LLaMA-2-13B, +3.98 Mistral-7B); "
    f"`paper` is their mean {PAPER_CONTEXTUALIZED_MEAN}"
)
_PARTIAL_NOTE = (
    "paper: partial Spearman r = 0.78-0.87 (p < 0.05) for Mistral-7B and LLaMA-2-13B; `paper` is the low end"
)

VERDICT_COLUMNS = ["claim", "model", "test_set", "ours", "lo", "hi", "n", "paper", "supported", "reading", "note"]


# --------------------------------------------------------------------------------------------- partial corr.
def partial_spearman(
    df: pd.DataFrame,
    x: str,
    y: str,
    covar: str,
    residual_method: Literal["spearman", "pearson"] = "spearman",
) -> dict[str, float | int]:
    """Spearman partial correlation of x and y given covar: rank, regress on the covar rank, correlate residuals."""
    data = df[[x, y, covar]].astype(float).dropna()
    n = len(data)
    out: dict[str, float | int] = {"r": float("nan"), "p": float("nan"), "n": n}
    if n < 4:
        return out
    rx = stats.rankdata(data[x].to_numpy(), method="average")
    ry = stats.rankdata(data[y].to_numpy(), method="average")
    rz = stats.rankdata(data[covar].to_numpy(), method="average")
    # A constant control leaves only the intercept (avoids a rank-deficient design).
    design = sm.add_constant(rz, has_constant="add") if np.ptp(rz) > 0 else np.ones((n, 1))
    res_x = sm.OLS(rx, design).fit().resid
    res_y = sm.OLS(ry, design).fit().resid
    if np.allclose(res_x, 0.0) or np.allclose(res_y, 0.0):
        return out
    if residual_method == "spearman":
        r, p = stats.spearmanr(res_x, res_y)
        r, p = float(r), float(p)
    elif residual_method == "pearson":
        r = float(np.clip(np.corrcoef(res_x, res_y)[0, 1], -1.0, 1.0))
        dof = n - 3  # n - 2 - (number of covariates)
        if abs(r) >= 1.0:
            p = 0.0
        else:
            t = r * math.sqrt(dof / (1.0 - r * r))
            p = float(2.0 * stats.t.sf(abs(t), dof))
    else:
        raise ValueError(f"residual_method must be 'spearman' or 'pearson', got {residual_method!r}")
    out.update(r=r, p=p)
    return out


def with_consistency(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of an eval table with `consistency` = 100 × rank_corr added (the paper's consistency scale)."""
    out = df.copy()
    if "consistency" not in out.columns:
        out["consistency"] = 100.0 * out["rank_corr"].astype(float)
    return out


PARTIAL_UNITS = {
    "replicate": "one point per replicate (each replicate trains on its own sample of facts)",
    "mean": "one point per (model, domain, condition): replicates of the same data averaged",
}


def partial_by_model(
    eval_table: pd.DataFrame,
    per_test_set: bool = True,
    residual_method: Literal["spearman", "pearson"] = "spearman",
    unit: Literal["replicate", "mean"] = "replicate",
) -> pd.DataFrame:
    """Partial Spearman of consistency (100 × rank_corr) with ft_acc given base_acc per model (domains × ratios).

    Only ratio conditions of final models count (controls and harmonious/contextualized never do). `unit` says what
    a point is: "replicate" when replicates differ in their data, "mean" (seeds averaged per condition) when they
    share it, so that seeds of one data sample are not counted as independent points; the `unit` column says which.
    """
    if unit not in PARTIAL_UNITS:
        raise ValueError(f"unit must be one of {sorted(PARTIAL_UNITS)}, got {unit!r}")
    data = with_consistency(final_epoch(eval_table))
    data = data[data["group"].isin(RATIO_GROUPS)]
    if unit == "mean" and len(data):
        data = (data.groupby(["model", "domain", "condition", "test_set"], as_index=False, sort=False)
                [["consistency", "ft_acc", "base_acc"]].mean())
    keys = ["model", "test_set"] if per_test_set else ["model"]
    rows: list[dict[str, Any]] = []
    for key, sub in data.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        res = partial_spearman(sub, "consistency", "ft_acc", "base_acc", residual_method=residual_method)
        row = dict(zip(keys, key, strict=True))
        row.setdefault("test_set", "pooled")
        rows.append({**row, **res, "unit": PARTIAL_UNITS[unit]})
    frame = pd.DataFrame(rows, columns=["model", "test_set", "r", "p", "n", "unit"])
    return _sort_test_sets(frame, ["model"])


def consistency_by_group(eval_table: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy, KL and rank correlation per group and test set (final models), controls included, so a reader
    sees how much of the drift from the base probe is format (no_ift), general IFT (general_only) or domain data."""
    data = final_epoch(eval_table)
    order = {g: i for i, g in enumerate(("no_ift", "general_only", "harmonious", "incompatible", "mixture",
                                         "self_aligning", "contextualized"))}
    out = (data.groupby(["group", "test_set"], as_index=False, sort=False)
           .agg(ft_acc=("ft_acc", "mean"), base_acc=("base_acc", "mean"), kl=("kl", "mean"),
                rank_corr=("rank_corr", "mean"), cells=("ft_acc", "size")))
    ts_order = {t: i for i, t in enumerate(TEST_SET_ORDER)}
    out = out.assign(_g=out["group"].map(lambda g: order.get(g, len(order))),
                     _t=out["test_set"].map(lambda t: ts_order.get(t, len(ts_order))))
    return out.sort_values(["_g", "_t"], kind="stable").drop(columns=["_g", "_t"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ regression
def grouped_regression(
    df: pd.DataFrame, y: str = "ft_acc", x: str = "consistency", group: str = "test_set"
) -> Any:
    """OLS of y on x with a separate intercept and slope per group (`y ~ x * C(group)`), the paper's Fig. 3 model."""
    data = with_consistency(df) if x == "consistency" else df
    return smf.ols(f"{y} ~ {x} * C({group})", data=data).fit()


def per_group_fits(
    df: pd.DataFrame, y: str = "ft_acc", x: str = "consistency", group: str = "test_set", level: float = 0.95
) -> pd.DataFrame:
    """One OLS line per group (slope with its CI, intercept, R², n), used to draw the figure's fitted lines."""
    data = with_consistency(df) if x == "consistency" else df
    rows: list[dict[str, Any]] = []
    for name in ordered_unique(data[group]):
        sub = data.loc[data[group] == name, [x, y]].astype(float).dropna()
        n = len(sub)
        row: dict[str, Any] = {
            "group": name, "slope": np.nan, "intercept": np.nan, "slope_lo": np.nan, "slope_hi": np.nan,
            "r2": np.nan, "n": n,
        }
        if n >= 2 and sub[x].nunique() >= 2:
            fit = smf.ols(f"{y} ~ {x}", data=sub).fit()
            row.update(slope=float(fit.params[x]), intercept=float(fit.params["Intercept"]))
            if n >= 3:
                lo, hi = fit.conf_int(alpha=1.0 - level).loc[x]
                row.update(slope_lo=float(lo), slope_hi=float(hi), r2=float(fit.rsquared))
        rows.append(row)
    return pd.DataFrame(rows, columns=["group", "slope", "intercept", "slope_lo", "slope_hi", "r2", "n"])


# ------------------------------------------------------------------------------------------------ intervals
def bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    paired: bool = False,
) -> dict[str, float]:
    """mean(a) - mean(b) with a percentile-bootstrap interval (paired=True resamples (a_i, b_i) pairs together)."""
    aa = np.asarray(a, dtype=float).ravel()
    bb = np.asarray(b, dtype=float).ravel()
    if paired and aa.shape != bb.shape:
        raise ValueError(f"paired samples differ in length: {aa.size} vs {bb.size}")
    nan = float("nan")
    if aa.size == 0 or bb.size == 0:
        return {"diff": nan, "lo": nan, "hi": nan}
    diff = float(aa.mean() - bb.mean())
    if min(aa.size, bb.size) < 2:
        return {"diff": diff, "lo": nan, "hi": nan}
    rng = np.random.default_rng(seed)
    if paired:
        res = stats.bootstrap((aa - bb,), np.mean, n_resamples=n_boot, confidence_level=level,
                              method="percentile", rng=rng)
    else:
        res = stats.bootstrap((aa, bb), _mean_diff, n_resamples=n_boot, confidence_level=level,
                              method="percentile", vectorized=True, rng=rng)
    return {"diff": diff, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high)}


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Difference of means along an axis (vectorized statistic for scipy's bootstrap)."""
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_diff_ci(diffs: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of per-seed (or per-pair) differences with a t interval; lo = hi = nan with fewer than two values."""
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "lo": nan, "hi": nan, "n": 0}
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "lo": nan, "hi": nan, "n": n}
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


# -------------------------------------------------------------------------------------------- group diffs
MIN_BOOTSTRAP_PAIRS = 20  # below this, method="auto" uses the t interval


def group_differences(
    eval_table: pd.DataFrame,
    method: Literal["auto", "bootstrap", "t"] = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Paired differences of ft_acc (points ×100) of harmonious/self-aligning/contextualized vs incompatible."""
    claims = [
        (CLAIM_HARMONIOUS, "harmonious", PAPER_HARMONIOUS_MINUS_INCOMPATIBLE, ""),
        (CLAIM_SELF_ALIGNING, "self_aligning", PAPER_SELF_ALIGNING_MINUS_INCOMPATIBLE, ""),
        (CLAIM_CONTEXTUALIZED, "contextualized", dict.fromkeys(TEST_SET_ORDER, PAPER_CONTEXTUALIZED_MEAN),
         _CONTEXT_NOTE),
    ]
    wide = _paired_wide(eval_table)
    test_sets = ordered_unique(eval_table["test_set"])
    rows: list[dict[str, Any]] = []
    for claim, group, paper, note in claims:
        for ts in test_sets:
            sub = wide[wide["test_set"] == ts] if len(wide) else wide
            diffs = _diffs(sub, group)
            rows.append(_diff_row(claim, group, ts, diffs, paper.get(ts, np.nan), note, method, n_boot, seed, level))
        if group == "contextualized":
            # The paper's per-model number averages the test sets: average the paired differences per unit.
            d_all = pd.Series(dtype=float)
            if len(wide) and group in wide.columns and "incompatible" in wide.columns:
                per = wide.assign(_d=100.0 * (wide[group] - wide["incompatible"])).dropna(subset=["_d"])
                d_all = per.groupby(list(PAIR_KEYS))["_d"].mean()
            rows.append(_diff_row(claim, group, "all", d_all.to_numpy(), PAPER_CONTEXTUALIZED_MEAN, note,
                                  method, n_boot, seed, level))
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _paired_wide(eval_table: pd.DataFrame) -> pd.DataFrame:
    """ft_acc pivoted to one column per group, one row per (model, domain, seed, test_set)."""
    keys = [*PAIR_KEYS, "test_set"]
    if eval_table.empty:
        return pd.DataFrame(columns=keys)
    eval_table = final_epoch(eval_table)
    wide = eval_table.pivot_table(index=keys, columns="group", values="ft_acc", aggfunc="mean", observed=True)
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index()


def _diffs(wide: pd.DataFrame, group: str) -> np.ndarray:
    """Paired differences group - incompatible in accuracy points, NaN pairs dropped."""
    if group not in wide.columns or "incompatible" not in wide.columns:
        return np.array([], dtype=float)
    d = 100.0 * (wide[group].astype(float) - wide["incompatible"].astype(float))
    return d.dropna().to_numpy()


def _diff_row(
    claim: str, group: str, test_set: str, diffs: np.ndarray, paper: float, note: str,
    method: str, n_boot: int, seed: int, level: float,
) -> dict[str, Any]:
    """One verdict row for a paired difference, with its interval and a sentence computed from the numbers."""
    n = int(len(diffs))
    if method == "auto":
        method = "bootstrap" if n >= MIN_BOOTSTRAP_PAIRS else "t"
    if method == "bootstrap":
        res = bootstrap_diff(diffs, np.zeros(n), n_boot=n_boot, seed=seed, level=level, paired=True)
        est, lo, hi = res["diff"], res["lo"], res["hi"]
        how = f"paired bootstrap over {n} (model, domain, seed) pairs"
    elif method == "t":
        res = paired_diff_ci(diffs, level=level)
        est, lo, hi = res["mean"], res["lo"], res["hi"]
        how = f"t interval over {n} (model, domain, seed) pairs"
    else:
        raise ValueError(f"method must be 'auto', 'bootstrap' or 't', got {method!r}")
    # An interval of zero width (identical pair differences) ignores question sampling: never support.
    supported = bool(np.isfinite(lo) and lo > 0 and hi - lo > 1e-9)
    paper_txt = f"paper {paper:+.2f}" if np.isfinite(paper) else "no paper number"
    if n == 0:
        reading = f"not run: no paired {group}/incompatible results"
    elif not np.isfinite(lo):
        reading = f"inconclusive: {est:+.1f} points from {n} pair(s), no interval vs {paper_txt}"
    elif hi - lo <= 1e-9:
        reading = (f"inconclusive (interval of zero width): {est:+.1f} points [{lo:.1f}, {hi:.1f}] from {n} "
                   f"identical pair(s) vs {paper_txt} ({how})")
    else:
        status = "supported" if supported else ("contradicted" if hi < 0 else "not supported (interval spans 0)")
        reading = f"{status}: {est:+.1f} points [{lo:.1f}, {hi:.1f}] vs {paper_txt} ({how})"
    return {
        "claim": claim, "model": "all", "test_set": test_set, "ours": est, "lo": lo, "hi": hi, "n": n,
        "paper": paper, "supported": supported, "reading": reading, "note": note,
    }


# ----------------------------------------------------------------------------------------------- verdict
def verdict(
    eval_table: pd.DataFrame,
    partial: pd.DataFrame | Mapping[str, Mapping[str, float]] | None = None,
    method: Literal["auto", "bootstrap", "t"] = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per paper claim (and test set / model) with our estimate, interval, the paper's number and a reading."""
    diffs = group_differences(eval_table, method=method, n_boot=n_boot, seed=seed, level=level)
    part = _partial_frame(eval_table, partial)
    rows = [_correlation_row(r, level) for r in part.to_dict("records")]
    corr = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    frames = [f for f in (diffs, corr) if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=VERDICT_COLUMNS)
    out["supported"] = out["supported"].astype(bool)
    return out


def _partial_frame(
    eval_table: pd.DataFrame, partial: pd.DataFrame | Mapping[str, Mapping[str, float]] | None
) -> pd.DataFrame:
    """Normalize the partial-correlation input (frame, {model: {r, p, n}} or None → computed) to a frame."""
    if partial is None:
        if len(eval_table) == 0:
            return pd.DataFrame(columns=["model", "test_set", "r", "p", "n"])
        return partial_by_model(eval_table)
    if isinstance(partial, pd.DataFrame):
        frame = partial.copy()
    else:
        frame = pd.DataFrame([{"model": k, **dict(v)} for k, v in partial.items()])
    for col, default in (("model", "all"), ("test_set", "pooled"), ("n", np.nan)):
        if col not in frame.columns:
            frame[col] = default
    missing = {"r", "p"} - set(frame.columns)
    if missing:
        raise ValueError(f"partial-correlation input lacks column(s) {sorted(missing)}")
    return frame


def _correlation_row(rec: Mapping[str, Any], level: float) -> dict[str, Any]:
    """Verdict row for the consistency claim: r > 0 and p < 0.05, with a Fisher-z interval for r."""
    r = float(rec["r"]) if rec["r"] is not None else float("nan")
    p = float(rec["p"]) if rec["p"] is not None else float("nan")
    n = rec.get("n", np.nan)
    n = int(n) if n is not None and np.isfinite(n) else None
    lo = hi = float("nan")
    if n is not None and n > 4 and np.isfinite(r) and abs(r) < 1:
        half = stats.norm.ppf(0.5 + level / 2.0) / math.sqrt(n - 4)  # se of atanh(r) with one covariate
        lo, hi = math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)
    supported = bool(np.isfinite(r) and np.isfinite(p) and r > 0 and p < 0.05)
    paper_txt = f"paper {PAPER_PARTIAL_R[0]:.2f}-{PAPER_PARTIAL_R[1]:.2f}"
    if not np.isfinite(r):
        reading = f"not computable: too few rows or no variation (n = {n})"
    else:
        interval = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
        status = "supported" if supported else ("not supported (r <= 0)" if r <= 0 else "not supported (p >= 0.05)")
        reading = f"{status}: r = {r:.2f}{interval}, p = {p:.3g}, n = {n} vs {paper_txt}"
    return {
        "claim": CLAIM_CONSISTENCY, "model": rec.get("model", "all"), "test_set": rec.get("test_set", "pooled"),
        "ours": r, "lo": lo, "hi": hi, "n": n if n is not None else 0, "paper": PAPER_PARTIAL_R[0],
        "supported": supported, "reading": reading, "note": _PARTIAL_NOTE,
    }


# ------------------------------------------------------------------------------------------------- helpers
def ordered_unique(values: pd.Series) -> list[Any]:
    """Unique values with HOMO, ID, OOD first (in that order), the rest in order of appearance."""
    seen = list(pd.unique(values.dropna()))
    known = [t for t in TEST_SET_ORDER if t in seen]
    return known + [v for v in seen if v not in known]


def _sort_test_sets(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort a frame by keys and then test set in HOMO, ID, OOD order."""
    if frame.empty:
        return frame
    order = {t: i for i, t in enumerate(TEST_SET_ORDER)}
    rank = frame["test_set"].map(lambda t: order.get(t, len(order)))
    return frame.assign(_o=rank).sort_values([*keys, "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


# ------------------------------------------------------------------------------ question-level verdict (answers)
CONTROL_GROUPS = ("no_ift", "general_only")
ANSWER_COLUMNS = ("model", "domain", "condition", "group", "ratio", "seed", "epoch", "test_set", "id", "correct",
                  "base_correct")
REPLICATE_KEYS = ("model", "domain", "seed")
Z_MDE = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.80))  # 80 % power, two-sided alpha 0.05: 2.80

CLAIM_GENERAL_VS_NO_IFT = "general_only − no_ift"
_CONTROL_NOTES = {
    "no_ift": "what general IFT and the chat format do (no paper number)",
    "general_only": "what the domain data add over general IFT alone (no paper number)",
}


@dataclass(frozen=True)
class Contrast:
    """One verdict comparison: accuracy of `group` minus accuracy of `versus`, with the paper's numbers if any."""

    claim: str
    group: str
    versus: str
    paper: Mapping[str, float]
    note: str = ""
    kind: str = "claim"  # "claim" (a paper claim) or "control" (a reading of the controls)
    with_all: bool = False  # also a row averaging the test sets (the paper's contextualized number)


CONTRASTS: tuple[Contrast, ...] = (
    Contrast(CLAIM_HARMONIOUS, "harmonious", "incompatible", PAPER_HARMONIOUS_MINUS_INCOMPATIBLE),
    Contrast(CLAIM_SELF_ALIGNING, "self_aligning", "incompatible", PAPER_SELF_ALIGNING_MINUS_INCOMPATIBLE),
    Contrast(CLAIM_CONTEXTUALIZED, "contextualized", "incompatible",
             dict.fromkeys((*TEST_SET_ORDER, "all"), PAPER_CONTEXTUALIZED_MEAN), _CONTEXT_NOTE, with_all=True),
    Contrast(CLAIM_GENERAL_VS_NO_IFT, "general_only", "no_ift", {}, _CONTROL_NOTES["no_ift"], "control"),
    *(Contrast(f"{g} − general_only", g, "general_only", {}, _CONTROL_NOTES["general_only"], "control")
      for g in ("harmonious", "incompatible", "self_aligning", "contextualized")),
)

ANSWER_VERDICT_COLUMNS = ["claim", "kind", "model", "test_set", "ours", "lo", "hi", "se", "mde", "n_replicates",
                          "n_questions", "t_lo", "t_hi", "paper", "supported", "method", "reading", "note"]


def clean_answers(answers: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Validate answers.csv, keep each cell's final epoch, and count (never hide) the rows left out, by reason."""
    required = set(ANSWER_COLUMNS) - {"ratio", "base_correct", "epoch"}
    missing = sorted(required - set(answers.columns))
    if missing:
        raise ValueError(f"answers table lacks column(s) {missing}; expected {list(ANSWER_COLUMNS)}")
    data = answers.copy()
    counts = {"read": len(data)}
    correct = pd.to_numeric(data["correct"], errors="coerce")
    bad = ~correct.isin([0, 1]) | data["id"].isna() | data["test_set"].isna() | data["group"].isna()
    counts["malformed (correct not 0/1, or no id/test_set/group)"] = int(bad.sum())
    data = data.loc[~bad].assign(correct=correct[~bad].astype(int))
    data["seed"] = pd.to_numeric(data["seed"], errors="coerce").fillna(-1).astype(int)
    before = len(data)
    data = final_epoch(data)
    counts["earlier checkpoints (not the final model)"] = before - len(data)
    dup = data.duplicated(["model", "domain", "condition", "seed", "test_set", "id"], keep="first")
    counts["duplicate answers (same cell and question)"] = int(dup.sum())
    data = data.loc[~dup].reset_index(drop=True)
    counts["kept"] = len(data)
    return data, counts


def final_epoch(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of each cell's last evaluated epoch (a frame without an `epoch` column is returned as is)."""
    if "epoch" not in frame.columns or frame.empty:
        return frame
    cell = [c for c in ("model", "domain", "condition", "seed") if c in frame.columns]
    epoch = pd.to_numeric(frame["epoch"], errors="coerce").fillna(np.inf)  # no epoch: an untrained control
    last = epoch.groupby([frame[c] for c in cell], dropna=False).transform("max")
    return frame.loc[epoch == last].reset_index(drop=True)


@dataclass
class _Block:
    """The answers of one contrast in one (model, domain) stratum and test set: differences D[replicate, question]."""

    model: str
    domain: str
    test_set: str
    seeds: list[int]
    diff: np.ndarray  # R × Q, values in {-1, 0, 1}
    acc_a: np.ndarray  # R × Q correct of `group`
    acc_b: np.ndarray  # R × Q correct of `versus`


def _group_matrix(sub: pd.DataFrame, group: str) -> pd.DataFrame:
    """Correct (0/1) of one group as seeds × question ids."""
    rows = sub[sub["group"] == group]
    return rows.pivot_table(index="seed", columns="id", values="correct", aggfunc="mean", observed=True)


def contrast_blocks(answers: pd.DataFrame, group: str, versus: str) -> list[_Block]:
    """Paired answer matrices of `group` and `versus` per (model, domain, test set): rows are the replicates where
    both were scored (an untrained control, seed -1, pairs with every replicate), columns the questions both answered."""
    blocks: list[_Block] = []
    data = answers[answers["group"].isin([group, versus])]
    for (model, domain), stratum in data.groupby(["model", "domain"], sort=True):
        per_ts: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        seeds: set[int] | None = None
        for ts in ordered_unique(stratum["test_set"]):
            sub = stratum[stratum["test_set"] == ts]
            a, b = _group_matrix(sub, group), _group_matrix(sub, versus)
            if a.empty or b.empty:
                continue
            a, b = _broadcast_untrained(a, b), _broadcast_untrained(b, a)
            common = set(a.index) & set(b.index)
            seeds = common if seeds is None else seeds & common
            per_ts[ts] = (a, b)
        if not seeds:
            continue
        order = sorted(seeds)
        for ts, (a, b) in per_ts.items():
            a, b = a.loc[order], b.loc[order]
            cols = [c for c in a.columns if c in set(b.columns)]
            a, b = a[cols], b[cols]
            keep = a.notna().all(axis=0) & b.notna().all(axis=0)
            a, b = a.loc[:, keep].to_numpy(float), b.loc[:, keep].to_numpy(float)
            if a.shape[1] == 0:
                continue
            blocks.append(_Block(str(model), str(domain), ts, order, a - b, a, b))
    return blocks


def _broadcast_untrained(m: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """An untrained control scored once (seed -1) stands beside every replicate of the other group."""
    if list(m.index) == [-1] and not (len(other.index) == 1 and other.index[0] == -1):
        return pd.DataFrame(np.repeat(m.to_numpy(), len(other.index), axis=0), index=other.index, columns=m.columns)
    return m


def _pooled(values: dict[tuple[str, str, str], float], weights: dict[tuple[str, str], int], test_set: str) -> float:
    """Replicate-weighted mean over strata of per-stratum values for one test set."""
    keys = [k for k in values if k[2] == test_set]
    w = np.array([weights[k[:2]] for k in keys], dtype=float)
    return float(np.dot(w, [values[k] for k in keys]) / w.sum())


def bootstrap_contrast(
    blocks: Sequence[_Block], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Per test set (and "all", the mean over test sets): difference in points, interval and SE from a two-way
    bootstrap of replicates and questions.

    Each resample draws, inside every (model, domain) stratum, its replicates (training runs with all their groups,
    shared by the test sets) and, per test set, its questions, both with replacement and independently (the
    pigeonhole bootstrap); domains stay fixed and every replicate weighs the same. Its variance is biased in a known
    way (McCullagh 2000, Bernoulli 6: 285-301): it shrinks the between-replicate part by (R-1)/R and counts the
    answer-level noise about three times; the bias, a closed form in the two-way ANOVA mean squares, is removed
    (so the SE is the unbiased crossed random-effects SE), and the interval is estimate ± t × SE with Satterthwaite's
    degrees of freedom, because only a handful of replicates carry the between-run variance.
    """
    if not blocks:
        return {}
    rng = np.random.default_rng(seed)
    strata = sorted({(b.model, b.domain) for b in blocks})
    by_stratum = {s: [b for b in blocks if (b.model, b.domain) == s] for s in strata}
    n_rep = {s: len(by_stratum[s][0].seeds) for s in strata}
    w_rep = {s: rng.multinomial(n_rep[s], np.full(n_rep[s], 1.0 / n_rep[s]), size=n_boot) for s in strata}
    draws: dict[tuple[str, str, str], np.ndarray] = {}
    for b in blocks:
        r, q = b.diff.shape
        w_q = rng.multinomial(q, np.full(q, 1.0 / q), size=n_boot)
        draws[(b.model, b.domain, b.test_set)] = ((w_rep[(b.model, b.domain)] @ b.diff) * w_q).sum(axis=1) / (r * q)
    out: dict[str, dict[str, float]] = {}
    for ts in [*ordered_unique(pd.Series([b.test_set for b in blocks])), "all"]:
        parts = {s: [b for b in by_stratum[s] if ts in ("all", b.test_set)] for s in strata}
        parts = {s: v for s, v in parts.items() if v}
        total = sum(n_rep[s] for s in parts)
        est, dist, correction, terms = 0.0, np.zeros(n_boot), 0.0, []
        rep: list[tuple[float, float, int]] = []  # (weight, S² of replicate means, R) per stratum
        for s, bl in parts.items():
            w = n_rep[s] / total
            est += w * float(np.mean([b.diff.mean() for b in bl]))
            dist += w * np.mean([draws[(b.model, b.domain, b.test_set)] for b in bl], axis=0)
            s2, corr, stratum_terms = _stratum_moments(bl)
            rep.append((w, s2, n_rep[s]))
            correction += w**2 * corr
            terms += [(w**2 * t, df) for t, df in stratum_terms]
        # The between-replicate variance is pooled over domains (one variance, sum of (R - 1) degrees of freedom):
        # with 2 replicates per domain a per-domain estimate has a single degree of freedom.
        df_rep = sum(r - 1 for _, _, r in rep)
        s2_pooled = sum((r - 1) * s2 for _, s2, r in rep) / df_rep if df_rep else 0.0
        correction += sum(w**2 * (s2_pooled / r - s2 * (r - 1) / r**2) for w, s2, r in rep)
        terms.append((sum(w**2 / r for w, _, r in rep) * s2_pooled, df_rep))
        var = max(float(dist.var(ddof=1)) + correction, 0.0)
        moment_var = sum(t for t, _ in terms)
        denom = sum(t**2 / df for t, df in terms if df > 0)
        dof = max(moment_var**2 / denom, 1.0) if denom > 0 and moment_var > 0 else 1.0
        # The subtracted residual term can pull Satterthwaite's df below that of any positive part; floor it there.
        dof = max(dof, min((df for t, df in terms if t > 0 and df > 0), default=1.0))
        se = math.sqrt(var)
        half = float(stats.t.ppf((1 + level) / 2, dof)) * se
        n_q = sum(b.diff.shape[1] for bl in parts.values() for b in bl)
        out[ts] = {"ours": 100 * est, "lo": 100 * (est - half), "hi": 100 * (est + half), "se": 100 * se,
                   "n_replicates": int(total), "n_questions": int(n_q), "df": float(dof), "df_replicates": df_rep}
    return out


def _stratum_moments(blocks: Sequence[_Block]) -> tuple[float, float, list[tuple[float, int]]]:
    """For the mean over test sets of one stratum's blocks (replicates shared): S² of the replicates' means, the
    bias of the pigeonhole bootstrap's question and residual parts (target minus bootstrap expectation), and the
    signed question terms (c × mean square, df) of the unbiased two-way random-effects variance
    V = S²/R + Σ_t (MS_q,t − MS_res,t) / (R Q_t T²); the replicate part is handled by the caller (pooled)."""
    n_t = len(blocks)
    r = blocks[0].diff.shape[0]
    rows = np.mean([b.diff.mean(axis=1) for b in blocks], axis=0)  # each replicate's mean over test sets
    s2 = float(rows.var(ddof=1)) if r > 1 else 0.0
    correction = 0.0
    terms: list[tuple[float, int]] = []
    for b in blocks:
        a = _two_way_anova(b.diff)
        q = a["q"]
        c = 1.0 / (r * q * n_t**2)
        correction += c * (a["ms_q"] / q - a["ms_res"] * (1 + (r - 1) * (q - 1) / (r * q)))
        terms += [(c * a["ms_q"], a["df_q"]), (-c * a["ms_res"], a["df_res"])]
    return s2, correction, terms


def _two_way_anova(d: np.ndarray) -> dict[str, float]:
    """Mean squares of a replicate × question table without replication (rows, columns, residual)."""
    r, q = d.shape
    grand = d.mean()
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    df_rep, df_q, df_res = r - 1, q - 1, (r - 1) * (q - 1)
    ss_res = float(((d - rows[:, None] - cols[None, :] + grand) ** 2).sum())
    return {"r": r, "q": q, "df_rep": df_rep, "df_q": df_q, "df_res": df_res,
            "ms_rep": q * float(((rows - grand) ** 2).sum()) / df_rep if df_rep else 0.0,
            "ms_q": r * float(((cols - grand) ** 2).sum()) / df_q if df_q else 0.0,
            "ms_res": ss_res / df_res if df_res else 0.0}


@dataclass
class AnswerGlmm:
    """A fitted binomial GLMM of every scored answer and the lookup tables to read contrasts from it."""

    result: Any
    fe: dict[str, tuple[float, float]]  # cell "model|group|test_set" -> (posterior mean, sd) on the logit scale
    question_effect: dict[str, float]  # "domain|test_set|id" -> posterior mean of its random intercept
    run_sd: float  # posterior estimate of the SD of the training-run intercepts (logit scale)
    runs: dict[tuple[str, str], int]  # (model, group) -> number of training runs
    questions: dict[tuple[str, str, str], list[str]]  # (model, group, test_set) -> question keys answered


def fit_answer_glmm(answers: pd.DataFrame, groups: Sequence[str], fit_method: str = "L-BFGS-B") -> AnswerGlmm:
    """Fit correct ~ group × test set (one mean per model, group and test set) with random intercepts for question,
    training run and replicate (the groups trained on one data sample) by variational Bayes
    (statsmodels BinomialBayesMixedGLM.fit_vb)."""
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    data = answers[answers["group"].isin(list(groups))].copy()
    if data.empty:
        raise ValueError(f"no answers of the groups {list(groups)} to fit")
    data["cell"] = data["model"].astype(str) + "|" + data["group"].astype(str) + "|" + data["test_set"].astype(str)
    data["question"] = data["domain"].astype(str) + "|" + data["test_set"].astype(str) + "|" + data["id"].astype(str)
    data["run"] = (data["model"].astype(str) + "|" + data["domain"].astype(str) + "|" + data["group"].astype(str)
                   + "|" + data["seed"].astype(str))
    data["replicate"] = data["model"].astype(str) + "|" + data["domain"].astype(str) + "|" + data["seed"].astype(str)
    vcs = {"question": "0 + C(question)", "run": "0 + C(run)"}
    if data["replicate"].nunique() > 1:
        vcs["replicate"] = "0 + C(replicate)"  # shared by the groups of a replicate: the pairing
    model = BinomialBayesMixedGLM.from_formula("correct ~ 0 + C(cell)", vcs, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's minimizer warns about precision loss near the optimum
        res = model.fit_vb(fit_method=fit_method)
    fe = {name[len("C(cell)["):-1]: (float(m), float(s))
          for name, m, s in zip(model.exog_names, res.fe_mean, res.fe_sd, strict=True)}
    q_ident = model.vcp_names.index("question")
    r_ident = model.vcp_names.index("run")
    q_effect = {name[len("C(question)["):-1]: float(m)
                for name, m, ident in zip(model.vc_names, res.vc_mean, model.ident, strict=True) if ident == q_ident}
    run_sd = float(np.exp(res.vcp_mean[r_ident]))
    trained = data[~data["group"].eq("no_ift")]
    runs = trained.groupby(["model", "group"])["run"].nunique().to_dict()
    questions = {k: sorted(set(v)) for k, v in data.groupby(["model", "group", "test_set"])["question"]}
    return AnswerGlmm(res, fe, q_effect, run_sd, {(str(m), str(g)): int(n) for (m, g), n in runs.items()},
                      {(str(m), str(g), str(t)): v for (m, g, t), v in questions.items()})


def glmm_contrast(fit: AnswerGlmm, group: str, versus: str, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Per test set (and "all"): the GLMM's difference in accuracy points, averaged over the questions both groups
    answered (p = expit(cell mean + question intercept)), with a delta-method SE.

    Mean-field VB ignores that a group's mean trades off against its own runs' intercepts, so its posterior SD of a
    group mean omits the between-run variance; it is added back as run_sd² / (runs of the group), the variance of
    a mean over that many runs (an untrained control, no_ift, has no run variance).
    """
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    s2 = fit.run_sd ** 2
    per_model: dict[str, dict[str, tuple[float, float, float, float, int]]] = {}
    for (model, g, ts), qs in fit.questions.items():
        if g != group or (model, versus, ts) not in fit.questions:
            continue
        common = sorted(set(qs) & set(fit.questions[(model, versus, ts)]))
        if not common:
            continue
        u = np.array([fit.question_effect.get(q, 0.0) for q in common])
        (ma, sa), (mb, sb) = fit.fe[f"{model}|{group}|{ts}"], fit.fe[f"{model}|{versus}|{ts}"]
        pa, pb = _expit(ma + u), _expit(mb + u)
        ga, gb = float(np.mean(pa * (1 - pa))), float(np.mean(pb * (1 - pb)))
        per_model.setdefault(model, {})[ts] = (float(np.mean(pa - pb)), ga, gb, ga**2 * sa**2 + gb**2 * sb**2,
                                               len(common))
    out: dict[str, dict[str, float]] = {}
    test_sets = ordered_unique(pd.Series([t for m in per_model.values() for t in m]))
    for ts in [*test_sets, "all"]:
        ests, variances, weights, n_q = [], [], [], 0
        for model, by_ts in per_model.items():
            parts = list(by_ts.values()) if ts == "all" else ([by_ts[ts]] if ts in by_ts else [])
            if not parts:
                continue
            ra, rb = fit.runs.get((model, group), 0), fit.runs.get((model, versus), 0)
            ga, gb = np.mean([p[1] for p in parts]), np.mean([p[2] for p in parts])
            run_var = (ga**2 * s2 / ra if ra else 0.0) + (gb**2 * s2 / rb if rb else 0.0)
            ests.append(np.mean([p[0] for p in parts]))
            variances.append(sum(p[3] for p in parts) / len(parts) ** 2 + run_var)
            weights.append(max(ra, rb, 1))
            n_q += sum(p[4] for p in parts)
        if not ests:
            continue
        w = np.asarray(weights, float) / sum(weights)
        est, se = float(np.dot(w, ests)), float(math.sqrt(np.dot(w**2, variances)))
        n_rep = int(sum(max(fit.runs.get((m, group), 0), fit.runs.get((m, versus), 0)) for m in per_model))
        out[ts] = {"ours": 100 * est, "lo": 100 * (est - z * se), "hi": 100 * (est + z * se), "se": 100 * se,
                   "n_replicates": n_rep, "n_questions": n_q}
    return out


def _expit(x: np.ndarray | float) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def replicate_t_interval(blocks: Sequence[_Block], level: float = 0.95) -> dict[str, dict[str, float]]:
    """Cross-check: paired t interval over replicates of their accuracy differences (points), per test set and "all"."""
    per_rep: dict[str, list[float]] = {}
    for b in blocks:
        per_rep.setdefault(b.test_set, []).extend((100 * b.diff.mean(axis=1)).tolist())
    strata = sorted({(b.model, b.domain) for b in blocks})
    alls: list[float] = []
    for s in strata:
        mats = [b.diff.mean(axis=1) for b in blocks if (b.model, b.domain) == s]
        alls.extend((100 * np.mean(mats, axis=0)).tolist())
    per_rep["all"] = alls
    return {ts: paired_diff_ci(v, level) for ts, v in per_rep.items()}


def answer_verdict(
    answers: pd.DataFrame,
    method: Literal["bootstrap", "glmm"] = "bootstrap",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    contrasts: Sequence[Contrast] = CONTRASTS,
) -> pd.DataFrame:
    """Verdict rows (paper claims and control readings) estimated from every scored answer, with an MDE and the
    paired t interval over replicates as a cross-check; see the module docstring for the two methods."""
    if method not in ("bootstrap", "glmm"):
        raise ValueError(f"verdict_method must be 'bootstrap' or 'glmm', got {method!r}")
    data, _ = clean_answers(answers)
    present = set(data["group"])
    todo = [c for c in contrasts if c.group in present and c.versus in present]
    fit = None
    if method == "glmm" and todo:
        fit = fit_answer_glmm(data, sorted({g for c in todo for g in (c.group, c.versus)}))
    rows: list[dict[str, Any]] = []
    for c in contrasts:
        blocks = contrast_blocks(data, c.group, c.versus) if c in todo else []
        if not blocks:
            if c.kind == "claim":  # a paper claim that could not be run says so; absent controls are left out
                rows.append(_answer_row(c, "HOMO", None, {}, method))
            continue
        if fit is not None:
            res = glmm_contrast(fit, c.group, c.versus, level)
        else:
            res = bootstrap_contrast(blocks, n_boot=n_boot, seed=seed, level=level)
        t_ci = replicate_t_interval(blocks, level)
        for ts in [*ordered_unique(pd.Series([b.test_set for b in blocks])), *(["all"] if c.with_all else [])]:
            rows.append(_answer_row(c, ts, res.get(ts), t_ci.get(ts, {}), method))
    return pd.DataFrame(rows, columns=ANSWER_VERDICT_COLUMNS)


def _answer_row(c: Contrast, test_set: str, res: Mapping[str, float] | None, t_ci: Mapping[str, float],
                method: str) -> dict[str, Any]:
    """One verdict row from a contrast result; zero-width intervals never count as support."""
    nan = float("nan")
    paper = float(c.paper.get(test_set, nan))
    base = {"claim": c.claim, "kind": c.kind, "model": "all", "test_set": test_set, "paper": paper,
            "method": method, "note": c.note, "t_lo": t_ci.get("lo", nan), "t_hi": t_ci.get("hi", nan)}
    if res is None:
        return {**base, "ours": nan, "lo": nan, "hi": nan, "se": nan, "mde": nan, "n_replicates": 0,
                "n_questions": 0, "supported": False if c.kind == "claim" else None,
                "reading": f"not run: no paired {c.group}/{c.versus} answers"}
    est, lo, hi, se = res["ours"], res["lo"], res["hi"], res["se"]
    dof = res.get("df", nan)
    # With few degrees of freedom the power calculation uses t quantiles, like the interval.
    mult = float(stats.t.ppf(0.975, dof) + stats.t.ppf(0.80, dof)) if np.isfinite(dof) else Z_MDE
    mde = mult * se if np.isfinite(se) else nan
    width_ok = np.isfinite(lo) and np.isfinite(hi) and hi - lo > 1e-9
    excludes_zero = width_ok and (lo > 0 or hi < 0)
    df_txt = f", {dof:.1f} df" if np.isfinite(dof) else ""
    if res.get("df_replicates", 1) == 0:
        df_txt += ", one replicate per domain: the between-run variance is not estimable and is left out"
    how = (f"{method}, {res['n_replicates']} replicate(s) × {res['n_questions']} question(s){df_txt}; "
           f"MDE {mde:.1f} = {mult:.2f} × SE {se:.2f}")
    interval = f"{est:+.1f} points [{lo:.1f}, {hi:.1f}]"
    if c.kind == "claim":
        supported = bool(width_ok and lo > 0)
        paper_txt = f"paper {paper:+.2f}" if np.isfinite(paper) else "no paper number"
        if not width_ok:
            status = "inconclusive (interval of zero width)"
        elif supported:
            status = "supported"
        elif hi < 0:
            status = "contradicted"
        else:
            status = f"not supported: smaller than {mde:.1f} points, if any (80 % power)"
        reading = f"{status}: {interval} vs {paper_txt} ({how})"
    else:
        supported = None
        status = "differs from zero" if excludes_zero else (
            "no detectable difference" if width_ok else "inconclusive (interval of zero width)")
        if width_ok and not excludes_zero:
            status += f" (smaller than {mde:.1f} points, if any)"
        reading = f"{status}: {interval} ({how})"
    return {**base, "ours": est, "lo": lo, "hi": hi, "se": se, "mde": mde, "n_replicates": res["n_replicates"],
            "n_questions": res["n_questions"], "supported": supported, "reading": reading}


# ----------------------------------------------------------------------------------- power: variance components
def variance_components(blocks: Sequence[_Block]) -> dict[str, float]:
    """Method-of-moments variance components of a paired difference (two-way layout replicate × question per
    block, pooled over blocks): between replicates, between questions, and the residual (one answer pair)."""
    ss = {"replicate": 0.0, "question": 0.0, "residual": 0.0}
    df = dict.fromkeys(ss, 0)
    sizes = []
    for b in blocks:
        d = b.diff
        r, q = d.shape
        grand = d.mean()
        rows, cols = d.mean(axis=1), d.mean(axis=0)
        ss["replicate"] += q * float(((rows - grand) ** 2).sum())
        ss["question"] += r * float(((cols - grand) ** 2).sum())
        ss["residual"] += float(((d - rows[:, None] - cols[None, :] + grand) ** 2).sum())
        df["replicate"] += r - 1
        df["question"] += q - 1
        df["residual"] += (r - 1) * (q - 1)
        sizes.append((r, q))
    nan = float("nan")
    ms = {k: ss[k] / df[k] if df[k] else nan for k in ss}
    r_bar = float(np.mean([s[0] for s in sizes])) if sizes else nan
    q_bar = float(np.mean([s[1] for s in sizes])) if sizes else nan
    resid = ms["residual"]
    if not np.isfinite(resid):  # one replicate: residual and replicate variance cannot be told apart
        resid = ms["question"] if np.isfinite(ms["question"]) else nan
    return {"var_replicate": max(0.0, (ms["replicate"] - resid) / q_bar) if np.isfinite(ms["replicate"]) else nan,
            "var_question": max(0.0, (ms["question"] - resid) / r_bar) if np.isfinite(ms["question"]) else nan,
            "var_residual": resid, "replicates": r_bar, "questions": q_bar, "blocks": len(sizes)}


def predict_mde(
    components: Mapping[str, float], n_domains: int, n_replicates: int, n_questions: int,
    alpha: float = 0.05, power: float = 0.80,
) -> float:
    """Minimum detectable difference (accuracy points) of one contrast on one test set for a planned design.

    Var(estimate) = (var_question / Q + var_replicate / R + var_residual / (Q R)) / K for K domains, each with R
    replicates and Q questions per test set (the two-way random-effects variance of a mean); the MDE is
    (z_{1-alpha/2} + z_power) × its square root. The group size acts only through the measured components.
    """
    for name, v in (("n_domains", n_domains), ("n_replicates", n_replicates), ("n_questions", n_questions)):
        if v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    var = (components["var_question"] / n_questions + components["var_replicate"] / n_replicates
           + components["var_residual"] / (n_questions * n_replicates)) / n_domains
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(100 * z * math.sqrt(var))


def power_table(answers: pd.DataFrame, contrasts: Sequence[Contrast] = CONTRASTS[:3]) -> pd.DataFrame:
    """Measured variance components per contrast and test set, the MDE of the run's own design, and the design
    sizes to plan with (feed a row to predict_mde)."""
    data, _ = clean_answers(answers)
    rows: list[dict[str, Any]] = []
    for c in contrasts:
        blocks = contrast_blocks(data, c.group, c.versus)
        for ts in ordered_unique(pd.Series([b.test_set for b in blocks])):
            sub = [b for b in blocks if b.test_set == ts]
            comp = variance_components(sub)
            n_dom = len({(b.model, b.domain) for b in sub})
            mde = predict_mde(comp, n_dom, max(1, round(comp["replicates"])), max(1, round(comp["questions"])))
            rows.append({"claim": c.claim, "test_set": ts, **comp, "domains": n_dom, "mde_this_design": mde})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- simulated studies
def simulate_answers(
    effects: Mapping[str, float],
    n_domains: int = 2,
    n_replicates: int = 3,
    n_questions: int = 100,
    test_sets: Sequence[str] = ("HOMO",),
    base_logit: float = 0.0,
    sd_question: float = 1.5,
    sd_question_group: float = 0.4,
    sd_replicate: float = 0.2,
    sd_run: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """An answers table with known group effects (logit scale, "incompatible" is 0): question difficulty, a
    question × group interaction, a replicate effect shared by its groups, and one effect per training run."""
    rng = np.random.default_rng(seed)
    groups = {"incompatible": 0.0, **dict(effects)}
    frames = []
    for d in range(n_domains):
        for ts in test_sets:
            u = rng.normal(0, sd_question, n_questions)
            w = {g: rng.normal(0, sd_question_group, n_questions) for g in groups}
            for s in range(n_replicates):
                rep = rng.normal(0, sd_replicate)
                for g, delta in groups.items():
                    p = _expit(base_logit + delta + u + w[g] + rep + rng.normal(0, sd_run))
                    frames.append(pd.DataFrame({
                        "model": "sim", "domain": f"d{d}", "condition": g, "group": g, "ratio": np.nan, "seed": s,
                        "epoch": 3.0, "test_set": ts, "id": np.arange(n_questions),
                        "correct": (rng.uniform(size=n_questions) < p).astype(int), "base_correct": 0}))
    return pd.concat(frames, ignore_index=True)


def simulated_true_difference(
    effect: float, base_logit: float = 0.0, sd_question: float = 1.5, sd_question_group: float = 0.4,
    sd_replicate: float = 0.2, sd_run: float = 0.2,
) -> float:
    """The population accuracy difference (points) that simulate_answers' logit effect implies (Gauss-Hermite)."""
    x, wts = np.polynomial.hermite_e.hermegauss(80)
    sd = math.sqrt(sd_question**2 + sd_question_group**2 + sd_replicate**2 + sd_run**2)
    mean = lambda b: float(np.dot(wts, _expit(b + sd * x)) / wts.sum())  # noqa: E731
    return 100 * (mean(base_logit + effect) - mean(base_logit))


# ------------------------------------------------------------------------------------------ the run's verdict
VERDICT_TABLE_COLUMNS = ["claim", "kind", "model", "test_set", "ours", "lo", "hi", "mde", "t_lo", "t_hi", "se",
                         "n_replicates", "n_questions", "paper", "supported", "method", "reading", "note"]


def study_verdict(
    eval_table: pd.DataFrame,
    answers: pd.DataFrame | None = None,
    partial: pd.DataFrame | None = None,
    method: Literal["bootstrap", "glmm"] = "bootstrap",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """The verdict of a run: group differences (paper claims and control readings) from every scored answer when
    `answers` is given (else the pair-level t interval, said so in each reading), and the correlation claim, each
    with its minimum detectable effect (`mde`, 80 % power, alpha 0.05)."""
    if answers is not None:
        diffs = answer_verdict(answers, method=method, n_boot=n_boot, seed=seed, level=level)
    else:
        diffs = group_differences(eval_table, method="t", level=level)
        diffs["kind"] = "claim"
        diffs["method"] = "pair-level t (no answers.csv)"
        diffs["t_lo"], diffs["t_hi"] = diffs["lo"], diffs["hi"]
        half = (diffs["hi"] - diffs["lo"]) / 2
        tq = diffs["n"].map(lambda n: stats.t.ppf(0.5 + level / 2, n - 1) if n > 1 else np.nan)
        diffs["se"] = half / tq
        diffs["mde"] = Z_MDE * diffs["se"]
        diffs["n_replicates"], diffs["n_questions"] = diffs["n"], np.nan
    part = _partial_frame(eval_table, partial)
    corr = pd.DataFrame([_correlation_row(r, level) for r in part.to_dict("records")], columns=VERDICT_COLUMNS)
    if len(corr):
        n = pd.to_numeric(corr["n"], errors="coerce")
        corr["mde"] = [math.tanh(Z_MDE / math.sqrt(k - 4)) if np.isfinite(k) and k > 4 else np.nan for k in n]
        corr["kind"], corr["method"], corr["n_replicates"] = "claim", "partial Spearman", n
        corr["reading"] = [f"{txt}; smallest r detectable with 80 % power: {m:.2f}" if np.isfinite(m) else txt
                           for txt, m in zip(corr["reading"], corr["mde"], strict=True)]
        if "unit" in part.columns:
            corr["note"] = corr["note"] + "; points: " + part["unit"].astype(str).to_numpy()
    frames = [f.reindex(columns=VERDICT_TABLE_COLUMNS) for f in (diffs, corr) if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=VERDICT_TABLE_COLUMNS)
    return out.astype({"supported": object})
