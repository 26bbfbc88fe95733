"""Sentences that narrate a notebook's output, computed from the run's own tables (notebooks 02, 03, 05).

A notebook shows a table or a figure, then one of these sentences says what to look at and quotes the run's
numbers, so the narrative stays true when the parameters change. Each function takes the frame the notebook just
showed and returns plain text; a frame without the expected columns gives a sentence that says so, never an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

STAGES = ("01_probe", "02_interventions", "03_training", "04_evaluation", "05_analysis")


def duration(seconds: float) -> str:
    """12.3 → '12 s', 754 → '12 min 34 s', 4000 → '1 h 6 min 40 s'."""
    s = round(float(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return (f"{h} h " if h else "") + f"{m} min {sec} s"


def stage_times(run_dir: str | Path, stage: str) -> str:
    """What the run folder's `manifest.json` says about the stages' times: each finished stage's seconds, and this
    stage's state (running now, or its time when it last finished). No hard-coded estimates: a notebook prints this
    instead of guessing how long it takes."""
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return (f"No manifest.json in {run_dir}: this notebook runs outside the runner (`python -m ift_utils.run`), "
                "which is what records each stage's time.")
    try:
        stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {})
    except (OSError, ValueError):
        return f"{path} is unreadable: no stage times to show."
    done = [f"{s} {duration(r['seconds'])}" for s in STAGES if s != stage
            for r in [stages.get(s, {})] if r.get("status") == "done" and "seconds" in r]
    rec = stages.get(stage, {})
    if rec.get("status") == "running":
        own = f"{stage} is running now (started {rec.get('start', '?')}); its time is written there when it ends"
    elif rec.get("status") == "done" and "seconds" in rec:
        own = f"{stage} took {duration(rec['seconds'])} when it last finished"
    else:
        own = f"{stage} has no recorded time yet"
    before = ("finished stages: " + ", ".join(done)) if done else "no other stage has finished in this folder"
    return f"Times from {path.name}: {before}; {own}."


def _num(x: Any, fmt: str = ".2f") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else format(v, fmt)


def fit_reading(fit_curve: pd.DataFrame, fit_target: float | None) -> str:
    """Notebook 03: per group (mean over its cells), the first epoch at which the mean fit reached the target, the
    last epoch's fit, and the epoch of the best held-out accuracy."""
    need = {"group", "epoch", "fit"}
    if fit_curve is None or fit_curve.empty or not need <= set(fit_curve.columns):
        return "No fit was recorded (fixed dose, or no cell trained): nothing to read here."
    target = fit_target or 1.0
    mean = fit_curve.groupby(["group", "epoch"], as_index=False).mean(numeric_only=True).sort_values("epoch")
    bits = []
    for group, g in mean.groupby("group", sort=False):
        reached = g[g["fit"] >= target]
        when = f"reached {target:g} at epoch {int(reached['epoch'].iloc[0])}" if len(reached) else \
            f"stayed below {target:g}"
        last = g.iloc[-1]
        best = ""
        if "dev_acc" in g and g["dev_acc"].notna().any():
            best = f", held-out accuracy best at epoch {int(g.loc[g['dev_acc'].idxmax(), 'epoch'])}"
        bits.append(f"{group} {when} (fit {_num(last['fit'])} after {int(last['epoch'])} epoch(s){best})")
    return ("Mean over cells: " + "; ".join(bits) + ". Agreeing groups should need fewer epochs than incompatible; "
            "a held-out peak before the facts are fitted is why early stop and convergence can differ.")


