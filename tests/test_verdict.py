"""The answer-level verdict against hand computations and simulated studies: pairing, the direct (ANOVA) SE and its
bootstrap check, multiplicity, degenerate contrasts, shared questions, equal-fit readings and the study verdict."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ift_utils.power import simulate_answers, simulated_true_difference
from ift_utils.verdict import (
    CLAIM_CONSISTENCY,
    CLAIM_CONTEXTUALIZED,
    CLAIM_GENERAL_VS_NO_IFT,
    CLAIM_HARMONIOUS,
    CLAIM_REPRODUCTION,
    CLAIM_SELF_ALIGNING,
    CONTRASTS,
    Z_MDE,
    adjust,
    answer_verdict,
    bootstrap_contrast,
    clean_answers,
    contrast_blocks,
    contrast_estimate,
    equal_fit_epochs,
    equal_fit_verdict,
    final_epoch,
    study_verdict,
    two_way_anova,
)

HARM = [c for c in CONTRASTS if c.group == "harmonious" and c.versus == "incompatible"]


def _hand_answers() -> pd.DataFrame:
    """One domain, HOMO, 4 questions: no_ift once (seed -1), general_only and incompatible at seeds 0 and 1."""
    correct = {("no_ift", -1): [0, 0, 1, 0], ("general_only", 0): [1, 0, 1, 0], ("general_only", 1): [1, 1, 1, 0],
               ("incompatible", 0): [0, 0, 0, 0], ("incompatible", 1): [1, 0, 0, 0]}
    rows = [{"model": "m", "domain": "d", "condition": g, "group": g, "ratio": np.nan, "seed": s,
             "epoch": np.nan if g == "no_ift" else 3.0, "test_set": "HOMO", "id": q, "correct": c, "base_correct": 0}
            for (g, s), cs in correct.items() for q, c in enumerate(cs)]
    return pd.DataFrame(rows)


def _eval_from_answers(a: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """An eval table (accuracy per cell and test set, random consistency) from an answers table."""
    ev = (a.groupby(["model", "domain", "condition", "group", "ratio", "seed", "epoch", "test_set"], dropna=False)
          .agg(ft_acc=("correct", "mean")).reset_index())
    rng = np.random.default_rng(seed)
    return ev.assign(base_acc=0.5, kl=0.3, rank_corr=rng.uniform(0.2, 0.8, len(ev)))


# ------------------------------------------------------------------------------------------------ pairing
def test_untrained_control_pairs_with_every_replicate_and_estimates_are_exact_means():
    data, _ = clean_answers(_hand_answers())
    blocks = contrast_blocks(data, "general_only", "no_ift")
    assert len(blocks) == 1 and blocks[0].seeds == [0, 1]
    v = adjust(answer_verdict(_hand_answers(), n_boot=500))
    ctrl = v[v["claim"] == CLAIM_GENERAL_VS_NO_IFT].iloc[0]
    # general_only: 2/4 and 3/4 correct; no_ift 1/4 -> mean difference (25 + 50) / 2 = 37.5 points
    assert ctrl["ours"] == pytest.approx(37.5) and ctrl["kind"] == "control" and ctrl["supported"] is None
    assert ctrl["decision"] == "descriptive" and ctrl["reading"].startswith("descriptive (a control, not a test)")
    assert ctrl["n_replicates"] == 2 and ctrl["n_questions"] == 4 and np.isnan(ctrl["p_adj"])
    inc = v[v["claim"] == "incompatible − general_only"].iloc[0]
    assert inc["ours"] == pytest.approx(100 * (1 / 8 - 5 / 8))
    # the t cross-check is over the two replicates' differences, 25 and 50
    assert (ctrl["t_lo"], ctrl["t_hi"]) == (pytest.approx(37.5 - 12.7062 * 12.5, abs=1e-3),
                                            pytest.approx(37.5 + 12.7062 * 12.5, abs=1e-3))
    # groups that are not in the grid give no row at all (no "not run" rows, no dashes)
    assert CLAIM_HARMONIOUS not in set(v["claim"]) and "harmonious − general_only" not in set(v["claim"])


def test_direct_se_is_the_anova_estimate_and_the_bootstrap_agrees():
    a = simulate_answers({"harmonious": 0.3}, n_domains=1, n_replicates=4, n_questions=150, seed=5)
    data, _ = clean_answers(a)
    blocks = contrast_blocks(data, "harmonious", "incompatible")
    d = blocks[0].diff
    r, q = d.shape
    m = two_way_anova(d)
    by_hand = 100 * math.sqrt((m["ms_rep"] + m["ms_q"] - m["ms_res"]) / (r * q))
    res = contrast_estimate(blocks)["HOMO"]
    assert res["se"] == pytest.approx(by_hand, rel=1e-9)
    assert res["ours"] == pytest.approx(100 * d.mean())
    assert res["p"] == pytest.approx(2 * __import__("scipy").stats.t.sf(abs(res["ours"]) / res["se"], res["df"]))
    assert bootstrap_contrast(blocks, n_boot=3000)["HOMO"] == pytest.approx(res["se"], rel=0.15)


# -------------------------------------------------------------------------------------- degenerate contrasts
def test_zero_variance_is_not_estimable_never_zero_width_and_no_mde():
    a = _hand_answers()
    a.loc[a["group"] == "general_only", "correct"] = 1
    a.loc[a["group"] == "incompatible", "correct"] = 0
    row = adjust(answer_verdict(a, n_boot=200)).query("claim == 'incompatible − general_only'").iloc[0]
    assert row["ours"] == pytest.approx(-100.0)
    assert all(np.isnan(row[k]) for k in ("lo", "hi", "se", "mde", "p"))
    assert row["decision"] == "not estimable"
    assert row["reading"].startswith("not estimable (no variance: every answer pair gives the same difference)")
    assert "0.00 [0.00, 0.00]" not in row["reading"] and "MDE 0" not in row["reading"]
    # a claim row in the same state is not estimable and never supported
    claim = a.assign(group=a["group"].replace({"general_only": "harmonious"}))
    h = study_verdict(_eval_from_answers(claim), claim, n_boot=200).query("claim == @CLAIM_HARMONIOUS").iloc[0]
    assert h["decision"] == "not estimable" and h["supported"] is False and np.isnan(h["mde"])


def test_a_variance_estimate_below_zero_falls_back_to_the_conservative_se():
    """Two replicates × four questions whose unbiased ANOVA variance is negative: the SE keeps the residual in
    both parts (var(row means)/R + var(column means)/Q, by hand), and the row's detail says so."""
    from ift_utils.verdict import CONSERVATIVE_SE, Block, two_way_anova, verdict_row

    d = np.array([[0, 0, 0, 1], [-1, 1, 1, -1]], dtype=float)
    r, q = d.shape
    upper = d.mean(axis=1).var(ddof=1) / r + d.mean(axis=0).var(ddof=1) / q
    assert upper - two_way_anova(d)["ms_res"] / (r * q) < 0  # the unbiased estimate: -0.068
    res = contrast_estimate([Block("m", "d", "HOMO", [0, 1], d, [f"q{i}" for i in range(q)])])["HOMO"]
    assert res["se"] == pytest.approx(100 * math.sqrt(upper)) and np.isfinite(res["lo"]) and np.isfinite(res["p"])
    assert res["se_note"] == CONSERVATIVE_SE
    row = verdict_row(next(c for c in CONTRASTS if c.claim == CLAIM_HARMONIOUS), "HOMO", res, {}, "bootstrap")
    assert CONSERVATIVE_SE in row["_detail"]


