"""Every claim at Gekhman et al.'s two checkpoints, early stop and convergence, raw and calibrated, in one wide table.

Cells that train to fit are scored twice (stage 04 marks each answer `early_stop` and/or `final`); this module runs
the verdict on each checkpoint's answers under each score and joins the claim rows side by side, so notebook 05 shows
the same claim across four columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

CHECKPOINTS = {"early stop": "early_stop", "convergence": "final"}  # column name in answers / eval table
SCORES = {"correct": "raw", "correct_cal": "calibrated"}
SHOWN = ("ours", "lo", "hi", "decision")
KEYS = ["claim", "test_set"]


def verdict_at_checkpoints(table: pd.DataFrame, answers: pd.DataFrame | None,
                           verdict_fn: Callable[..., pd.DataFrame] | None = None, **verdict_kwargs: Any
                           ) -> pd.DataFrame:
    """One row per claim and test set, with `ours`, `lo`, `hi`, `decision` for each (checkpoint, score) the answers
    have, named e.g. "ours (early stop, raw)". `verdict_fn` is `verdict.study_verdict` (its keyword arguments pass
    through, e.g. method and n_boot); only rows of kind "claim" are kept. An empty frame when the answers have no
    `early_stop` column (a run without train-to-fit has one checkpoint)."""
    if answers is None or "early_stop" not in answers.columns:
        return pd.DataFrame()
    if verdict_fn is None:
        from ift_utils.verdict import study_verdict as verdict_fn
    wide = None
    for name, col in CHECKPOINTS.items():
        if col not in answers.columns or col not in table.columns:
            continue
        a, t = answers[answers[col].astype(bool)], table[table[col].astype(bool)]
        for score, label in SCORES.items():
            if score not in a.columns:
                continue
            v = verdict_fn(t, a, None, score=score, **verdict_kwargs)
            v = v[v["kind"] == "claim"] if "kind" in v.columns else v
            shown = [c for c in SHOWN if c in v.columns]
            part = v[[*KEYS, *shown]].rename(columns={c: f"{c} ({name}, {label})" for c in shown})
            wide = part if wide is None else wide.merge(part, on=KEYS, how="outer")
    return wide if wide is not None else pd.DataFrame()
