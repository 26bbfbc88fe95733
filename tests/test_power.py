"""Power and simulation: the planned MDE by hand and against a run's own, the power table, simulated sharing, and
the planned design: its MDE and stage times by hand, the cheapest design under 4 points, its splits built."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from ift_utils.power import (
    COMPONENTS,
    PLAN_DOMAINS,
    TRAINED_GROUPS,
    Design,
    best_within,
    cheapest_design,
    cluster_covariance,
    design_cost,
    design_mde,
    design_of,
    design_table,
    gold_profile,
    power_table,
    predict_mde,
    predict_se,
    simulate_answers,
    variance_components,
)
from ift_utils.verdict import CLAIM_HARMONIOUS, Block, clean_answers, contrast_blocks, contrast_estimate


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


def test_cluster_covariance_by_hand():
    """D = [[1, 1, 0, 0], [1, 0, 0, -1]], clusters a a b c. Each replicate less its mean: [[.5, .5, -.5, -.5],
    [1, 0, 0, -1]]. Cluster a: within a replicate the ordered pairs give .5·.5·2 + 1·0·2 = 0.5 over 4 pairs = 0.125;
    across replicates .5·0 + .5·1 + 1·.5 + 0·.5 = 1 over 4 pairs = 0.25, so the shared part is 0.25 and each run's
    own 0.125 − 0.25 = −0.125; share (2² + 1 + 1)/4² = 0.375."""
    b = Block("m", "d", "HOMO", [0, 1], np.array([[1.0, 1, 0, 0], [1, 0, 0, -1]]), clusters=["a", "a", "b", "c"])
    got = cluster_covariance([b])
    assert got == pytest.approx({"cov_cluster": 0.25, "cov_cluster_run": -0.125, "cluster_share": 0.375})
    one = cluster_covariance([Block("m", "d", "HOMO", [0], b.diff[:1], clusters=b.clusters)])
    # one replicate (the first row): .5 · .5 · 2 over 2 pairs, all counted as shared
    assert one["cov_cluster"] == pytest.approx(0.25) and one["cov_cluster_run"] == 0.0
    assert cluster_covariance([Block("m", "d", "HOMO", [0, 1], b.diff, clusters=list("abcd"))])["cov_cluster"] == 0


def test_predicted_se_with_shared_answers_matches_larger_studies():
    """Answers that share a gold answer (8 strings a domain, an answer × group effect of SD 0.8 logits): components
    measured at Q = 60 over 40 studies predict the spread of the estimate at Q = 400 over 120 studies; without the
    cluster covariance the prediction is far too small (more questions do not average the answer effect out)."""
    sim = dict(n_domains=2, n_replicates=3, n_answers=8, sd_answer_group=0.8, sd_question_group=0.3)

    def blocks(q, seed):
        data, _ = clean_answers(simulate_answers({"harmonious": 0.0}, n_questions=q, seed=seed, **sim))
        return contrast_blocks(data, "harmonious", "incompatible")

    comps = [{**variance_components(b), **cluster_covariance(b)} for b in (blocks(60, s) for s in range(40))]
    comp = {k: float(np.mean([c[k] for c in comps])) for k in comps[0]}
    assert comp["cov_cluster"] > 0.01 and abs(comp["cov_cluster_run"]) < comp["cov_cluster"]
    big = [blocks(400, 1000 + s) for s in range(120)]
    spread = float(np.std([contrast_estimate(b)["HOMO"]["ours"] for b in big], ddof=1))
    share = float(np.mean([cluster_covariance(b)["cluster_share"] for b in big]))
    se, _ = predict_se(comp, 2, 3, 400, n_clusters=8, cluster_share=share)
    assert se == pytest.approx(spread, rel=0.2)
    se_without, _ = predict_se({k: v for k, v in comp.items() if not k.startswith("cov")}, 2, 3, 400)
    assert se_without < 0.6 * spread


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


# ------------------------------------------------------------------------------ planning: MDE and cost of a design
CHOSEN = Design(PLAN_DOMAINS[:2], 3, 1000, n_id=300, n_ood=300, early_stop_sets=("HOMO",),
                test_per_answer=30)  # params/power.yaml


def test_design_mde_by_hand_with_cluster_df_and_shared_answers():
    """2 domains × 3 replicates × 1000 HOMO questions, at most 30 a gold answer: 81 and 82 gold answers (mean
    81.5), Σ(n_c/Q)² 0.0223 (the suite's own draw); calibrated components. The shared part: (0.0115 + 0.0030/3) ×
    (share − 1/1000) a domain."""
    comp = COMPONENTS["calibrated"]
    assert CHOSEN.clusters() == pytest.approx(81.5) and CHOSEN.cluster_share() == pytest.approx(0.02225, abs=1e-4)
    share = CHOSEN.cluster_share()
    v_rep = 0.00096 / 3 / 2
    v_q = (0.1109 / 1000 + 0.1028 / 3000 + (0.0115 + 0.0030 / 3) * (share - 1 / 1000)) / 2
    df_rep, df_q = 2 * (3 - 1), 2 * (81.5 - 1)
    dof = (v_rep + v_q) ** 2 / (v_rep**2 / df_rep + v_q**2 / df_q)
    want = 100 * (stats.t.ppf(0.975, dof) + stats.t.ppf(0.80, dof)) * math.sqrt(v_rep + v_q)
    assert design_mde(CHOSEN, comp) == pytest.approx(want)
    assert want == pytest.approx(5.63, abs=0.01)
    # raw scoring: questions sharing an answer covary 6.6 times as much, and the same design detects 9.5 points
    assert design_mde(CHOSEN, COMPONENTS["raw"]) == pytest.approx(9.5, abs=0.05)
    # without the shared part the old plan (3 × 3 × 1500, raw) read 3.9 points; with it, 12.4
    old = Design(PLAN_DOMAINS, 3, 1500, n_id=300, n_ood=300, early_stop_sets=("HOMO",))
    no_share = {k: v for k, v in COMPONENTS["raw"].items() if not k.startswith("cov")}
    assert design_mde(old, no_share) == pytest.approx(3.87, abs=0.01)
    assert design_mde(old, COMPONENTS["raw"]) == pytest.approx(12.4, abs=0.05)


def test_design_time_by_hand():
    # the default design reproduces the stage times it was measured from (056326c: 134 s, 36.4 min, 17.4 min, 31 s)
    default = design_cost(Design(PLAN_DOMAINS[:2], 2, 100))
    assert default["probe_s"] == pytest.approx(134.0)
    assert default["training_s"] == pytest.approx(2 * 2 * 535.0)
    assert default["evaluation_s"] == pytest.approx(1044.0)
    assert default["analysis_s"] == pytest.approx(31.0)
    # the chosen design, by hand: per domain HOMO 1000, ID 300, OOD 185 (its relation), XD 300 = 1785 questions
    sets, early = 1000 + 300 + 185 + 300, 1000
    probe = 134 / 3200 * 2 * (400 * 3 + sets)
    training = 2 * 3 * (20 + 45 + 130 + 135 + 140 + 65)
    answers = 2 * (3 * 6 * (sets + early) + sets)  # trained cells at both checkpoints, and no_ift
    facts = 2 * 3 * 2 * 5 * 48  # own facts at both checkpoints, general_only has none
    evaluation = 1044 / 21920 * (answers + facts)
    got = design_cost(CHOSEN)
    assert got["probe_s"] == pytest.approx(probe) and got["training_s"] == pytest.approx(training)
    assert got["evaluation_s"] == pytest.approx(evaluation)
    assert got["total_s"] == pytest.approx(probe + 9 + training + evaluation + 31 / 20000 * answers)
    assert got["total_s"] / 60 == pytest.approx(145.2, abs=0.1)
    faster = design_cost(CHOSEN, train_seconds={g: 0.6 * s for g, s in
                                                {"harmonious": 20, "self_aligning": 45, "incompatible": 130,
                                                 "mixture": 135, "contextualized": 140, "general_only": 65}.items()})
    assert faster["training_s"] == pytest.approx(0.6 * training)


def test_power_yaml_is_the_least_mde_within_two_and_a_half_hours_on_the_claim_groups():
    """No design in the grid reaches 4 points with three facts domains (raw never below 8, calibrated 4.5 at
    ≈ 4 h), so power.yaml takes the D × R × Q and cap of the least calibrated MDE within 2 h 30 min, and decides by
    calibrated scoring. It trains only the groups of claims 1 and 2: the groups do not enter the MDE, and dropping
    mixture, contextualized and general_only (and ID/OOD/XD to 100) takes it to about an hour."""
    from dataclasses import replace

    from ift_utils.config import load_params

    table = design_table(components=COMPONENTS["calibrated"])
    assert table["mde"].gt(0).all() and table["per_answer"].notna().any()
    with pytest.raises(ValueError, match="no design has a primary MDE <= 4.0"):
        cheapest_design(table)
    assert table["mde"].min() == pytest.approx(4.5, abs=0.1)
    assert design_table(components=COMPONENTS["raw"])["mde"].min() > 8
    best = best_within(table, 150 * 60)
    assert best["total_s"] <= 150 * 60 and table.loc[table["total_s"] <= 150 * 60, "mde"].min() == best["mde"]
    P = load_params("params/power.yaml")
    planned = design_of(P)
    assert (len(planned.domains), planned.replicates, planned.n_test, planned.test_per_answer) == (
        best["D"], best["R"], best["Q"], best["per_answer"])
    assert set(planned.groups) == {"harmonious", "incompatible", "self_aligning"} and P.controls == ["no_ift"]
    assert P.decide_by.score == "calibrated"
    every_group = replace(planned, groups=TRAINED_GROUPS)
    same = design_table([planned, every_group], components=COMPONENTS["calibrated"])
    assert same["mde"].iloc[0] == same["mde"].iloc[1] == pytest.approx(best["mde"])
    assert same["total_s"].iloc[0] < 61 * 60 < 2 * same["total_s"].iloc[0] < same["total_s"].iloc[1]
    with pytest.raises(ValueError, match="no design runs within 10 min"):
        best_within(table, 600)


def test_per_answer_order_caps_the_test_set_and_drops_nothing():
    """Golds a a a b a c b a. Two demos first, 4 test questions, at most 2 an answer: records 2-5 (a b a c) fit, the
    order is unchanged (demos do not count). No demos, 3 questions, at most 1 an answer: a(0) b(3) c(5) are taken,
    the records the test set did not reach follow in order (6, 7: the training split stays a random sample), and
    a(1) a(2) a(4), which waited, come last. 4 at most 1 an answer: only 3 answers exist, a clear error."""
    from ift_utils.data_facts import per_answer_order

    recs = [{"g": g, "i": i} for i, g in enumerate("aaabacba")]
    assert [r["i"] for r in per_answer_order(recs, "g", 2, 4, 2)] == list(range(8))
    assert [r["i"] for r in per_answer_order(recs, "g", 0, 3, 1)] == [0, 3, 5, 6, 7, 1, 2, 4]
    with pytest.raises(ValueError, match="test_per_answer=1: only 3 test questions"):
        per_answer_order(recs, "g", 0, 4, 1)


def test_gold_answer_clusters_and_disjoint_splits_at_the_chosen_size():
    """The facts suite gives the chosen design its questions: 1000 HOMO (and 100 ID, OOD and XD) questions a domain,
    none of them a training or fit question (fit_dev is a slice of train) or a demo; the gold-answer counts the
    plan uses are the suite's own."""
    from ift_utils.config import load_params
    from ift_utils.data_sources import load_study_data

    P = load_params("params/power.yaml")
    data = load_study_data(P)
    planned = design_of(P)
    for d in P.domains:  # the plan's answer profile is the one the study draws
        golds = Counter(x.raw["gold"] for x in data[d].test)
        n, share = gold_profile(d, P.n_test, P.test_per_answer, max(P.k_shot, 1) * P.belief_prompts, P.data_seed)
        assert (len(golds), sum(c * c for c in golds.values()) / len(data[d].test) ** 2) == (n, pytest.approx(share))
        if P.test_per_answer:
            assert max(golds.values()) <= P.test_per_answer
    assert planned.clusters() == pytest.approx(np.mean([len({x.raw["gold"] for x in data[d].test}) for d in P.domains]))
    for d, dd in data.items():
        sizes = {name: len(qs) for name, qs in dd.test_sets().items()}
        assert sizes == {"HOMO": 1000, "ID": 100, "OOD": 100, "XD": 100}, (d, sizes)
        train = {q.raw["entity"] for q in dd.train}
        demos = {q.raw["entity"] for q in dd.dev}
        assert len(dd.train) == P.n_train
        for name, qs in dd.test_sets().items():
            if name == "OOD":  # countries, another relation: no city is asked
                continue
            ents = {q.raw["entity"] for q in qs}
            assert not ents & train and not ents & demos, (d, name)
        xd_domains = {q.domain for q in dd.cross_test}
        assert d not in xd_domains and xd_domains <= set(PLAN_DOMAINS)
        # XD questions are other domains' HOMO questions, so also never another domain's training question
        other_train = {q.raw["entity"] for o, od in data.items() if o != d for q in od.train}
        assert not {q.raw["entity"] for q in dd.cross_test} & (train | other_train)
