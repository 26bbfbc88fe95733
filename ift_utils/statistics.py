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
  number of pairs are stated in every ``reading``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


def partial_by_model(
    eval_table: pd.DataFrame,
    per_test_set: bool = True,
    residual_method: Literal["spearman", "pearson"] = "spearman",
) -> pd.DataFrame:
    """Partial Spearman of consistency (100 × rank_corr) with ft_acc given base_acc per model (domains × ratios)."""
    data = with_consistency(eval_table)
    data = data[data["group"].isin(RATIO_GROUPS)]
    keys = ["model", "test_set"] if per_test_set else ["model"]
    rows: list[dict[str, Any]] = []
    for key, sub in data.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        res = partial_spearman(sub, "consistency", "ft_acc", "base_acc", residual_method=residual_method)
        row = dict(zip(keys, key, strict=True))
        row.setdefault("test_set", "pooled")
        rows.append({**row, **res})
    frame = pd.DataFrame(rows, columns=["model", "test_set", "r", "p", "n"])
    return _sort_test_sets(frame, ["model"])


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
    supported = bool(np.isfinite(lo) and lo > 0)
    paper_txt = f"paper {paper:+.2f}" if np.isfinite(paper) else "no paper number"
    if n == 0:
        reading = f"not run: no paired {group}/incompatible results"
    elif not np.isfinite(lo):
        reading = f"inconclusive: {est:+.1f} points from {n} pair(s), no interval vs {paper_txt}"
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