def leak_reading(expl: pd.DataFrame) -> str:
    """Notebook 02: the leak counts, and what they should be (0 for template explanations, where a leak stops the
    stage; model explanations are counted, not removed)."""
    cols = ("leaking", "leaking_fact", "n")
    if expl is None or expl.empty or not set(cols) <= set(expl.columns):
        return "No explanation card with leak counts: nothing to read here."
    leak, fact, n = (int(expl[c].fillna(0).sum()) for c in cols)
    tmpl = sum(int(expl[c].fillna(0).sum()) for c in ("leaking_template", "leaking_fact_template") if c in expl)
    verdict = ("none, as it should be" if leak == 0 and fact == 0 else
               "all from model-written explanations, counted and kept (templates leaked none)" if tmpl == 0 else
               f"{tmpl} from templates, which should have stopped the stage")
    return (f"Over {n} group examples: {leak} explanation(s) state another test question's gold answer and {fact} "
            f"name a test entity with its answer: {verdict}. Both counts should be 0 with `explanations: template`.")


def regression_reading(reg: Any, x: str = "consistency", group: str = "test_set") -> str:
    """Notebook 05: the slope of accuracy on consistency per test set from `correlation.grouped_regression`
    (`ft_acc ~ x * C(group)`, treatment coding: the first level alphabetically is the reference)."""
    params = getattr(reg, "params", None)
    if params is None or x not in params:
        return "The regression did not fit: nothing to read here."
    pvals = getattr(reg, "pvalues", pd.Series(dtype=float))
    levels = sorted({k.split("[T.")[1].rstrip("]") for k in params.index if k.startswith(f"C({group})[T.")})
    data = getattr(getattr(reg, "model", None), "data", None)
    frame = getattr(data, "frame", None)
    ref = None
    if frame is not None and group in frame:
        ref = next((str(v) for v in sorted(map(str, frame[group].unique())) if v not in levels), None)
    slopes = [(ref or "reference", params[x], pvals.get(x, math.nan))]
    for lv in levels:
        term = f"{x}:C({group})[T.{lv}]"
        slopes.append((lv, params[x] + params.get(term, 0.0), pvals.get(term, math.nan)))
    text = ", ".join(f"{ts} {s * 1000:+.1f}" for ts, s, _ in slopes)
    return (f"Accuracy points per 10 points of consistency: {text} (the {slopes[0][0]} slope's p = "
            f"{_num(slopes[0][2], '.2g')}; the other rows' p are for their difference from it). A positive slope "
            "means the models that kept the base model's preferences answer better, as in the paper's Fig. 3.")


def consistency_reading(consistency: pd.DataFrame) -> str:
    """Notebook 05: rank correlation with the k-shot probe, mean over test sets, for no_ift (format alone),
    general_only (plus general IFT) and the domain groups."""
    if consistency is None or consistency.empty or not {"group", "rank_corr"} <= set(consistency.columns):
        return "No consistency table: nothing to read here."
    mean = consistency.groupby("group", sort=False)["rank_corr"].mean()
    parts = [f"{g} {mean[g]:.2f}" for g in mean.index]
    lead = ""
    if "no_ift" in mean:
        lead = (f" The drop from 1 to no_ift's {mean['no_ift']:.2f} is the prompt format alone; what the groups lose "
                "beyond general_only is what their domain data did.")
    return "Rank correlation with the k-shot probe, mean over test sets: " + ", ".join(parts) + "." + lead


def dose_reading(dose: pd.DataFrame, test_set: str = "HOMO") -> str:
    """Notebook 05: the dose-response model's two slopes on one test set."""
    if dose is None or dose.empty or not {"test_set", "term", "reading"} <= set(dose.columns):
        return "No dose-response table: nothing to read here."
    rows = dose[dose["test_set"] == test_set]
    if rows.empty:
        rows = dose[dose["test_set"] == dose["test_set"].iloc[0]]
        test_set = str(rows["test_set"].iloc[0])
    text = "; ".join(f"{r['term']}: {r['reading']}" for _, r in rows.iterrows())
    return (f"On {test_set}: {text}. A negative slope for the unknown (conflicting) facts would be Gekhman et al.'s "
            "cost of fitting them; an interval across 0 means this run cannot tell.")


