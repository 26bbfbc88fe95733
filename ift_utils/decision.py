"""The decision rule and its families: one verdict, fixed in advance, decides; every other reading is a
sensitivity analysis that decides nothing.

* **The rule** (``adjust``). The primary contrast (``PRIMARY``: harmonious − incompatible on HOMO, the paper's
  headline) is tested first at alpha. Only if it passes are the other claim rows decided, by Holm at alpha over
  all of them (``p_holm_all`` = ``p_adj``; ``p_holm_claim`` within a claim's test sets is shown, not used). This
  fixed-sequence gate keeps the study-wide error at alpha: under the global null only the primary can open it;
  with the primary false, Holm holds the rest at alpha (``tests/test_decision.py`` checks it on simulated null
  studies). Control rows are descriptive: no test, no ``supported`` value.
* **Which verdict decides** (``decide_by`` in the params: score raw | calibrated, checkpoint convergence |
  early_stop): ``study_verdict`` reads that one, role "decides"; ``sensitivity_verdicts`` gives the others (raw and
  calibrated, the leave-one-out answer prior removed, at both checkpoints), role "sensitivity (decides nothing)".
* **Against the paper** (``paper_test``): per claim row with a paper number, the one-sided test of Δ ≥ Δ_paper
  (the paper's value fixed, its models named in ``paper_model``), Holm-adjusted over that family of rows; the
  reading (``vs_paper``) comes from ``readings.paper_reading``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from .contrasts import (
    ALPHA,
    CLAIM_CONTEXTUALIZED,
    CLAIM_HARMONIOUS,
    CLAIM_REPRODUCTION,
    CLAIM_SELF_ALIGNING,
    CONTRASTS,
    PAPER_CONTEXTUALIZED_PER_MODEL,
    PRIMARY,
    VERDICT_COLUMNS,
    Z_MDE,
    Contrast,
    answer_verdict,
    pair_t_contrast,
    verdict_row,
)
from .correlation import (
    CLAIM_CONSISTENCY,
    PAPER_PARTIAL_R,
    PARTIAL_NOTE,
    consistency_test,
    partial_by_model,
)
from .readings import fmt_p, paper_reading, read_row

_fmt_p = fmt_p

SCORES = {"raw": "correct", "calibrated": "correct_cal", "loo": "correct_loo"}  # score name -> answers column
SCORE_NAMES = {"raw": "raw", "calibrated": "calibrated (content-free PMI)",
               "loo": "leave-one-out answer prior removed"}
CHECKPOINTS = {"convergence": "final", "early_stop": "early_stop"}  # checkpoint -> answers/eval column
DECIDES = "decides"
SENSITIVITY = "sensitivity (decides nothing)"
PAPER_MODELS = {  # the models behind each paper number (docs/design.md §1)
    CLAIM_HARMONIOUS: "7B-13B models (LLaMA-2-7B/13B, Mistral-7B)",
    CLAIM_SELF_ALIGNING: "7B-13B models (LLaMA-2-7B/13B, Mistral-7B)",
    CLAIM_CONTEXTUALIZED: "mean of " + ", ".join(PAPER_CONTEXTUALIZED_PER_MODEL),
    CLAIM_CONSISTENCY: "Mistral-7B, LLaMA-2-13B (low end)",
}


# ----------------------------------------------------------------------------------------------- multiplicity
def holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p-values of the finite entries of `p` (NaN stays NaN): the i-th smallest of m times
    (m - i + 1), made non-decreasing in that order, at most 1; statsmodels' `multipletests(method="holm")` gives
    the same values but runs a full garbage collection on every call (0.17 s each in a notebook kernel)."""
    out = pd.Series(np.nan, index=p.index, dtype=float)
    ok = p.notna() & np.isfinite(p.astype(float))
    if ok.any():
        values = p[ok].astype(float).to_numpy()
        order = np.argsort(values, kind="stable")
        m = len(values)
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(np.maximum.accumulate(values[order] * np.arange(m, 0, -1)), 1.0)
        out[ok] = adjusted
    return out


def holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p of each row of `p` (studies × hypotheses, NaN = not tested), vectorized over studies: the
    same values as `holm` row by row."""
    p = np.atleast_2d(np.asarray(p, dtype=float))
    m = np.isfinite(p).sum(axis=1, keepdims=True)
    order = np.argsort(np.where(np.isfinite(p), p, np.inf), axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    factor = m - np.arange(p.shape[1])[None, :]
    adj = np.minimum(np.fmax.accumulate(np.where(np.isfinite(ranked), ranked * factor, np.nan), axis=1), 1.0)
    out = np.full_like(p, np.nan)
    np.put_along_axis(out, order, adj, axis=1)
    return np.where(np.isfinite(p), out, np.nan)


def gated_rejections(p_primary: np.ndarray, p_others: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The decision rule on many studies at once: (studies × (1 + others)) booleans, the primary rejected at
    alpha, each other row rejected when the primary was and its Holm-adjusted p (over the others) is below alpha."""
    p_primary = np.asarray(p_primary, dtype=float).reshape(-1, 1)
    gate = np.isfinite(p_primary) & (p_primary < alpha)
    others = holm_rows(p_others) < alpha
    return np.concatenate([gate, gate & others], axis=1)


def adjust(frame: pd.DataFrame, primary: tuple[str, str] = PRIMARY, alpha: float = ALPHA) -> pd.DataFrame:
    """The decision rule: the primary row at alpha first; if it passes, Holm at alpha over every other claim row
    (``p_holm_all`` = ``p_adj``), else none of them is decided; readings from each row's interval; then the test
    against the paper's effect (``paper_test``)."""
    out = frame.copy()
    is_claim = out["kind"].eq("claim")
    is_primary = is_claim & out["claim"].eq(primary[0]) & out["test_set"].eq(primary[1])
    family = is_claim & ~is_primary
    out["p_holm_claim"] = np.nan
    for _, idx in out[family].groupby("claim").groups.items():
        out.loc[idx, "p_holm_claim"] = holm(out.loc[idx, "p"])
    out["p_holm_all"] = np.nan
    out.loc[family, "p_holm_all"] = holm(out.loc[family, "p"])
    out["p_adj"] = np.where(is_primary, out["p"], out["p_holm_all"])
    p_primary = out.loc[is_primary, "p"].astype(float)
    gate_open = bool(len(p_primary)) and bool(np.isfinite(p_primary.iloc[0])) and float(p_primary.iloc[0]) < alpha
    n_family = int((family & out["p"].notna()).sum())
    decisions, supported, readings = [], [], []
    for row, prim in zip(out.to_dict("records"), is_primary, strict=True):
        d, s, text = read_row(row, bool(prim), n_family, alpha, gate_open)
        decisions.append(d)
        supported.append(s)
        readings.append(text)
    out["decision"], out["supported"], out["reading"] = decisions, supported, readings
    out["gate"] = np.where(is_claim & ~is_primary, "open" if gate_open else "closed", "")
    out = paper_test(out, alpha)
    return out.drop(columns=["_detail"], errors="ignore").astype({"supported": object})


