"""Stage 05 (notebooks/05_analysis.ipynb): the glue of the analysis; the statistics themselves live in
ift_utils.verdict, ift_utils.correlation and ift_utils.power."""

from __future__ import annotations

import pandas as pd


def headline(verdict: pd.DataFrame, table: pd.DataFrame) -> str:
    """One plain sentence summarizing which of the paper's claims this run supports (computed, not written)."""
    n_seeds, n_dom = table["seed"].nunique(), table["domain"].nunique()
    claims = verdict.groupby("claim")["supported"].agg(lambda s: int((s == True).sum()))  # noqa: E712
    totals = verdict.groupby("claim")["supported"].size()
    parts = [f"{c}: supported in {claims[c]} of {totals[c]} comparisons" for c in claims.index]
    return (f"With {_models(table)}, {n_dom} domain(s) and {n_seeds} seed(s): " + "; ".join(parts) + ". "
            "A claim counts as supported only where its 95 % interval excludes zero (or, for the correlation, p < 0.05).")


def _models(table: pd.DataFrame) -> str:
    return ", ".join(sorted(map(str, table["model"].unique())))