def test_one_replicate_per_domain_is_said_in_the_reading():
    a = _hand_answers()
    v = adjust(answer_verdict(a[a["seed"] <= 0], n_boot=200))
    row = v.query("claim == @CLAIM_GENERAL_VS_NO_IFT").iloc[0]
    assert row["ours"] == pytest.approx(25.0) and row["n_replicates"] == 1
    assert "one replicate per domain: the between-run variance is not estimable" in row["reading"]


# ---------------------------------------------------------------------------------------------- multiplicity
def _claim_rows(ps: dict[tuple[str, str], float]) -> pd.DataFrame:
    """Claim rows with given raw p (positive estimates, intervals excluding 0 where p < 0.05)."""
    rows = []
    for (claim, ts), p in ps.items():
        lo = 0.5 if p < 0.05 else -1.0
        rows.append({"claim": claim, "kind": "claim", "test_set": ts, "ours": 3.0, "lo": lo, "hi": 6.0, "p": p,
                     "paper": 10.0, "n_replicates": 9, "_detail": "hand"})
    rows.append({"claim": CLAIM_GENERAL_VS_NO_IFT, "kind": "control", "test_set": "HOMO", "ours": 5.0, "lo": 1.0,
                 "hi": 9.0, "p": 0.001, "paper": np.nan, "n_replicates": 9, "_detail": "hand"})
    return pd.DataFrame(rows)


