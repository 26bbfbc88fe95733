"""Stage 05, analysis: the helpers notebook 05 calls beyond the statistics modules (the headline sentence)."""

from __future__ import annotations

import pandas as pd

from ..verdict import PRIMARY


def headline(verdict: pd.DataFrame, table: pd.DataFrame) -> str:
    """One plain sentence saying which of the paper's claims this run supports, computed from the verdict's
    tested claim rows (controls and the reproduction row are descriptive and not counted)."""
    n_seeds = table.loc[table["seed"] >= 0, "seed"].nunique() if "seed" in table else 0
    n_dom = table["domain"].nunique()
    claims = verdict[verdict["kind"] == "claim"]
    parts = []
    for claim, rows in claims.groupby("claim", sort=False):
        dec = rows["decision"].value_counts()
        bits = [f"supported in {int(dec.get('supported', 0))} of {len(rows)} test sets"]
        for other in ("contradicted", "not estimable"):
            if dec.get(other, 0):
                bits.append(f"{other} in {int(dec[other])}")
        parts.append(f"{claim}: " + ", ".join(bits))
    primary = claims[(claims["claim"] == PRIMARY[0]) & (claims["test_set"] == PRIMARY[1])]
    lead = ""
    if len(primary):
        row = primary.iloc[0]
        lead = f"Primary contrast ({PRIMARY[0]} on {PRIMARY[1]}): {row['decision']}. "
    return (f"With {_models(table)}, {n_dom} domain(s) and {n_seeds} replicate(s) per domain: {lead}"
            + "; ".join(parts) + ". The primary contrast is tested at alpha 0.05 unadjusted; every other claim row "
            "counts only where its Holm-adjusted p (over all claim rows) is below 0.05.")


def _models(table: pd.DataFrame) -> str:
    """The models of a table, comma-separated."""
    return ", ".join(sorted(map(str, table["model"].unique())))
