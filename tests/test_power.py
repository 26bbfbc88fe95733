"""Power and simulation: the planned MDE by hand and against a run's own, the power table, simulated sharing."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from ift_utils.power import power_table, predict_mde, simulate_answers, variance_components
from ift_utils.verdict import CLAIM_HARMONIOUS, clean_answers, contrast_blocks, contrast_estimate


def test_predict_mde_by_hand_with_t_quantiles():
    comp = {"var_question": 0.02, "var_replicate": 0.003, "var_residual": 0.4}
    # K 2, R 3, Q 100: replicate part 0.003/3/2 (df 4), question part (0.02/100 + 0.4/300)/2 (df 198)
    v1, v2 = 0.003 / 3 / 2, (0.0002 + 0.4 / 300) / 2
    dof = (v1 + v2) ** 2 / (v1**2 / 4 + v2**2 / 198)
    expected = 100 * (stats.t.ppf(0.975, dof) + stats.t.ppf(0.8, dof)) * math.sqrt(v1 + v2)
    assert predict_mde(comp, n_domains=2, n_replicates=3, n_questions=100) == pytest.approx(expected)
    # 30 question clusters a domain: the question part has 2 × 29 = 58 df, the same variance
    dof30 = (v1 + v2) ** 2 / (v1**2 / 4 + v2**2 / 58)
    want30 = 100 * (stats.t.ppf(0.975, dof30) + stats.t.ppf(0.8, dof30)) * math.sqrt(v1 + v2)
    assert predict_mde(comp, 2, 3, 100, n_clusters=30) == pytest.approx(want30)
    assert predict_mde(comp, 3, 6, 200) < predict_mde(comp, 3, 3, 200) < predict_mde(comp, 3, 3, 100)
    with pytest.raises(ValueError, match="n_replicates must be at least 1"):
        predict_mde(comp, 2, 0, 100)


def test_predicted_mde_matches_the_runs_own():
    a = simulate_answers({"harmonious": 0.2}, n_domains=2, n_replicates=4, n_questions=150, seed=7)
    data, _ = clean_answers(a)
    blocks = contrast_blocks(data, "harmonious", "incompatible")
    res = contrast_estimate(blocks)["HOMO"]
    measured = (stats.t.ppf(0.975, res["df"]) + stats.t.ppf(0.8, res["df"])) * res["se"]
    predicted = predict_mde(variance_components(blocks), n_domains=2, n_replicates=4, n_questions=150)
    assert predicted == pytest.approx(measured, rel=0.15)


def test_power_table_rows_and_simulated_sharing():
    a = simulate_answers({"harmonious": 0.2, "self_aligning": 0.0}, n_domains=2, n_replicates=2, n_questions=40,
                         test_sets=("HOMO", "ID", "XD"), shared=0.5, seed=1)
    table = power_table(a)
    assert set(table["test_set"]) == {"HOMO", "ID", "XD"} and (table["mde_this_design"] > 0).all()
    assert CLAIM_HARMONIOUS in set(table["claim"]) and (table["domains"] == 2).all()
    d0 = a[(a["domain"] == "d0") & (a["group"] == "incompatible") & (a["seed"] == 0)]
    homo, id_, xd = (set(d0.loc[d0["test_set"] == t, "qkey"]) for t in ("HOMO", "ID", "XD"))
    assert len(homo & id_) == 20  # half of ID asks about HOMO's entities
    d1_homo = set(a.loc[(a["domain"] == "d1") & (a["test_set"] == "HOMO"), "qkey"])
    assert xd == d1_homo  # d0's cross-domain set is d1's HOMO set


def test_simulated_gold_answers_nest_the_entity():
    """n_answers gives each question a gold answer from that many strings; a shared entity's ID answer is a
    function of its HOMO answer (a capital of its country), so joining entity and answer never splits an entity."""
    a = simulate_answers({"harmonious": 0.2}, n_domains=2, n_replicates=1, n_questions=50,
                         test_sets=("HOMO", "ID"), shared=1.0, n_answers=10, sd_answer_group=0.5, seed=0)
    d0 = a[(a["domain"] == "d0") & (a["group"] == "incompatible")]
    homo = d0[d0["test_set"] == "HOMO"].set_index("qkey")["gold"]
    id_ = d0[d0["test_set"] == "ID"].set_index("qkey")["gold"]
    assert homo.nunique() <= 10 and (id_ == "ID|of|" + homo.reindex(id_.index)).all()
