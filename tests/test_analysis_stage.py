"""Stage 05's verdict helper: the params' decide_by picks the verdict that decides, every other scoring and
checkpoint comes as a sensitivity reading, and the tables are written."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from ift_utils.power import simulate_answers
from ift_utils.stages import analysis


def test_verdicts_write_the_deciding_one_and_the_sensitivity_tables(tmp_path):
    a = simulate_answers({"harmonious": 1.0, "self_aligning": 0.0}, n_domains=2, n_replicates=2, n_questions=20,
                         test_sets=("HOMO", "ID"), n_answers=8, seed=5)
    rng = np.random.default_rng(0)
    a["correct_cal"] = np.where(rng.uniform(size=len(a)) < 0.2, 1 - a["correct"], a["correct"])
    a["correct_loo"] = a["correct"]
    a = pd.concat([a.assign(final=True, early_stop=False), a.assign(final=False, early_stop=True, epoch=1.0)],
                  ignore_index=True)
    table = (a.groupby(["model", "domain", "condition", "group", "ratio", "seed", "epoch", "test_set", "final",
                        "early_stop"], dropna=False).agg(ft_acc=("correct", "mean")).reset_index()
             .assign(base_acc=0.5, kl=0.3, rank_corr=0.5))
    P = SimpleNamespace(decide_by={"score": "calibrated", "checkpoint": "convergence"}, verdict_method="bootstrap",
                        n_boot=100)
    paths = SimpleNamespace(tables=tmp_path)
    out = analysis.verdicts(P, paths, table, a)
    result, wide = out.result, out.wide
    assert out.calibrated is not None and (out.calibrated["score"] == "calibrated (content-free PMI)").any()
    assert (result["role"] == "decides").all() and (result["checkpoint"] == "convergence").all()
    assert set(result.loc[result["kind"] != "reproduction", "score"]) >= {"calibrated (content-free PMI)"}
    change = pd.read_csv(tmp_path / "verdict_interval_change.csv")
    assert len(change) and np.isfinite(change["width_ratio"]).all() and (change["n_clusters"] <= 20).all()
    for name in ("verdict", "verdict_vs_paper", "verdict_sensitivity", "verdict_sensitivity_wide",
                 "verdict_calibrated", "verdict_checkpoints"):
        assert (tmp_path / f"{name}.csv").exists()
    long = pd.read_csv(tmp_path / "verdict_sensitivity.csv")
    assert long["reading_of"].nunique() == 6  # 3 scorings × 2 checkpoints, one of them decides
    assert long.loc[long["role"] == "decides", "reading_of"].unique().tolist() == [
        "calibrated (content-free PMI), convergence"]
    assert "decision (calibrated (content-free PMI), convergence, decides)" in wide.columns
    text = analysis.headline(result, table)
    assert "fixed: the inference covers these domains" in text and "Decided by calibrated" in text