def test_raw_p_passes_but_the_holm_adjusted_one_does_not():
    """The power run's pattern: H − I on HOMO (p 0.04, primary), S − I on ID (0.045) and on HOMO (0.008)."""
    ps = {(CLAIM_HARMONIOUS, "HOMO"): 0.04, (CLAIM_HARMONIOUS, "ID"): 0.30, (CLAIM_HARMONIOUS, "OOD"): 0.001,
          (CLAIM_SELF_ALIGNING, "HOMO"): 0.008, (CLAIM_SELF_ALIGNING, "ID"): 0.045, (CLAIM_SELF_ALIGNING, "OOD"): 0.5}
    v = adjust(_claim_rows(ps)).set_index(["claim", "test_set"])
    prim = v.loc[(CLAIM_HARMONIOUS, "HOMO")]
    assert prim["p_adj"] == 0.04 and prim["supported"] is True and np.isnan(prim["p_holm_all"])
    assert "primary contrast, tested first at alpha 0.05, p = 0.04" in prim["reading"]
    s_id = v.loc[(CLAIM_SELF_ALIGNING, "ID")]
    # within the claim (3 rows): 0.008 × 3, 0.045 × 2 = 0.09, 0.5; over all 5 non-primary claim rows
    assert s_id["p_holm_claim"] == pytest.approx(0.09) and s_id["p_holm_all"] == pytest.approx(0.135)
    assert s_id["p"] < 0.05 and s_id["supported"] is False and s_id["decision"] == "not supported"
    assert s_id["reading"].startswith("not supported after adjustment for multiplicity: no: between 0.5 and 6.0")
    s_homo = v.loc[(CLAIM_SELF_ALIGNING, "HOMO")]
    assert s_homo["p_holm_all"] == pytest.approx(0.008 * 4) and s_homo["supported"] is True
    assert v.loc[(CLAIM_HARMONIOUS, "OOD"), "p_holm_all"] == pytest.approx(0.005)
    ctrl = v.loc[(CLAIM_GENERAL_VS_NO_IFT, "HOMO")]
    assert ctrl["supported"] is None and np.isnan(ctrl["p_adj"]) and ctrl["decision"] == "descriptive"


