"""Stage 05, analysis: the helpers notebook 05 calls beyond the statistics modules: the verdict that decides (the
params' ``decide_by``) with its sensitivity readings, the reading against the paper, and the headline sentence."""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from ..decision import DECIDES, SCORE_NAMES, sensitivity_verdicts, sensitivity_wide, study_verdict
from ..verdict import PRIMARY

VERDICT_SHOWN = ["claim", "kind", "test_set", "ours", "lo", "hi", "p", "p_adj", "gate", "mde", "n_clusters",
                 "lo_entity", "hi_entity", "paper", "vs_paper", "decision", "reading"]
PAPER_SHOWN = ["claim", "test_set", "ours", "lo", "hi", "p_adj", "paper", "paper_model", "p_vs_paper",
               "p_vs_paper_holm", "vs_paper", "reading_vs_paper"]


def decide_by_of(P: Any) -> dict[str, str]:
    """The params' decision rule as a plain dict (default: raw scoring at convergence)."""
    rule = getattr(P, "decide_by", None)
    if rule is None:
        return {"score": "raw", "checkpoint": "convergence"}
    return dict(rule) if isinstance(rule, dict) else rule.model_dump()


class Verdicts(NamedTuple):
    """What stage 05's verdict step gives: the deciding verdict and every table beside it."""

    result: pd.DataFrame  # the verdict that decides (decide_by), every row
    vs_paper: pd.DataFrame  # its claim rows against the paper's effect
    interval_change: pd.DataFrame  # each row's interval with entity-only clusters beside entity + gold answer
    sensitivity: pd.DataFrame  # every scoring × checkpoint, long, with role "decides" or "sensitivity (...)"
    wide: pd.DataFrame  # the same claim rows side by side
    calibrated: pd.DataFrame | None  # the calibrated reading at the deciding checkpoint (the report's *_cal)


def verdicts(P: Any, paths: Any, table: pd.DataFrame, answers: pd.DataFrame | None,
             partial: pd.DataFrame | None = None) -> Verdicts:
    """The deciding verdict (``decide_by``) and every other reading as sensitivity analyses that decide nothing;
    writes tables verdict, verdict_interval_change, verdict_vs_paper, verdict_sensitivity (long) and
    verdict_sensitivity_wide (also under the earlier names verdict_calibrated and verdict_checkpoints)."""
    from ..paths import write_table

    rule = decide_by_of(P)
    result = study_verdict(table, answers, partial, method=P.verdict_method, n_boot=P.n_boot, decide_by=rule)
    write_table(result, paths, "verdict")
    change = interval_change(result)
    write_table(change, paths, "verdict_interval_change")
    vs_paper = result[result["kind"] == "claim"].reindex(columns=PAPER_SHOWN)
    write_table(vs_paper, paths, "verdict_vs_paper")
    long = sensitivity_verdicts(table, answers, rule, method=P.verdict_method, n_boot=P.n_boot)
    write_table(long, paths, "verdict_sensitivity")
    wide = sensitivity_wide(long)
    write_table(wide, paths, "verdict_sensitivity_wide")
    # the names earlier runs wrote: the calibrated reading at the deciding checkpoint, and the readings side by side
    calibrated = None
    if len(long):
        cal = long[long["reading_of"] == f"{SCORE_NAMES['calibrated']}, {rule['checkpoint']}"]
        if len(cal):
            calibrated = cal.reset_index(drop=True)
            write_table(calibrated, paths, "verdict_calibrated")
        write_table(wide, paths, "verdict_checkpoints")
    return Verdicts(result, vs_paper, change, long, wide, calibrated)


def interval_change(verdict: pd.DataFrame) -> pd.DataFrame:
    """Each difference row's interval with question clusters on the entity only (before) and on entity and gold
    answer (now), and how much wider it got: what clustering on the gold answer changed."""
    cols = ["claim", "kind", "test_set", "ours", "lo_entity", "hi_entity", "se_entity", "lo", "hi", "se",
            "n_questions", "n_clusters"]
    if verdict.empty or "se_entity" not in verdict.columns:
        return pd.DataFrame(columns=[*cols, "width_ratio"])
    rows = verdict[verdict["se_entity"].notna()].reindex(columns=cols)
    return rows.assign(width_ratio=(rows["hi"] - rows["lo"]) / (rows["hi_entity"] - rows["lo_entity"]))


def headline(verdict: pd.DataFrame, table: pd.DataFrame) -> str:
    """One plain sentence saying which of the paper's claims this run supports, computed from the verdict's
    tested claim rows (controls and the reproduction row are descriptive and not counted), with the rule that
    decided and the reading against the paper's effect."""
    n_seeds = table.loc[table["seed"] >= 0, "seed"].nunique() if "seed" in table else 0
    n_dom = table["domain"].nunique()
    claims = verdict[verdict["kind"] == "claim"]
    if "role" in claims.columns:
        claims = claims[claims["role"].fillna(DECIDES) == DECIDES]
    parts = []
    for claim, rows in claims.groupby("claim", sort=False):
        dec = rows["decision"].value_counts()
        bits = [f"supported in {int(dec.get('supported', 0))} of {len(rows)} test sets"]
        for other in ("contradicted", "not estimable"):
            if dec.get(other, 0):
                bits.append(f"{other} in {int(dec[other])}")
        if "vs_paper" in rows.columns:
            smaller = rows["vs_paper"].fillna("").str.contains("smaller than the paper's").sum()
            if smaller:
                bits.append(f"smaller than the paper's in {int(smaller)}")
        parts.append(f"{claim}: " + ", ".join(bits))
    primary = claims[(claims["claim"] == PRIMARY[0]) & (claims["test_set"] == PRIMARY[1])]
    lead = ""
    if len(primary):
        row = primary.iloc[0]
        lead = f"Primary contrast ({PRIMARY[0]} on {PRIMARY[1]}): {row['decision']}. "
    how = ""
    if "checkpoint" in claims.columns and "score" in claims.columns and len(claims):
        how = f" Decided by {claims['score'].iloc[0]} scores at {claims['checkpoint'].iloc[0]}."
    return (f"With {_models(table)}, {n_dom} domain(s) (fixed: the inference covers these domains) and "
            f"{n_seeds} replicate(s) per domain: {lead}" + "; ".join(parts) + "."
            + how + " The primary contrast is tested first at alpha 0.05; only if it passes is any other claim row "
            "decided, where its Holm-adjusted p (over all other claim rows) is below 0.05; every other scoring and "
            "checkpoint is a sensitivity analysis that decides nothing.")


def _models(table: pd.DataFrame) -> str:
    """The models of a table, comma-separated."""
    return ", ".join(sorted(map(str, table["model"].unique())))