def paper_test(frame: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Per claim row with a paper number: the one-sided p of H0 Δ ≥ Δ_paper (t with the row's df; claim 4: Fisher z
    with the SE its interval implies), Holm-adjusted over these rows, the paper's models, and the reading."""
    out = frame.copy()
    p = []
    for row in out.to_dict("records"):
        paper, est = float(row.get("paper", np.nan)), float(row["ours"])
        lo, hi = float(row.get("lo", np.nan)), float(row.get("hi", np.nan))
        if row["kind"] != "claim" or not (np.isfinite(paper) and np.isfinite(est) and np.isfinite(lo)):
            p.append(np.nan)
            continue
        if row["claim"] == CLAIM_CONSISTENCY:
            z_lo, z_hi = np.arctanh(np.clip([lo, hi], -0.999999, 0.999999))
            se = (z_hi - z_lo) / (2 * stats.norm.ppf(0.975))
            p.append(float(stats.norm.cdf((np.arctanh(np.clip(est, -0.999999, 0.999999)) - np.arctanh(paper)) / se))
                     if se > 0 else np.nan)
        else:
            se, dof = float(row.get("se", np.nan)), float(row.get("df", np.nan))
            p.append(float(stats.t.cdf((est - paper) / se, dof)) if se > 0 and np.isfinite(dof) else np.nan)
    out["p_vs_paper"] = p
    out["p_vs_paper_holm"] = holm(out["p_vs_paper"])
    out["paper_model"] = [PAPER_MODELS.get(c, "") if k == "claim" else "" for c, k in zip(out["claim"], out["kind"],
                                                                                           strict=True)]
    pairs = [paper_reading(row, alpha) for row in out.to_dict("records")]
    out["vs_paper"], out["reading_vs_paper"] = [a for a, _ in pairs], [b for _, b in pairs]
    return out


# ------------------------------------------------------------------------------------------ the run's verdict
def correlation_rows(eval_table: pd.DataFrame, partial: pd.DataFrame | None = None, level: float = 0.95,
                     reference: Literal["probe", "no_ift"] = "probe") -> pd.DataFrame:
    """Claim 4's rows: the test (partial rank correlation | domain, condition, consistency against `reference`)
    and the paper's partial Spearman as the reproduction row."""
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    test = consistency_test(eval_table, reference=reference, level=level) if len(eval_table) else pd.DataFrame()
    ref_txt = "the k-shot base probe" if reference == "probe" else "the no_ift control"
    for rec in test.to_dict("records"):
        dof = rec["df"]
        mde = math.tanh(Z_MDE / math.sqrt(dof - 1)) if np.isfinite(dof) and dof > 1 else nan
        detail = (f"partial rank correlation given {rec['covariates']} ({rec['k']} covariate columns), "
                  f"n = {rec['n']}, {dof:.0f} df; consistency against {ref_txt}")
        if np.isfinite(mde):
            detail += f"; smallest r detectable with 80 % power {mde:.2f}"
        degenerate = "" if np.isfinite(rec["r"]) else "too few cells or no variation"
        rows.append({"claim": CLAIM_CONSISTENCY, "kind": "claim", "model": rec["model"], "test_set": rec["test_set"],
                     "score": "correct", "ours": rec["r"], "lo": rec["lo"], "hi": rec["hi"], "p": rec["p"],
                     "mde": mde, "se": nan, "df": dof, "n_replicates": rec["n"], "n_questions": nan,
                     "paper": PAPER_PARTIAL_R[0], "method": f"partial rank correlation | {rec['covariates']}",
                     "note": f"{PARTIAL_NOTE}; points: {rec['unit']}", "reading": degenerate, "_detail": detail})
    part = partial if partial is not None else (partial_by_model(eval_table) if len(eval_table) else pd.DataFrame())
    for rec in part.to_dict("records"):
        rows.append({"claim": CLAIM_REPRODUCTION, "kind": "reproduction", "model": rec.get("model", "all"),
                     "test_set": rec.get("test_set", "pooled"), "score": "correct", "ours": rec["r"], "lo": nan,
                     "hi": nan, "p": rec["p"], "mde": nan, "se": nan, "df": nan, "n_replicates": rec.get("n", nan),
                     "n_questions": nan, "paper": PAPER_PARTIAL_R[0], "method": "partial Spearman | base accuracy",
                     "note": "paper's statistic; controls only for domain here (base accuracy is one number per "
                             "domain and test set)", "reading": "", "_detail": ""})
    return pd.DataFrame(rows)


def at_checkpoint(frame: pd.DataFrame, checkpoint: str) -> pd.DataFrame:
    """Rows of one checkpoint ("convergence": each cell's final weights; "early_stop": its best held-out
    checkpoint), relabelled so that each cell has one epoch; a frame without the marks is returned as is."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    col = CHECKPOINTS[checkpoint]
    if col not in frame.columns:
        return frame
    return frame[frame[col].astype(bool)].assign(epoch=0.0).reset_index(drop=True)


def study_verdict(
    eval_table: pd.DataFrame,
    answers: pd.DataFrame | None = None,
    partial: pd.DataFrame | None = None,
    method: Literal["bootstrap", "glmm"] = "bootstrap",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    score: str = "correct",
    primary: tuple[str, str] = PRIMARY,
    consistency_reference: Literal["probe", "no_ift"] = "probe",
    decide_by: Mapping[str, str] | Any | None = None,
    role: str = DECIDES,
) -> pd.DataFrame:
    """The verdict of a run: claims 1-3 and the controls from every scored answer, or, without answers, from the
    paired t over replicates; claim 4's test and its reproduction row; the decision rule and the test against the
    paper. `decide_by` (the params' ``decide_by``: score raw|calibrated, checkpoint convergence|early_stop) picks
    the answers' score and checkpoint; without it, `score` at each cell's final epoch."""
    checkpoint = "final epoch"
    if decide_by is not None:
        rule = dict(decide_by) if isinstance(decide_by, Mapping) else decide_by.model_dump()
        score = SCORES[rule.get("score", "raw")]
        checkpoint = rule.get("checkpoint", "convergence")
        eval_table = at_checkpoint(eval_table, checkpoint)
        answers = at_checkpoint(answers, checkpoint) if answers is not None else None
    if answers is not None:
        diffs = answer_verdict(answers, method=method, n_boot=n_boot, seed=seed, level=level, score=score)
    else:
        rows = []
        for c in CONTRASTS:
            res = pair_t_contrast(eval_table, c, level)
            for ts in [t for t in res if t != "all" or c.with_all]:
                rows.append(verdict_row(c, ts, res[ts], res[ts], "pair-level t (no answers table)", score=score))
        diffs = pd.DataFrame(rows)
    corr = correlation_rows(eval_table, partial, level, consistency_reference)
    frames = [f for f in (diffs, corr) if len(f)]
    if not frames:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    out = adjust(pd.concat(frames, ignore_index=True), primary).assign(checkpoint=checkpoint, role=role)
    if decide_by is not None:  # name the scoring as the params do (claim 4 always reads raw accuracy)
        corr = out["claim"].isin([CLAIM_CONSISTENCY, CLAIM_REPRODUCTION])
        out.loc[~corr, "score"] = SCORE_NAMES[rule.get("score", "raw")]
        out.loc[corr, "score"] = SCORE_NAMES["raw"]
    return out.reindex(columns=VERDICT_COLUMNS).astype({"supported": object})


def sensitivity_verdicts(eval_table: pd.DataFrame, answers: pd.DataFrame | None, decide_by: Mapping[str, str] | Any,
                         method: Literal["bootstrap", "glmm"] = "bootstrap", n_boot: int = 2000,
                         seed: int = 0) -> pd.DataFrame:
    """Every reading beside the deciding one, long (one block per score × checkpoint), each with its own decision
    rule applied but role "sensitivity (decides nothing)"; the deciding one is included with role "decides"."""
    if answers is None:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    rule = dict(decide_by) if isinstance(decide_by, Mapping) else decide_by.model_dump()
    frames = []
    checkpoints = [c for c in CHECKPOINTS if CHECKPOINTS[c] in answers.columns] or ["convergence"]
    for checkpoint in checkpoints:
        for name, col in SCORES.items():
            if col not in answers.columns or answers[col].isna().all():
                continue
            decides = name == rule.get("score", "raw") and checkpoint == rule.get("checkpoint", "convergence")
            v = study_verdict(eval_table, answers, None, method=method, n_boot=n_boot, seed=seed,
                              decide_by={"score": name, "checkpoint": checkpoint},
                              role=DECIDES if decides else SENSITIVITY)
            frames.append(v.assign(reading_of=f"{SCORE_NAMES[name]}, {checkpoint}"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=VERDICT_COLUMNS)


def sensitivity_wide(long: pd.DataFrame) -> pd.DataFrame:
    """The claim rows of `sensitivity_verdicts` side by side: estimate, interval and decision per score ×
    checkpoint, the deciding reading first."""
    claims = long[long["kind"] == "claim"] if len(long) else long
    if claims.empty:
        return pd.DataFrame()
    keys = ["claim", "test_set"]
    wide = None
    order = claims.assign(first=claims["role"].ne(DECIDES)).sort_values("first", kind="stable")
    for (reading_of, role), v in order.groupby(["reading_of", "role"], sort=False):
        tag = reading_of + (", decides" if role == DECIDES else "")
        part = v[[*keys, "ours", "lo", "hi", "decision"]].rename(
            columns={c: f"{c} ({tag})" for c in ("ours", "lo", "hi", "decision")})
        wide = part if wide is None else wide.merge(part, on=keys, how="outer")
    return wide


# ------------------------------------------------------------------------------------------- equal fit
FIT_KEYS = ["model", "domain", "condition", "group", "seed", "epoch"]


def equal_fit_epochs(train_fit: pd.DataFrame, group: str, versus: str,
                     available: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per replicate, the checkpoint (epoch) at which `group` and `versus` fit their own training facts most alike
    (ties: the later one), among the epochs both have; `available` (model, domain, group, seed, epoch) limits the
    choice to checkpoints that were scored."""
    fit = train_fit[train_fit["group"].isin([group, versus])].dropna(subset=["fit"])
    if available is not None:
        fit = fit.merge(available.drop_duplicates(), on=["model", "domain", "group", "seed", "epoch"])
    wide = fit.pivot_table(index=["model", "domain", "seed", "epoch"], columns="group", values="fit",
                           aggfunc="mean").dropna()
    cols = ["model", "domain", "seed", "epoch", "fit_group", "fit_versus", "gap", "epochs"]
    if wide.empty or group not in wide.columns or versus not in wide.columns:
        return pd.DataFrame(columns=cols)
    wide = wide.reset_index().assign(gap=lambda f: (f[group] - f[versus]).abs())
    wide = wide.rename(columns={group: "fit_group", versus: "fit_versus"})
    wide["epochs"] = wide.groupby(["model", "domain", "seed"])["epoch"].transform("size")
    best = wide.sort_values(["gap", "epoch"], ascending=[True, False]).groupby(["model", "domain", "seed"]).head(1)
    return best.sort_values(["model", "domain", "seed"])[cols].reset_index(drop=True)


def equal_fit_verdict(answers: pd.DataFrame, train_fit: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95, score: str = "correct",
                      contrasts: Sequence[Contrast] = CONTRASTS[:3]) -> pd.DataFrame:
    """Each claim contrast read at the checkpoint where its two groups are fitted alike (descriptive rows beside
    the final-model verdict); empty when no cell kept more than one checkpoint."""
    cells = answers[answers["group"] != "no_ift"] if "epoch" in answers.columns else answers.iloc[0:0]
    per_cell = cells.groupby(["model", "domain", "condition", "seed"])["epoch"].nunique()
    if per_cell.empty or per_cell.max() < 2:
        return pd.DataFrame(columns=[*VERDICT_COLUMNS, "fit_group", "fit_versus"])
    scored = answers[["model", "domain", "group", "seed", "epoch"]].drop_duplicates()
    frames = []
    for c in contrasts:
        chosen = equal_fit_epochs(train_fit, c.group, c.versus, scored)
        if chosen.empty or (chosen["epochs"] < 2).all():
            continue
        pick = chosen[["model", "domain", "seed", "epoch"]]
        sub = answers[answers["group"].isin([c.group, c.versus])].merge(pick, on=["model", "domain", "seed", "epoch"])
        sub = sub.assign(epoch=0.0)
        if sub.empty:
            continue
        rows = answer_verdict(sub, n_boot=n_boot, seed=seed, level=level, contrasts=[c], score=score)
        rows = rows.assign(kind="equal fit", fit_group=float(chosen["fit_group"].mean()),
                           fit_versus=float(chosen["fit_versus"].mean()))
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=[*VERDICT_COLUMNS, "fit_group", "fit_versus"])
    out = pd.concat(frames, ignore_index=True)
    out["reading"] = [f"at equal fit ({fa:.2f} vs {fb:.2f} of own facts fitted): {est:+.1f} points "
                      f"[{lo:.1f}, {hi:.1f}], p = {_fmt_p(p)} (descriptive)" if np.isfinite(lo) else
                      f"at equal fit ({fa:.2f} vs {fb:.2f}): {est:+.1f} points; not estimable"
                      for fa, fb, est, lo, hi, p in zip(out["fit_group"], out["fit_versus"], out["ours"], out["lo"],
                                                        out["hi"], out["p"], strict=True)]
    return out.drop(columns=["_detail"], errors="ignore")