def claim4_reading(claim4: pd.DataFrame) -> str:
    """Notebook 05: claim 4's partial rank correlation per test set, with its interval and unadjusted p."""
    if claim4 is None or claim4.empty or not {"test_set", "r", "p"} <= set(claim4.columns):
        return "Claim 4 could not be tested (no ratio cells with consistency): nothing to read here."
    bits = []
    for _, r in claim4.iterrows():
        if _num(r["r"]) == "–":
            bits.append(f"{r['test_set']} not testable ({r.get('n', '–')} ratio cells leave no degrees of freedom)")
            continue
        ci = f" [{_num(r.get('lo'))}, {_num(r.get('hi'))}]" if "lo" in claim4 else ""
        bits.append(f"{r['test_set']} r {_num(r['r'])}{ci} (p {_num(r['p'], '.2g')}, n {r.get('n', '–')})")
    return ("Partial rank correlation of consistency with accuracy: " + "; ".join(bits) + ". These p are "
            "unadjusted; the verdict below decides claim 4 on its Holm-adjusted p. The paper reports 0.78-0.87.")


def power_designs(components: Mapping[str, float], designs: Iterable[Iterable[int]],
                  predict: Any) -> pd.DataFrame:
    """The MDE of each planned design (domains, replicates, questions) from one contrast's variance components;
    `predict` is `power.predict_mde`. Questions sharing a gold answer keep this run's `cluster_share` (the same
    unevenness of answers at any size), so more questions do not average the shared answer effect away."""
    share = components.get("cluster_share")
    share = float(share) if share is not None and pd.notna(share) else None
    rows = []
    for k, r, q in designs:
        rows.append({"domains": int(k), "replicates": int(r), "questions": int(q),
                     "mde": float(predict(components, int(k), int(r), int(q), cluster_share=share))})
    return pd.DataFrame(rows, columns=["domains", "replicates", "questions", "mde"])


def power_reading(plan: pd.DataFrame, claim: str, test_set: str = "HOMO", paper: float | None = None) -> str:
    """Notebook 05: the MDE this design gives the primary contrast, beside the paper's effect."""
    if plan is None or plan.empty or not {"claim", "test_set", "mde_this_design"} <= set(plan.columns):
        return "No power table: nothing to read here."
    row = plan[(plan["claim"] == claim) & (plan["test_set"] == test_set)]
    if row.empty or pd.isna(row["mde_this_design"].iloc[0]):
        return (f"{claim} on {test_set}: no MDE for this design (one replicate per domain leaves the between-replicate "
                "variance unmeasured).")
    mde = float(row["mde_this_design"].iloc[0])
    versus = ""
    if paper is not None:
        versus = (f"; the paper's effect is {paper:+.2f}, so this design " +
                  ("could detect it" if mde <= abs(paper) else "is too small to detect it reliably"))
    return f"{claim} on {test_set}: this design detects {mde:.1f} points with 80 % power{versus}."


def paper_test_reading(vs_paper: pd.DataFrame, primary: str) -> str:
    """Notebook 05: how many claim rows read supported / contradicted / smaller than the paper's / inconclusive, and
    the reading of the primary row (claim `primary` on HOMO)."""
    if vs_paper is None or vs_paper.empty or "reading_vs_paper" not in vs_paper.columns:
        return "No test against the paper's effect (no claim rows with a paper value): nothing to read here."
    rows = vs_paper[vs_paper["reading_vs_paper"].fillna("") != ""]
    if rows.empty:
        return "No claim row has a paper value to test against."
    labels = rows["reading_vs_paper"].str.split(":").str[0]
    counts = ", ".join(f"{n} {label}" for label, n in labels.value_counts().items())
    first = rows[(rows["test_set"] == "HOMO") & (rows["claim"] == primary)]
    lead = f"Primary ({primary} on HOMO): {first['reading_vs_paper'].iloc[0]}. " if len(first) else ""
    return f"{lead}Against the paper's effect, {len(rows)} claim rows read: {counts}."