def test_holm_by_hand_and_as_statsmodels_computes_it(monkeypatch):
    """Holm step-down: sorted p times (m, m-1, ...), running maximum, at most 1; NaN rows stay out of m."""
    from statsmodels.stats.multitest import multipletests

    monkeypatch.setattr("gc.collect", lambda *a: 0)  # multipletests collects garbage on every call (why holm exists)

    from ift_utils.verdict import holm

    p = pd.Series([0.04, np.nan, 0.01, 0.03, 0.5], index=list("abcde"))
    # m = 4: 0.01×4 = 0.04, 0.03×3 = 0.09, 0.04×2 = 0.08 → 0.09 (running max), 0.5×1 = 0.5
    assert holm(p).round(12).to_dict() == pytest.approx({"a": 0.09, "b": np.nan, "c": 0.04, "d": 0.09, "e": 0.5},
                                                         nan_ok=True)
    assert holm(pd.Series([0.3, 0.4, 0.6])).tolist() == pytest.approx([0.9, 0.9, 0.9])  # clipped at 1 only above
    assert holm(pd.Series([0.5, 0.6])).tolist() == [1.0, 1.0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = pd.Series(np.round(rng.uniform(0, 0.2, rng.integers(1, 12)), 2))  # rounded: ties
        assert np.allclose(holm(q), multipletests(q.to_numpy(), method="holm")[1])


def test_a_null_reads_by_its_interval_not_by_its_mde():
    a = simulate_answers({"harmonious": 0.0}, n_domains=2, n_replicates=3, n_questions=80, seed=2)
    v = study_verdict(_eval_from_answers(a), a, n_boot=200)
    row = v.query("claim == @CLAIM_HARMONIOUS").iloc[0]
    assert row["decision"] == "not supported"
    assert f"no: between {row['lo']:.1f} and {row['hi']:.1f} points" in row["reading"]
    assert "smaller than" not in " ".join(v["reading"])


# ------------------------------------------------------------------------------------------ the study verdict
def _full_answers() -> pd.DataFrame:
    a = simulate_answers({"harmonious": 1.5, "self_aligning": 0.0, "contextualized": 0.0, "general_only": -0.3,
                          "no_ift": -0.6}, n_domains=2, n_replicates=3, n_questions=80, test_sets=("HOMO", "ID"),
                         seed=3)
    a.loc[a["group"] == "no_ift", "seed"] = -1  # one untrained control per domain and test set
    return a.drop_duplicates(["group", "domain", "seed", "test_set", "id"])


def test_study_verdict_columns_rows_and_claim4():
    a = _full_answers()
    table = _eval_from_answers(a)
    v = study_verdict(table, a, n_boot=300)
    assert {"p", "p_holm_claim", "p_holm_all", "p_adj", "mde", "t_lo", "t_hi", "se", "se_boot", "decision",
            "score"} <= set(v.columns)
    harm = v[v["claim"] == CLAIM_HARMONIOUS].set_index("test_set")
    assert harm["supported"].all() and (harm["mde"] >= Z_MDE * harm["se"] - 1e-9).all()
    assert harm["reading"].str.contains(r"MDE [\d.]+ = [\d.]+ × SE", regex=True).all()
    assert (harm["se_boot"] / harm["se"]).between(0.7, 1.4).all()
    ctx = v[v["claim"] == CLAIM_CONTEXTUALIZED]
    assert list(ctx["test_set"]) == ["HOMO", "ID", "all"]
    controls = v[v["kind"] == "control"]
    assert controls["supported"].isna().all() and (controls["decision"] == "descriptive").all()
    test = v[v["claim"] == CLAIM_CONSISTENCY]
    assert len(test) == 2 and (test["kind"] == "claim").all() and test["p_holm_all"].notna().all()
    assert test["method"].str.contains("replicate \\+ condition").all()
    repro = v[v["claim"] == CLAIM_REPRODUCTION]
    assert (repro["kind"] == "reproduction").all() and repro["supported"].isna().all()
    assert repro["reading"].str.contains("paper's statistic; controls only for domain here").all()
    # without answers: the paired t over replicates stands in, said so in `method`
    old = study_verdict(table)
    diffs = old[old["claim"] == CLAIM_HARMONIOUS]
    assert (diffs["method"] == "pair-level t (no answers table)").all() and (diffs["mde"] > 0).all()
    assert (diffs["t_lo"] == diffs["lo"]).all()


def test_calibrated_score_gives_its_own_verdict_side_by_side():
    a = _full_answers()
    rng = np.random.default_rng(0)
    a["correct_cal"] = np.where(rng.uniform(size=len(a)) < 0.1, 1 - a["correct"], a["correct"])
    table = _eval_from_answers(a)
    raw = study_verdict(table, a, n_boot=200)
    cal = study_verdict(table, a, n_boot=200, score="correct_cal")
    diffs = ~cal["claim"].isin([CLAIM_CONSISTENCY, CLAIM_REPRODUCTION])  # claim 4 reads the eval table
    assert (cal.loc[diffs, "score"] == "correct_cal").all() and (raw["score"] == "correct").all()
    h_raw = raw.query("claim == @CLAIM_HARMONIOUS")["ours"].to_numpy()
    h_cal = cal.query("claim == @CLAIM_HARMONIOUS")["ours"].to_numpy()
    assert not np.allclose(h_raw, h_cal)
    with pytest.raises(ValueError, match="correct_cal"):
        clean_answers(a.drop(columns="correct_cal"), "correct_cal")


def test_clean_answers_counts_what_it_leaves_out_and_keeps_the_final_epoch():
    a = _hand_answers()
    early = a[a["group"] == "incompatible"].assign(epoch=1.0, correct=1)
    bad = a.head(2).assign(correct=[2, np.nan])
    data, counts = clean_answers(pd.concat([a, early, bad], ignore_index=True))
    assert counts["read"] == len(a) + len(early) + 2
    assert counts["malformed (correct not 0/1, or no id/test_set/group)"] == 2
    assert counts["earlier checkpoints (not the final model)"] == len(early)
    assert counts["kept"] == len(a) and len(data) == len(a)
    assert (data.loc[data["group"] == "incompatible", "epoch"] == 3.0).all()
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['correct'\]"):
        clean_answers(a.drop(columns="correct"))
    assert len(final_epoch(a.drop(columns="epoch"))) == len(a)


# ------------------------------------------------------------------------------------ coverage, shared questions
def _coverage(n_studies: int, design: dict, use_qkey: bool = True, row: str = "all") -> tuple[float, float, float]:
    """Coverage of the true difference by the direct interval, mean SE and the SD of the estimates."""
    truth = simulated_true_difference(0.2, sd_question_group=design.get("sd_question_group", 0.4))
    hits, ses, ests = [], [], []
    for i in range(n_studies):
        a = simulate_answers({"harmonious": 0.2}, seed=i, **design)
        if not use_qkey:
            a = a.drop(columns=["qkey", "gold"])  # no clusters at all: every question its own
        data, _ = clean_answers(a)
        res = contrast_estimate(contrast_blocks(data, "harmonious", "incompatible"))[row]
        hits.append(res["lo"] <= truth <= res["hi"])
        ses.append(res["se"])
        ests.append(res["ours"])
    return float(np.mean(hits)), float(np.mean(ses)), float(np.std(ests, ddof=1))


SHARED = {"n_domains": 3, "n_replicates": 3, "n_questions": 60, "test_sets": ("HOMO", "ID", "XD"), "shared": 1.0,
          "sd_question_group": 1.5}


def test_coverage_with_shared_questions():
    """Every ID question is a HOMO entity again, and each domain's XD set is the next domain's HOMO set ("all"
    row, 3 domains × 3 replicates × 60 questions). Measured on 200 studies: with the clusters (qkey) coverage
    0.97, SE 3.11 against an estimate SD of 3.04; without them (questions taken as independent) SE 2.38 and
    coverage 0.88."""
    cov, se, sd = _coverage(80, SHARED)
    assert cov >= 0.88 and 0.8 < se / sd < 1.25, (cov, se, sd)
    cov_ind, se_ind, _ = _coverage(80, SHARED, use_qkey=False)
    assert se_ind < 0.85 * se, (se_ind, se)


def test_coverage_of_one_test_set():
    """3 domains × 4 replicates × 100 questions, HOMO only: direct interval coverage and SE against the spread."""
    cov, se, sd = _coverage(40, {"n_domains": 3, "n_replicates": 4, "n_questions": 100}, row="HOMO")
    assert cov >= 0.88 and 0.8 < se / sd < 1.25, (cov, se, sd)


def test_glmm_recovers_the_direct_estimate_on_one_study():
    a = simulate_answers({"harmonious": 0.5}, n_domains=2, n_replicates=2, n_questions=60, seed=11)
    g = adjust(answer_verdict(a, method="glmm")).query("claim == @CLAIM_HARMONIOUS").iloc[0]
    b = adjust(answer_verdict(a, n_boot=500)).query("claim == @CLAIM_HARMONIOUS").iloc[0]
    assert g["method"] == "glmm" and g["ours"] == pytest.approx(b["ours"], abs=1.5)
    assert "glmm, 4 replicate(s) × 120 question(s)" in g["reading"]
    with pytest.raises(ValueError, match="verdict_method must be"):
        answer_verdict(a, method="anova")


# --------------------------------------------------------------------------------------------------- equal fit
def test_equal_fit_reads_each_contrast_where_the_groups_fit_alike():
    a1 = simulate_answers({"harmonious": 0.3}, n_domains=1, n_replicates=2, n_questions=60, seed=1)
    a2 = simulate_answers({"harmonious": 0.6}, n_domains=1, n_replicates=2, n_questions=60, seed=2)
    answers = pd.concat([a1.assign(epoch=1.0), a2.assign(epoch=3.0)], ignore_index=True)
    fits = {("harmonious", 1.0): 0.9, ("incompatible", 1.0): 0.2, ("harmonious", 3.0): 0.99,
            ("incompatible", 3.0): 0.5}
    train_fit = pd.DataFrame([{"model": "sim", "domain": "d0", "condition": g, "group": g, "seed": s, "epoch": e,
                               "fit": f} for (g, e), f in fits.items() for s in (0, 1)])
    chosen = equal_fit_epochs(train_fit, "harmonious", "incompatible")
    assert chosen["epoch"].tolist() == [3.0, 3.0] and chosen["gap"].tolist() == [pytest.approx(0.49)] * 2
    fits[("incompatible", 1.0)] = 0.85  # now epoch 1 is the closer fit
    train_fit["fit"] = [fits[(g, e)] for g, e in zip(train_fit["group"], train_fit["epoch"], strict=True)]
    ef = equal_fit_verdict(answers, train_fit, n_boot=200)
    row = ef.query("claim == @CLAIM_HARMONIOUS").iloc[0]
    d1 = 100 * (a1.query("group == 'harmonious'")["correct"].mean() - a1.query("group == 'incompatible'")[
        "correct"].mean())
    assert row["ours"] == pytest.approx(d1) and row["kind"] == "equal fit"
    assert row["reading"].startswith("at equal fit (0.90 vs 0.85 of own facts fitted)")
    assert equal_fit_verdict(a2, train_fit).empty  # one checkpoint: nothing to read


# ------------------------------------------------------------------------- clusters on the gold answer, df by hand
def test_clusters_join_entity_and_gold_answer():
    """Entities e1..e4 with gold answers France, France, Spain, Chile, and e4 asked again in ID (gold Santiago):
    e1 and e2 share France (one cluster), e3 alone, e4 with its ID question one cluster: 3 clusters of 5 answers."""
    from ift_utils.contrasts import cluster_keys

    a = pd.DataFrame({"model": "m", "qkey": ["e1", "e2", "e3", "e4", "e4"],
                      "gold": ["France", "France", "Spain", "Chile", "Santiago"]})
    keys = cluster_keys(a, "m|" + a["qkey"])
    assert keys.nunique() == 3 and keys[0] == keys[1] and keys[3] == keys[4] and keys[2] != keys[0]
    assert (cluster_keys(a.drop(columns="gold"), "m|" + a["qkey"]) == "m|" + a["qkey"]).all()


def test_satterthwaite_df_by_hand_without_a_floor_above_it():
    """One block, R = 3 replicates × Q = 4 questions, D = [[1,0,1,0],[1,1,1,-1],[0,0,1,0]]:
    replicate part var(row means)/R = 1/144, question part sum((col mean − grand)^2)/(Q(Q−1)) = 35/432, residual
    −MS_res/(RQ) = −11/432; total 1/16. Satterthwaite df = (1/16)^2 / ((1/144)^2/2 + (35/432)^2/3 + (11/432)^2/6)
    = 1.684. The old floor (the smallest positive component's df, 2) raised it to 2; now it stays 1.684 (at most
    2 + 3, the positive components' df)."""
    from ift_utils.contrasts import Block

    d = np.array([[1, 0, 1, 0], [1, 1, 1, -1], [0, 0, 1, 0]], dtype=float)
    keys = [f"q{i}" for i in range(4)]
    res = contrast_estimate([Block("m", "d", "HOMO", [0, 1, 2], d, keys, keys)])["HOMO"]
    var = 1 / 144 + 35 / 432 - 11 / 432
    assert var == pytest.approx(1 / 16)
    want = var**2 / ((1 / 144) ** 2 / 2 + (35 / 432) ** 2 / 3 + (11 / 432) ** 2 / 6)
    assert want == pytest.approx(1.6836, abs=1e-4)
    assert res["df"] == pytest.approx(want) and res["se"] == pytest.approx(100 * math.sqrt(var))
    # the question part counts clusters: questions 0 and 1 one cluster → its df is 3 − 1 = 2, not Q − 1 = 3
    joined = contrast_estimate([Block("m", "d", "HOMO", [0, 1, 2], d, ["a", "a", "q2", "q3"], keys)])["HOMO"]
    assert joined["n_clusters"] == 3


DEFAULT_DESIGN = {"n_domains": 2, "n_replicates": 2, "n_questions": 100, "test_sets": ("HOMO", "ID", "XD"),
                  "shared": 1.0, "n_answers": 20, "sd_answer_group": 0.8}


def test_coverage_at_the_default_design_with_answer_level_effects():
    """The default design (2 domains × 2 replicates × 100 questions; ID asks HOMO's entities, XD is the other
    domain's HOMO) with 20 gold answers per test set and an answer × group effect (SD 0.8 logits: what a group's
    trained answers do to every question with that gold). Measured on 300 studies (true difference from
    simulated_true_difference):
    clusters on entity and gold answer: coverage HOMO 0.943, "all" 0.937; mean SE 4.52 / 3.21 against an estimate
    SD of 4.76 / 3.29; entity only (before): coverage 0.897 / 0.887, SE 3.57 / 2.76. Here 12 studies (a few
    seconds): the joined clusters' SE must exceed the entity-only SE by 15 % on HOMO (measured 27 %) and the
    clusters must be fewer than the entities."""
    ratios, fewer = [], []
    for i in range(12):
        data, _ = clean_answers(simulate_answers({"harmonious": 0.2}, seed=i, **DEFAULT_DESIGN))
        blocks = contrast_blocks(data, "harmonious", "incompatible")
        joined, entity = contrast_estimate(blocks)["HOMO"], contrast_estimate(blocks, by="entities")["HOMO"]
        ratios.append(joined["se"] / entity["se"])
        fewer.append(joined["n_clusters"] < entity["n_clusters"])
    assert np.mean(ratios) > 1.15 and all(fewer), (np.mean(ratios), fewer)


def test_answer_verdict_reports_the_entity_only_interval_beside():
    a = simulate_answers({"harmonious": 0.2}, seed=3, **DEFAULT_DESIGN)
    v = adjust(answer_verdict(a, n_boot=100, contrasts=CONTRASTS[:1])).set_index("test_set")
    row = v.loc["HOMO"]
    assert row["hi"] - row["lo"] > row["hi_entity"] - row["lo_entity"] and row["se"] > row["se_entity"]
    assert row["n_clusters"] < 100 and "questions sharing a gold answer too" in row["reading"]


def test_decide_by_picks_score_and_checkpoint_and_the_rest_is_sensitivity():
    """decide_by {calibrated, early_stop}: the verdict reads correct_cal at the early-stop rows (here a copy of the
    answers with every answer flipped marks early stop, so its H − I is the negative of convergence's); the
    sensitivity table holds every score × checkpoint, exactly one of them with role "decides"."""
    from ift_utils.verdict import DECIDES, SENSITIVITY, sensitivity_verdicts, sensitivity_wide

    a = simulate_answers({"harmonious": 1.5, "self_aligning": 0.0}, n_domains=2, n_replicates=2, n_questions=30,
                         test_sets=("HOMO", "ID"), seed=3)
    a["correct_cal"] = a["correct"]
    early = a.assign(correct_cal=1 - a["correct"], correct=1 - a["correct"], early_stop=True, final=False)
    both = pd.concat([a.assign(early_stop=False, final=True), early], ignore_index=True)
    table = _eval_from_answers(a).assign(early_stop=True, final=True)
    conv = study_verdict(table, both, n_boot=100, decide_by={"score": "raw", "checkpoint": "convergence"})
    es = study_verdict(table, both, n_boot=100, decide_by={"score": "calibrated", "checkpoint": "early_stop"})
    assert len(conv.query("claim == @CLAIM_HARMONIOUS")) == 2
    h = lambda v: v.query("claim == @CLAIM_HARMONIOUS").set_index("test_set")["ours"]  # noqa: E731
    assert np.allclose(h(es), -h(conv)) and (es["role"] == DECIDES).all()
    assert set(es.loc[es["kind"] != "reproduction", "checkpoint"]) == {"early_stop"}
    long = sensitivity_verdicts(table, both, {"score": "raw", "checkpoint": "convergence"}, n_boot=100)
    blocks = long.groupby("reading_of")["role"].first()
    assert len(blocks) == 4 and (blocks == DECIDES).sum() == 1 and (blocks == SENSITIVITY).sum() == 3
    wide = sensitivity_wide(long)
    assert wide.columns[2] == "ours (raw, convergence, decides)"
