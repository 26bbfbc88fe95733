"""Claim 4 (consistency predicts accuracy), the paper's Fig. 3 regression, the consistency tables, and the table
helpers every statistics module shares (this module imports no other statistics module: arrows point down).

* **The paper's statistic** (docs/design.md §1.5; the original ``eval/analyse/partial_correlation.py``): rank x, y and the
  covariate (average ranks for ties), OLS-regress the x-rank and the y-rank on the covariate rank with a constant,
  then correlate the residuals with Spearman (``residual_method="spearman"``, p from ``scipy.stats.spearmanr``,
  n - 2 df) or Pearson (the textbook partial correlation, n - 3 df). Here the covariate, base accuracy, is one
  number per domain and test set, so "controlling for base accuracy" controls only for the domain: the verdict
  keeps it as the *reproduction* row and does not test claim 4 with it.
* **The test of claim 4** (``consistency_test``, ``partial_rank_test``): the partial rank correlation of consistency
  and accuracy with replicate indicators (a replicate is one domain × seed, so this nests the domain) and condition
  indicators as covariates: the ratio drives both consistency and accuracy, so without the condition the correlation
  restates the group difference, and the three cells of a replicate share facts and test questions, so without the
  replicate its points are not independent (measured: with domain instead of replicate indicators the null rejects
  7.7 % of 1,000 simulated studies; with replicate indicators 5.6 %). Pearson correlation of the rank residuals,
  t test with n - 2 - k df for k covariate columns, a Fisher-z interval with Bonett and Wright's (2000,
  Psychometrika 65: 23-28) standard error sqrt((1 + r²/2) / (n - 3 - k)) for Spearman-type correlations (the plain
  1 / sqrt(n - 3 - k) is too narrow at the default study's 12 cells with 5 covariate columns: HOMO's [0.45, 0.99]
  becomes about [0.30, 0.99]).
  With replicates averaged (``unit="mean"``) the covariates are domain and condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

TEST_SET_ORDER = ("HOMO", "ID", "XD", "OOD")
RATIO_GROUPS = ("incompatible", "mixture", "self_aligning")
GROUP_ORDER = ("no_ift", "general_only", "harmonious", "incompatible", "mixture", "self_aligning", "contextualized")

CLAIM_CONSISTENCY = "consistency predicts post-IFT accuracy"
PAPER_PARTIAL_R = (0.78, 0.87)
PARTIAL_NOTE = "paper: partial Spearman r = 0.78-0.87 (p < 0.05) for Mistral-7B and LLaMA-2-13B; `paper` is the low end"

# Consistency references: the k-shot base probe (the paper's) and the no_ift control (same 0-shot format as the
# fine-tuned cells, so format drift is out). Column names in the eval table.
CONSISTENCY_REFS = {"probe": ("kl", "rank_corr"), "no_ift": ("kl_no_ift", "rank_corr_no_ift")}


# ------------------------------------------------------------------------------------------------- helpers
def ordered_unique(values: pd.Series) -> list[Any]:
    """Unique values with HOMO, ID, XD, OOD first (in that order), the rest in order of appearance."""
    seen = list(pd.unique(values.dropna()))
    known = [t for t in TEST_SET_ORDER if t in seen]
    return known + [v for v in seen if v not in known]


def sort_test_sets(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort a frame by keys and then test set in HOMO, ID, XD, OOD order (others after, as they come)."""
    if frame.empty:
        return frame
    order = {t: i for i, t in enumerate(TEST_SET_ORDER)}
    rank = frame["test_set"].map(lambda t: order.get(t, len(order)))
    return frame.assign(_o=rank).sort_values([*keys, "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def final_epoch(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of each cell's last evaluated epoch (a frame without an `epoch` column is returned as is)."""
    if "epoch" not in frame.columns or frame.empty:
        return frame
    cell = [c for c in ("model", "domain", "condition", "seed") if c in frame.columns]
    epoch = pd.to_numeric(frame["epoch"], errors="coerce").fillna(np.inf)  # no epoch: an untrained control
    last = epoch.groupby([frame[c] for c in cell], dropna=False).transform("max")
    return frame.loc[epoch == last].reset_index(drop=True)


def with_consistency(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of an eval table with `consistency` = 100 × rank_corr (and `consistency_no_ift` when the
    no_ift-relative rank correlation is there), the paper's consistency scale."""
    out = df.copy()
    if "consistency" not in out.columns:
        out["consistency"] = 100.0 * out["rank_corr"].astype(float)
    if "rank_corr_no_ift" in out.columns and "consistency_no_ift" not in out.columns:
        out["consistency_no_ift"] = 100.0 * out["rank_corr_no_ift"].astype(float)
    return out


# -------------------------------------------------------------------------------------- partial correlations
def partial_spearman(
    df: pd.DataFrame, x: str, y: str, covar: str, residual_method: Literal["spearman", "pearson"] = "spearman",
) -> dict[str, float | int]:
    """The paper's partial Spearman of x and y given one covariate (rank, regress on its rank, correlate
    residuals), kept to reproduce the paper's number."""
    data = df[[x, y, covar]].astype(float).dropna()
    n = len(data)
    out: dict[str, float | int] = {"r": float("nan"), "p": float("nan"), "n": n}
    if n < 4:
        return out
    rx, ry, rz = (stats.rankdata(data[c].to_numpy(), method="average") for c in (x, y, covar))
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
        p = _t_p(r, n - 3)
    else:
        raise ValueError(f"residual_method must be 'spearman' or 'pearson', got {residual_method!r}")
    out.update(r=r, p=p)
    return out


def _t_p(r: float, dof: int) -> float:
    """Two-sided p of a correlation r from a t distribution with dof degrees of freedom."""
    if dof < 1 or not np.isfinite(r):
        return float("nan")
    if abs(r) >= 1.0:
        return 0.0
    return float(2.0 * stats.t.sf(abs(r * math.sqrt(dof / (1.0 - r * r))), dof))


MIN_TEST_DF = 3  # fewer residual degrees of freedom: r is reported, the test is not estimable


def partial_rank_test(
    df: pd.DataFrame, x: str, y: str, covariates: Sequence[str] = ("domain", "condition"), level: float = 0.95,
) -> dict[str, Any]:
    """Partial rank correlation of x and y with categorical covariates (indicators), its t-test p with
    n - 2 - k df and a Fisher-z interval: claim 4 controlling what it says it controls."""
    cols = [x, y, *covariates]
    data = df[cols].dropna().reset_index(drop=True)
    n = len(data)
    nan = float("nan")
    out: dict[str, Any] = {"r": nan, "p": nan, "lo": nan, "hi": nan, "n": n, "df": nan, "k": 0}
    if n < 3:  # a test set without scored cells (or too few): nothing to correlate
        return out
    dummies = [pd.get_dummies(data[c].astype(str), drop_first=True, dtype=float) for c in covariates]
    design = pd.concat([pd.Series(1.0, index=data.index, name="const"), *dummies], axis=1).to_numpy(float)
    k = int(np.linalg.matrix_rank(design)) - 1  # covariate columns beyond the constant
    dof = n - 2 - k
    out.update(k=k, df=float(dof))
    if dof < 1:
        return out
    rx = stats.rankdata(data[x].astype(float).to_numpy(), method="average")
    ry = stats.rankdata(data[y].astype(float).to_numpy(), method="average")
    res_x = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
    res_y = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
    if np.allclose(res_x, 0.0) or np.allclose(res_y, 0.0):
        return out
    r = float(np.clip(np.corrcoef(res_x, res_y)[0, 1], -1.0, 1.0))
    out.update(r=r)
    if dof < MIN_TEST_DF:  # with 1-2 residual df a rank correlation of ±1 is the rule, not evidence
        return out
    out.update(p=_t_p(r, dof))
    if dof > 1 and abs(r) < 1:  # Fisher z with Bonett & Wright's (2000) variance (1 + r²/2) / (n - 3 - k)
        half = stats.norm.ppf(0.5 + level / 2.0) * math.sqrt((1 + r * r / 2) / (dof - 1))
        out.update(lo=math.tanh(math.atanh(r) - half), hi=math.tanh(math.atanh(r) + half))
    return out


PARTIAL_UNITS = {
    "replicate": "one point per domain × replicate × ratio condition",
    "mean": "one point per domain × ratio condition: replicates of the same data averaged",
}


def _ratio_cells(eval_table: pd.DataFrame, unit: str) -> pd.DataFrame:
    """The final ratio cells of an eval table (controls, harmonious and contextualized never count)."""
    if unit not in PARTIAL_UNITS:
        raise ValueError(f"unit must be one of {sorted(PARTIAL_UNITS)}, got {unit!r}")
    data = with_consistency(final_epoch(eval_table))
    data = data[data["group"].isin(RATIO_GROUPS)]
    if unit == "mean" and len(data):
        cols = [c for c in ("consistency", "consistency_no_ift", "ft_acc", "base_acc") if c in data.columns]
        data = data.groupby(["model", "domain", "condition", "test_set"], as_index=False, sort=False)[cols].mean()
    return data


def partial_by_model(
    eval_table: pd.DataFrame,
    per_test_set: bool = True,
    residual_method: Literal["spearman", "pearson"] = "spearman",
    unit: Literal["replicate", "mean"] = "replicate",
) -> pd.DataFrame:
    """The paper's partial Spearman of consistency with ft_acc given base_acc per model (and test set), pooled
    over domains × ratio conditions; `unit` says what a point is ("mean" averages replicates that share data)."""
    data = _ratio_cells(eval_table, unit)
    keys = ["model", "test_set"] if per_test_set else ["model"]
    rows: list[dict[str, Any]] = []
    for key, sub in data.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        res = partial_spearman(sub, "consistency", "ft_acc", "base_acc", residual_method=residual_method)
        row = dict(zip(keys, key, strict=True))
        row.setdefault("test_set", "pooled")
        rows.append({**row, **res, "unit": PARTIAL_UNITS[unit]})
    frame = pd.DataFrame(rows, columns=["model", "test_set", "r", "p", "n", "unit"])
    return sort_test_sets(frame, ["model"])


def consistency_test(
    eval_table: pd.DataFrame, reference: Literal["probe", "no_ift"] = "probe",
    unit: Literal["replicate", "mean"] = "replicate", level: float = 0.95,
) -> pd.DataFrame:
    """Claim 4's test per model and test set: partial rank correlation of consistency (against `reference`) with
    ft_acc, replicate and condition as covariates (see the module docstring)."""
    data = _ratio_cells(eval_table, unit)
    if unit == "replicate" and len(data):
        data = data.assign(replicate=data["domain"].astype(str) + "|" + data["seed"].astype(str))
    covariates = ("replicate", "condition") if unit == "replicate" else ("domain", "condition")
    x = "consistency" if reference == "probe" else "consistency_no_ift"
    cols = ["model", "test_set", "r", "lo", "hi", "p", "n", "df", "k", "reference", "covariates", "unit"]
    if x not in data.columns:
        return pd.DataFrame(columns=cols)
    rows = []
    for (model, ts), sub in data.groupby(["model", "test_set"], sort=False):
        res = partial_rank_test(sub, x, "ft_acc", covariates, level)
        rows.append({"model": model, "test_set": ts, **res, "reference": reference,
                     "covariates": " + ".join(covariates), "unit": PARTIAL_UNITS[unit]})
    return sort_test_sets(pd.DataFrame(rows, columns=cols), ["model"])


def consistency_by_group(eval_table: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy, KL and rank correlation per group and test set, against the k-shot probe and (when the eval
    table has them) against no_ift, controls first: how much of the drift is format, general IFT or domain data."""
    data = final_epoch(eval_table)
    aggs: dict[str, tuple[str, str]] = {"ft_acc": ("ft_acc", "mean"), "base_acc": ("base_acc", "mean"),
                                        "kl": ("kl", "mean"), "rank_corr": ("rank_corr", "mean")}
    for col in CONSISTENCY_REFS["no_ift"]:
        if col in data.columns:
            aggs[col] = (col, "mean")
    aggs["cells"] = ("ft_acc", "size")
    out = data.groupby(["group", "test_set"], as_index=False, sort=False).agg(**aggs)
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    ts_order = {t: i for i, t in enumerate(TEST_SET_ORDER)}
    out = out.assign(_g=out["group"].map(lambda g: order.get(g, len(order))),
                     _t=out["test_set"].map(lambda t: ts_order.get(t, len(ts_order))))
    return out.sort_values(["_g", "_t"], kind="stable").drop(columns=["_g", "_t"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ regression
def grouped_regression(df: pd.DataFrame, y: str = "ft_acc", x: str = "consistency", group: str = "test_set") -> Any:
    """OLS of y on x with a separate intercept and slope per group (`y ~ x * C(group)`), the paper's Fig. 3 model."""
    data = with_consistency(df) if x.startswith("consistency") else df
    return smf.ols(f"{y} ~ {x} * C({group})", data=data).fit()


def per_group_fits(
    df: pd.DataFrame, y: str = "ft_acc", x: str = "consistency", group: str = "test_set", level: float = 0.95,
) -> pd.DataFrame:
    """One OLS line per group (slope with its CI, intercept, R², n), used to draw the figure's fitted lines."""
    data = with_consistency(df) if x.startswith("consistency") else df
    rows: list[dict[str, Any]] = []
    for name in ordered_unique(data[group]):
        sub = data.loc[data[group] == name, [x, y]].astype(float).dropna()
        n = len(sub)
        row: dict[str, Any] = {"group": name, "slope": np.nan, "intercept": np.nan, "slope_lo": np.nan,
                               "slope_hi": np.nan, "r2": np.nan, "n": n}
        if n >= 2 and sub[x].nunique() >= 2:
            fit = smf.ols(f"{y} ~ {x}", data=sub).fit()
            row.update(slope=float(fit.params[x]), intercept=float(fit.params["Intercept"]))
            if n >= 3:
                lo, hi = fit.conf_int(alpha=1.0 - level).loc[x]
                row.update(slope_lo=float(lo), slope_hi=float(hi))
                if sub[y].nunique() >= 2:  # R² of a constant outcome is undefined, not -inf
                    row["r2"] = float(fit.rsquared)
        rows.append(row)
    return pd.DataFrame(rows, columns=["group", "slope", "intercept", "slope_lo", "slope_hi", "r2", "n"])


# ------------------------------------------------------------------------------------------ simulated cells
def simulate_cells(
    beta: float = 0.0, n_domains: int = 3, n_replicates: int = 3, conditions: Sequence[float] = (0.0, 0.5, 1.0),
    domain_shift: float = 2.0, condition_effect: float = 1.0, sd: float = 1.0, seed: int = 0,
) -> pd.DataFrame:
    """Eval-table cells for claim 4's null and power checks: domains differ in mean consistency and accuracy, the
    ratio moves both, and inside a domain × condition accuracy depends on consistency only through `beta`."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_domains):
        for s in range(n_replicates):
            rep_x, rep_y = rng.normal(0, 0.5 * sd, 2)
            for r in conditions:
                x = domain_shift * d + condition_effect * r + rep_x + rng.normal(0, sd)
                y = domain_shift * d + condition_effect * r + rep_y + beta * x + rng.normal(0, sd)
                group = "incompatible" if r == 0 else ("self_aligning" if r == 1 else "mixture")
                rows.append({"model": "sim", "domain": f"d{d}", "condition": f"r{r}", "group": group, "ratio": r,
                             "seed": s, "test_set": "HOMO", "rank_corr": x / 100, "ft_acc": y,
                             "base_acc": 0.1 * ((2 * d) % n_domains), "kl": 0.3})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- dose-response of fit
KNOWN_GROUPS = ("harmonious",)  # every fact known, its target the gold the base model already gives
UNKNOWN_GROUPS = ("incompatible", "mixture", "self_aligning", "contextualized")


def fitted_shares(eval_table: pd.DataFrame, train_fit: pd.DataFrame) -> pd.DataFrame:
    """Each evaluated cell × checkpoint with two shares of its own training facts, defined for every group:
    `known_fit`, fitted with a target the base model already gave, and `unknown_fit`, fitted with a target it did
    not give (Gekhman et al. 2024). Harmonious: known_fit = fit, unknown_fit = 0 (its targets are the golds it
    knows). Other groups train on confidently-wrong facts, with the gold (unknown to the model) or the model's own
    answer (known to it) as target: unknown_fit = `gold` (answered with the gold), known_fit = fit − gold (the rest
    of what it fits: own-answer targets); so incompatible has known_fit 0, self-aligning unknown_fit ≈ 0, and a
    mixture both."""
    keys = ["model", "domain", "condition", "group", "seed", "epoch"]
    ev = eval_table[eval_table["group"].isin((*KNOWN_GROUPS, *UNKNOWN_GROUPS))]
    merged = ev.merge(train_fit[[*keys, "fit", "gold"]], on=keys, how="inner")
    known = merged["group"].isin(KNOWN_GROUPS)
    merged["known_fit"] = np.where(known, merged["fit"], (merged["fit"] - merged["gold"]).clip(lower=0.0))
    merged["unknown_fit"] = np.where(known, 0.0, merged["gold"])
    merged["replicate"] = (merged["model"].astype(str) + "|" + merged["domain"].astype(str) + "|"
                           + merged["seed"].astype(str))
    merged["cell"] = merged["replicate"] + "|" + merged["condition"].astype(str)
    return merged


def _inv_sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root of a PSD matrix (Moore-Penrose on its null space)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    inv = np.where(w > 1e-10, 1.0 / np.sqrt(np.clip(w, 1e-300, None)), 0.0)
    return (v * inv) @ v.T


def cr2(x: np.ndarray, y: np.ndarray, cluster: np.ndarray, terms: Sequence[int]) -> dict[int, dict[str, float]]:
    """OLS of y on x with the CR2 cluster-robust variance (Bell & McCaffrey 2002) and, per coefficient in `terms`,
    the Bell-McCaffrey degrees of freedom (Imbens & Kolesár 2016: (Σλ)² / Σλ² of G'G): inference that holds with a
    handful of clusters. Returns {term: coef, se, df}."""
    xtx_inv = np.linalg.pinv(x.T @ x)
    beta = xtx_inv @ x.T @ y
    resid = y - x @ beta
    n = len(y)
    hat = x @ xtx_inv @ x.T
    groups = [np.flatnonzero(cluster == g) for g in pd.unique(cluster)]
    adj = [_inv_sqrt_psd(np.eye(len(i)) - hat[np.ix_(i, i)]) for i in groups]
    meat = np.zeros((x.shape[1], x.shape[1]))
    for i, a in zip(groups, adj, strict=True):
        u = x[i].T @ a @ resid[i]
        meat += np.outer(u, u)
    vcov = xtx_inv @ meat @ xtx_inv
    out = {}
    m = np.eye(n) - hat
    for t in terms:
        c = np.zeros(x.shape[1])
        c[t] = 1.0
        g = np.column_stack([m[:, i] @ a @ x[i] @ xtx_inv @ c for i, a in zip(groups, adj, strict=True)])
        lam = np.linalg.eigvalsh(g.T @ g)
        dof = float(lam.sum() ** 2 / (lam**2).sum()) if (lam**2).sum() > 0 else float("nan")
        out[t] = {"coef": float(beta[t]), "se": float(math.sqrt(max(vcov[t, t], 0.0))), "df": dof}
    return out


DOSE_TERMS = ("known_fit", "unknown_fit")


def dose_response(eval_table: pd.DataFrame, train_fit: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per test set, test accuracy (points) on the fitted shares of known and unknown facts with cell fixed effects
    (a slope comes only from change between checkpoints within a cell; group, domain and replicate are absorbed),
    CR2 standard errors clustered by replicate with Bell-McCaffrey df; a slope with no within-cell variation (e.g.
    one checkpoint per cell, or only harmonious cells moving known_fit) is "not identified", not a number."""
    cols = ["test_set", "term", "coef", "se", "df", "lo", "hi", "p", "cells", "checkpoints", "clusters",
            "cells_varying", "method", "reading"]
    data = fitted_shares(eval_table, train_fit)
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    method = "acc ~ known_fit + unknown_fit + cell fixed effects; CR2 by replicate, Bell-McCaffrey df"
    for ts in ordered_unique(data["test_set"]) if len(data) else []:
        sub = data[data["test_set"] == ts].assign(acc=lambda f: 100 * f["ft_acc"].astype(float)).dropna(
            subset=["acc", *DOSE_TERMS]).reset_index(drop=True)
        per_cell = sub.groupby("cell")["epoch"].nunique()
        base = {"test_set": ts, "cells": int(len(per_cell)), "checkpoints": int(sub["epoch"].nunique()),
                "clusters": int(sub["replicate"].nunique()), "method": method}
        within = sub[list(DOSE_TERMS)] - sub.groupby("cell")[list(DOSE_TERMS)].transform("mean")
        varying = {t: int((within[t].abs() > 1e-9).groupby(sub["cell"]).any().sum()) for t in DOSE_TERMS}
        ok = [t for t in DOSE_TERMS if varying[t] > 0]
        fit = {}
        if ok:
            dummies = pd.get_dummies(sub["cell"], dtype=float).to_numpy()
            x = np.column_stack([sub[ok].to_numpy(float), dummies])
            if np.linalg.matrix_rank(x) == x.shape[1]:
                fit = cr2(x, sub["acc"].to_numpy(float), sub["replicate"].to_numpy(), range(len(ok)))
            else:
                ok = []
        for term in DOSE_TERMS:
            row = {**base, "term": term, "cells_varying": varying[term]}
            if term not in ok:
                why = ("one checkpoint per cell, so the fitted share is fixed within each cell and its effect "
                       "cannot be told from the cell's (group's)" if per_cell.empty or per_cell.max() < 2 else
                       f"{term} does not change between checkpoints within any cell (or moves with the other share)")
                rows.append({**row, "coef": nan, "se": nan, "df": nan, "lo": nan, "hi": nan, "p": nan,
                             "reading": f"not identified: {why}"})
                continue
            r = fit[ok.index(term)]
            dof = r["df"]
            if not (np.isfinite(dof) and dof > 0 and r["se"] > 0):
                rows.append({**row, "coef": r["coef"], "se": r["se"], "df": dof, "lo": nan, "hi": nan, "p": nan,
                             "reading": f"{r['coef']:+.1f} points per 100 % fitted; no interval (no variance "
                                        f"across {base['clusters']} clusters)"})
                continue
            half = float(stats.t.ppf(0.5 + level / 2, dof)) * r["se"]
            p = float(2 * stats.t.sf(abs(r["coef"]) / r["se"], dof))
            rows.append({**row, "coef": r["coef"], "se": r["se"], "df": dof, "lo": r["coef"] - half,
                         "hi": r["coef"] + half, "p": p,
                         "reading": f"{r['coef']:+.1f} points per 100 % fitted [{r['coef'] - half:.1f}, "
                                    f"{r['coef'] + half:.1f}], p = {p:.2g}; within {varying[term]} of "
                                    f"{base['cells']} cells, {base['clusters']} replicate clusters, "
                                    f"{dof:.1f} Bell-McCaffrey df"})
    return pd.DataFrame(rows, columns=cols)
