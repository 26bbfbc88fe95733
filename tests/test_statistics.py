"""Statistics against independent computations: partial Spearman, grouped OLS, intervals and the verdict."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ift_utils.statistics import (
    CLAIM_CONSISTENCY,
    CLAIM_CONTEXTUALIZED,
    CLAIM_HARMONIOUS,
    CLAIM_SELF_ALIGNING,
    MIN_BOOTSTRAP_PAIRS,
    bootstrap_diff,
    group_differences,
    grouped_regression,
    paired_diff_ci,
    partial_by_model,
    partial_spearman,
    per_group_fits,
    verdict,
)

SEED_NOISE = (-0.01, 0.0, 0.01)  # zero-mean, so paired means are exact


def make_eval_table(h: float = 0.10, s: float = 0.05, c: float = 0.07, consistency_up: bool = True) -> pd.DataFrame:
    """Synthetic eval table: 2 models × 2 domains × 3 seeds × 3 test sets with known group differences."""
    rows = []
    ratios = [(0.0, "incompatible"), (0.2, "mixture"), (0.6, "mixture"), (1.0, "self_aligning")]
    for mi, model in enumerate(["m1", "m2"]):
        for di, domain in enumerate(["d1", "d2"]):
            for ti, ts in enumerate(["HOMO", "ID", "OOD"]):
                base = 0.40 + 0.05 * di + 0.02 * ti + 0.01 * mi
                inc = base - 0.03
                for seed, noise in enumerate(SEED_NOISE):
                    common = {"model": model, "domain": domain, "seed": seed, "test_set": ts, "n": 100,
                              "base_acc": base, "kl": 0.3}
                    for ratio, group in ratios:
                        ft = inc + (s + noise) * ratio
                        # consistency tracks the accuracy change monotonically (up) or inversely (down)
                        rc = 0.3 + 5.0 * (ft - inc) if consistency_up else 0.8 - 5.0 * (ft - inc)
                        rows.append({**common, "condition": f"r{ratio}", "group": group, "ratio": ratio,
                                     "ft_acc": ft, "rank_corr": rc})
                    for group, delta in (("harmonious", h), ("contextualized", c)):
                        rows.append({**common, "condition": group, "group": group, "ratio": np.nan,
                                     "ft_acc": inc + delta + noise, "rank_corr": 0.5})
    table = pd.DataFrame(rows)
    table["acc_diff"] = table["ft_acc"] - table["base_acc"]
    cols = ["model", "domain", "condition", "group", "ratio", "seed", "test_set", "n", "base_acc", "ft_acc",
            "acc_diff", "kl", "rank_corr"]
    return table[cols]


# ------------------------------------------------------------------------------------- partial Spearman
SMALL = pd.DataFrame(
    {
        "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        "y": [2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0, 9.0, 8.0],
        "z": [5.0, 3.0, 8.0, 1.0, 7.0, 2.0, 6.0, 4.0, 4.0],  # one tie: average ranks
    }
)


def _formula_partial(df: pd.DataFrame) -> float:
    """Textbook partial correlation on Spearman correlations: (r_xy - r_xz r_yz) / sqrt((1-r_xz²)(1-r_yz²))."""
    r_xy = stats.spearmanr(df["x"], df["y"])[0]
    r_xz = stats.spearmanr(df["x"], df["z"])[0]
    r_yz = stats.spearmanr(df["y"], df["z"])[0]
    return (r_xy - r_xz * r_yz) / math.sqrt((1 - r_xz**2) * (1 - r_yz**2))


def test_partial_spearman_pearson_residuals_equal_formula():
    expected = _formula_partial(SMALL)
    res = partial_spearman(SMALL, "x", "y", "z", residual_method="pearson")
    assert res["n"] == 9
    assert res["r"] == pytest.approx(expected, abs=1e-12)
    # p from the t distribution with n - 3 = 6 degrees of freedom
    t = expected * math.sqrt(6 / (1 - expected**2))
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(t), 6), rel=1e-9)


def test_partial_spearman_default_is_the_original_spearman_of_residuals():
    # Independent path: numpy least squares on [1, rank z], then scipy's Spearman of the two residual vectors.
    rx, ry, rz = (stats.rankdata(SMALL[c]) for c in ("x", "y", "z"))
    design = np.column_stack([np.ones(len(rz)), rz])
    res_x = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
    res_y = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
    r_exp, p_exp = stats.spearmanr(res_x, res_y)
    res = partial_spearman(SMALL, "x", "y", "z")
    assert res["r"] == pytest.approx(r_exp, abs=1e-12)
    assert res["p"] == pytest.approx(p_exp, rel=1e-9)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_partial_spearman_constant_covariate_is_plain_spearman(method):
    # A constant control removes nothing but the mean, so the partial equals Spearman's rho of x and y.
    df = SMALL.assign(z=1.0)
    assert partial_spearman(df, "x", "y", "z", residual_method=method)["r"] == pytest.approx(
        stats.spearmanr(df["x"], df["y"])[0], abs=1e-12
    )


def test_partial_spearman_known_answers_and_edges():
    df = pd.DataFrame({"x": [1, 2, 3, 4, 5, 6], "z": [3, 1, 2, 6, 5, 4]})
    df["y"] = df["x"] ** 3  # same ranks as x: the partial correlation is exactly 1
    assert partial_spearman(df, "x", "y", "z", residual_method="pearson")["r"] == pytest.approx(1.0)
    assert partial_spearman(df, "x", "y", "z")["r"] == pytest.approx(1.0)
    # y entirely explained by z -> residual of y is zero -> undefined
    undefined = partial_spearman(df.assign(y=df["z"]), "x", "y", "z")
    assert math.isnan(undefined["r"]) and math.isnan(undefined["p"])
    # NaN rows are dropped and counted
    with_nan = pd.concat([SMALL, pd.DataFrame({"x": [np.nan], "y": [1.0], "z": [1.0]})], ignore_index=True)
    assert partial_spearman(with_nan, "x", "y", "z")["n"] == 9
    assert math.isnan(partial_spearman(SMALL.head(3), "x", "y", "z")["r"])
    with pytest.raises(ValueError):
        partial_spearman(SMALL, "x", "y", "z", residual_method="kendall")


_ints = st.lists(st.integers(min_value=0, max_value=6), min_size=8, max_size=8)


@settings(max_examples=40, deadline=None)
@given(_ints, _ints, _ints, st.sampled_from(["spearman", "pearson"]))
def test_partial_spearman_symmetric_in_x_and_y(xs, ys, zs, method):
    df = pd.DataFrame({"x": xs, "y": ys, "z": zs})
    a = partial_spearman(df, "x", "y", "z", residual_method=method)
    b = partial_spearman(df, "y", "x", "z", residual_method=method)
    if math.isnan(a["r"]):
        assert math.isnan(b["r"])
    else:
        assert a["r"] == pytest.approx(b["r"], abs=1e-9)
        assert a["p"] == pytest.approx(b["p"], abs=1e-9)
        assert -1.0 <= a["r"] <= 1.0


# ------------------------------------------------------------------------------------------- regression
def _regression_table() -> pd.DataFrame:
    # y = a_g + b_g x + e, with e = (+1, -1, -1, +1) × 0.001 at x = (0, 10, 20, 30): e sums to 0 and is
    # orthogonal to x (0 - 10 - 20 + 30 = 0), so OLS recovers a_g and b_g exactly while residuals are non-zero.
    lines = {"HOMO": (0.5, 0.002), "ID": (0.3, 0.004), "OOD": (0.4, -0.001)}
    e = np.array([1, -1, -1, 1]) * 0.001
    rows = []
    for g, (a, b) in lines.items():
        for xi, ei in zip([0.0, 10.0, 20.0, 30.0], e, strict=True):
            rows.append({"test_set": g, "consistency": xi, "ft_acc": a + b * xi + ei})
    return pd.DataFrame(rows)


def test_grouped_regression_recovers_group_slopes():
    fit = grouped_regression(_regression_table())
    p = fit.params
    assert p["Intercept"] == pytest.approx(0.5, abs=1e-12)
    assert p["consistency"] == pytest.approx(0.002, abs=1e-12)
    assert p["C(test_set)[T.ID]"] == pytest.approx(0.3 - 0.5, abs=1e-12)
    assert p["consistency:C(test_set)[T.ID]"] == pytest.approx(0.004 - 0.002, abs=1e-12)
    assert p["consistency:C(test_set)[T.OOD]"] == pytest.approx(-0.001 - 0.002, abs=1e-12)


def test_per_group_fits_exact_slopes_and_cis():
    fits = per_group_fits(_regression_table()).set_index("group")
    assert list(fits.index) == ["HOMO", "ID", "OOD"]
    assert fits.loc["ID", "slope"] == pytest.approx(0.004, abs=1e-12)
    assert fits.loc["OOD", "intercept"] == pytest.approx(0.4, abs=1e-12)
    assert (fits["n"] == 4).all()
    assert (fits["slope_lo"] < fits["slope"]).all() and (fits["slope"] < fits["slope_hi"]).all()
    assert ((fits["r2"] > 0.5) & (fits["r2"] < 1.0)).all()


def test_per_group_fits_derives_consistency_from_rank_corr():
    table = make_eval_table()
    fits = per_group_fits(table[table["group"].isin(["incompatible", "mixture", "self_aligning"])])
    assert set(fits["group"]) == {"HOMO", "ID", "OOD"}
    assert (fits["slope"] > 0).all()


# -------------------------------------------------------------------------------------------- intervals
def test_paired_diff_ci_by_hand():
    # diffs 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653 -> half width 2.484138
    res = paired_diff_ci([1.0, 2.0, 3.0])
    assert res["mean"] == 2.0 and res["n"] == 3
    assert res["lo"] == pytest.approx(2 - 4.302652729749464 / math.sqrt(3), abs=1e-9)
    assert res["hi"] == pytest.approx(2 + 4.302652729749464 / math.sqrt(3), abs=1e-9)
    one = paired_diff_ci([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["lo"]) and math.isnan(one["hi"])


def test_bootstrap_diff_paired_and_unpaired():
    b = np.array([0.1, 0.4, 0.2, 0.7, 0.5])
    same_shift = bootstrap_diff(b + 1.0, b, paired=True)
    assert same_shift["diff"] == pytest.approx(1.0)
    assert same_shift["lo"] == pytest.approx(1.0) and same_shift["hi"] == pytest.approx(1.0)
    unpaired = bootstrap_diff(b + 1.0, b, paired=False, seed=3)
    assert unpaired["lo"] < 1.0 < unpaired["hi"]
    assert bootstrap_diff(b + 1.0, b, seed=3) == unpaired  # same seed, same interval
    single = bootstrap_diff([1.0], [0.0])
    assert single["diff"] == 1.0 and math.isnan(single["lo"])
    with pytest.raises(ValueError):
        bootstrap_diff([1.0, 2.0], [1.0], paired=True)


# ---------------------------------------------------------------------------------------------- verdict
def test_group_differences_are_exact_paired_means():
    diffs = group_differences(make_eval_table(h=0.10, s=0.05, c=0.07))
    by = diffs.set_index(["claim", "test_set"])
    for ts in ("HOMO", "ID", "OOD"):
        assert by.loc[(CLAIM_HARMONIOUS, ts), "ours"] == pytest.approx(10.0)
        assert by.loc[(CLAIM_SELF_ALIGNING, ts), "ours"] == pytest.approx(5.0)
        assert by.loc[(CLAIM_CONTEXTUALIZED, ts), "ours"] == pytest.approx(7.0)
        assert by.loc[(CLAIM_HARMONIOUS, ts), "n"] == 12  # 2 models × 2 domains × 3 seeds
    assert by.loc[(CLAIM_CONTEXTUALIZED, "all"), "ours"] == pytest.approx(7.0)
    assert by.loc[(CLAIM_HARMONIOUS, "ID"), "paper"] == 14.58
    assert by.loc[(CLAIM_SELF_ALIGNING, "OOD"), "paper"] == 6.97
    assert by.loc[(CLAIM_CONTEXTUALIZED, "all"), "paper"] == pytest.approx((8.16 + 9.48 + 3.98) / 3, abs=0.005)


def test_verdict_when_every_claim_holds():
    table = make_eval_table(h=0.10, s=0.05, c=0.07, consistency_up=True)
    v = verdict(table, partial=None)
    assert list(v.columns[:6]) == ["claim", "model", "test_set", "ours", "lo", "hi"]
    assert {"paper", "supported", "reading", "note"} <= set(v.columns)
    assert set(v["claim"]) == {CLAIM_HARMONIOUS, CLAIM_SELF_ALIGNING, CLAIM_CONTEXTUALIZED, CLAIM_CONSISTENCY}
    assert v["supported"].all(), v[["claim", "test_set", "reading"]].to_string()
    homo = v[(v["claim"] == CLAIM_HARMONIOUS) & (v["test_set"] == "HOMO")].iloc[0]
    assert homo["lo"] > 0 and homo["lo"] < 10.0 < homo["hi"]
    assert homo["reading"].startswith("supported: +10.0 points [")
    assert "vs paper +11.27" in homo["reading"]
    corr = v[v["claim"] == CLAIM_CONSISTENCY]
    assert len(corr) == 6  # 2 models × 3 test sets
    assert (corr["ours"] > 0).all() and (corr["paper"] == 0.78).all()
    assert "7.21" in v.loc[v["claim"] == CLAIM_CONTEXTUALIZED, "note"].iloc[0]


def test_verdict_when_claims_fail():
    table = make_eval_table(h=-0.05, s=0.0, c=-0.02, consistency_up=False)
    v = verdict(table, partial=None, method="t")
    assert not v["supported"].any()
    homo = v[(v["claim"] == CLAIM_HARMONIOUS) & (v["test_set"] == "HOMO")].iloc[0]
    assert homo["reading"].startswith("contradicted: -5.0 points")
    self_al = v[(v["claim"] == CLAIM_SELF_ALIGNING) & (v["test_set"] == "ID")].iloc[0]
    assert self_al["lo"] < 0 < self_al["hi"]
    assert self_al["reading"].startswith("not supported (interval spans 0)")
    corr = v[v["claim"] == CLAIM_CONSISTENCY]
    assert (corr["ours"] < 0).all()
    assert corr["reading"].str.startswith("not supported (r <= 0)").all()


def test_verdict_with_given_partial_and_missing_groups():
    table = make_eval_table()
    table = table[table["group"] != "contextualized"]
    partial = {"m1": {"r": 0.5, "p": 0.2, "n": 10}, "m2": {"r": 0.9, "p": 0.001, "n": 30}}
    v = verdict(table, partial)
    corr = v[v["claim"] == CLAIM_CONSISTENCY].set_index("model")
    assert not corr.loc["m1", "supported"] and corr.loc["m2", "supported"]
    assert corr.loc["m1", "reading"].startswith("not supported (p >= 0.05)")
    assert corr.loc["m2", "lo"] < 0.9 < corr.loc["m2", "hi"]
    ctx = v[v["claim"] == CLAIM_CONTEXTUALIZED]
    assert ctx["ours"].isna().all() and not ctx["supported"].any()
    assert ctx["reading"].str.startswith("not run").all()
    frame = pd.DataFrame([{"model": "m1", "test_set": "HOMO", "r": 0.6, "p": 0.01, "n": 24}])
    assert verdict(table, frame).query("claim == @CLAIM_CONSISTENCY")["supported"].tolist() == [True]


def test_verdict_single_seed_is_inconclusive():
    table = make_eval_table()
    table = table[(table["seed"] == 0) & (table["model"] == "m1") & (table["domain"] == "d1")]
    v = verdict(table, partial={"m1": {"r": float("nan"), "p": float("nan"), "n": 3}})
    diffs = v[v["claim"] != CLAIM_CONSISTENCY]
    assert not diffs["supported"].any()
    assert diffs["reading"].str.startswith("inconclusive").all()


def test_partial_by_model_shapes():
    table = make_eval_table()
    per_ts = partial_by_model(table)
    assert list(per_ts.columns) == ["model", "test_set", "r", "p", "n", "unit"]
    assert len(per_ts) == 6 and (per_ts["n"] == 24).all()  # 2 domains × 4 ratios × 3 seeds
    assert per_ts["unit"].str.startswith("one point per replicate").all()
    pooled = partial_by_model(table, per_test_set=False)
    assert len(pooled) == 2 and (pooled["test_set"] == "pooled").all() and (pooled["n"] == 72).all()


def test_partial_by_model_unit_averages_replicates_and_ignores_controls():
    table = make_eval_table()
    controls = table[table["group"] == "harmonious"].assign(group="general_only", condition="general_only")
    no_ift = table[(table["group"] == "harmonious") & (table["seed"] == 0)].assign(
        group="no_ift", condition="no_ift", seed=-1)
    with_controls = pd.concat([table, controls, no_ift], ignore_index=True)
    assert partial_by_model(with_controls).equals(partial_by_model(table))
    mean = partial_by_model(with_controls, unit="mean")
    assert (mean["n"] == 8).all()  # 2 domains × 4 ratio conditions: the 3 seeds are one point
    assert mean["unit"].str.contains("averaged").all()
    # the averaged points are the seed means: same answer as averaging by hand first
    by_hand = (table[table["group"].isin(["incompatible", "mixture", "self_aligning"])]
               .groupby(["model", "domain", "condition", "test_set"], as_index=False)
               [["rank_corr", "ft_acc", "base_acc"]].mean())
    expect = partial_by_model(by_hand.assign(group="mixture"))
    assert mean["r"].to_numpy() == pytest.approx(expect["r"].to_numpy())
    with pytest.raises(ValueError, match="unit must be one of"):
        partial_by_model(table, unit="seed")


def _two_group_table(diffs_points: list[float]) -> pd.DataFrame:
    """One (model, domain, HOMO) with one seed per given harmonious − incompatible difference."""
    rows = []
    for seed, d in enumerate(diffs_points):
        common = {"model": "m", "domain": "d", "seed": seed, "test_set": "HOMO", "n": 100, "base_acc": 0.4,
                  "kl": 0.3, "rank_corr": 0.5, "ratio": np.nan}
        rows.append({**common, "condition": "r0.0", "group": "incompatible", "ft_acc": 0.40})
        rows.append({**common, "condition": "harmonious", "group": "harmonious", "ft_acc": 0.40 + d / 100})
    return pd.DataFrame(rows)


def test_few_pairs_get_a_t_interval_computed_by_hand():
    """Two pairs, +4 and +5 points: a percentile bootstrap would say [4, 5], 'supported'; the t interval is
    4.5 ± t(0.975, 1) · sd / √2 = 4.5 ± 12.7062 · 0.70711 / 1.41421 = [−1.853, 10.853]: not supported."""
    row = group_differences(_two_group_table([4.0, 5.0])).query("claim == @CLAIM_HARMONIOUS").iloc[0]
    assert row["ours"] == pytest.approx(4.5)
    assert (row["lo"], row["hi"]) == (pytest.approx(-1.8531, abs=1e-3), pytest.approx(10.8531, abs=1e-3))
    assert not row["supported"] and "t interval over 2" in row["reading"]
    forced = group_differences(_two_group_table([4.0, 5.0]), method="bootstrap").query(
        "claim == @CLAIM_HARMONIOUS").iloc[0]
    assert forced["lo"] == pytest.approx(4.0) and forced["supported"]  # why "auto" does not use it here


def test_twenty_pairs_use_the_bootstrap():
    diffs = [3.0 + (i % 5) for i in range(MIN_BOOTSTRAP_PAIRS)]
    row = group_differences(_two_group_table(diffs)).query("claim == @CLAIM_HARMONIOUS").iloc[0]
    assert f"paired bootstrap over {MIN_BOOTSTRAP_PAIRS}" in row["reading"] and row["supported"]


# ------------------------------------------------------------------------- zero-width intervals never support
def test_identical_pair_differences_never_count_as_support():
    """The smoke run's case: two pairs that both differ by +8.3 points gave [8.3, 8.3], 'supported'."""
    row = group_differences(_two_group_table([8.3, 8.3])).query("claim == @CLAIM_HARMONIOUS").iloc[0]
    assert row["lo"] == pytest.approx(8.3) and row["hi"] == pytest.approx(8.3)
    assert not row["supported"]
    assert row["reading"].startswith("inconclusive (interval of zero width)")


# ------------------------------------------------------------------------------ answers: question-level verdict
from ift_utils.statistics import (  # noqa: E402
    CLAIM_GENERAL_VS_NO_IFT,
    Z_MDE,
    answer_verdict,
    bootstrap_contrast,
    clean_answers,
    consistency_by_group,
    contrast_blocks,
    final_epoch,
    predict_mde,
    simulate_answers,
    simulated_true_difference,
    study_verdict,
    variance_components,
)


def _hand_answers() -> pd.DataFrame:
    """One domain, HOMO, 4 questions: no_ift once (seed -1), general_only and incompatible at seeds 0 and 1."""
    correct = {("no_ift", -1): [0, 0, 1, 0], ("general_only", 0): [1, 0, 1, 0], ("general_only", 1): [1, 1, 1, 0],
               ("incompatible", 0): [0, 0, 0, 0], ("incompatible", 1): [1, 0, 0, 0]}
    rows = [{"model": "m", "domain": "d", "condition": g, "group": g, "ratio": np.nan, "seed": s,
             "epoch": np.nan if g == "no_ift" else 3.0, "test_set": "HOMO", "id": q, "correct": c, "base_correct": 0}
            for (g, s), cs in correct.items() for q, c in enumerate(cs)]
    return pd.DataFrame(rows)


def test_untrained_control_pairs_with_every_replicate_and_estimates_are_exact_means():
    blocks = contrast_blocks(_hand_answers(), "general_only", "no_ift")
    assert len(blocks) == 1 and blocks[0].seeds == [0, 1]
    # general_only: 2/4 and 3/4 correct; no_ift 1/4 -> mean difference (25 + 50) / 2 = 37.5 points
    v = answer_verdict(_hand_answers(), n_boot=500)
    ctrl = v[v["claim"] == CLAIM_GENERAL_VS_NO_IFT].iloc[0]
    assert ctrl["ours"] == pytest.approx(37.5) and ctrl["kind"] == "control" and ctrl["supported"] is None
    assert ctrl["n_replicates"] == 2 and ctrl["n_questions"] == 4
    inc = v[v["claim"] == "incompatible − general_only"].iloc[0]
    assert inc["ours"] == pytest.approx(100 * (1 / 8 - 5 / 8))
    # the t cross-check is over the two replicates' differences, 25 and 50
    assert (ctrl["t_lo"], ctrl["t_hi"]) == (pytest.approx(37.5 - 12.7062 * 12.5, abs=1e-3),
                                            pytest.approx(37.5 + 12.7062 * 12.5, abs=1e-3))
    # paper claims without their groups say so; absent controls are left out
    assert v.loc[v["claim"] == CLAIM_HARMONIOUS, "reading"].iloc[0].startswith("not run")
    assert "harmonious − general_only" not in set(v["claim"])


def test_answer_level_zero_width_is_inconclusive():
    a = _hand_answers()
    a.loc[a["group"] == "general_only", "correct"] = 1
    a.loc[a["group"] == "incompatible", "correct"] = 0
    row = answer_verdict(a, n_boot=200).query("claim == 'incompatible − general_only'").iloc[0]
    assert row["ours"] == pytest.approx(-100.0) and row["lo"] == pytest.approx(row["hi"])
    assert row["reading"].startswith("inconclusive (interval of zero width)")


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


def _coverage(method: str, n_studies: int, design: dict, **kw) -> tuple[float, float, float]:
    """Coverage of the true difference, mean SE and the SD of the estimates over simulated studies."""
    truth = simulated_true_difference(0.2)
    hits, ses, ests = [], [], []
    for i in range(n_studies):
        a = simulate_answers({"harmonious": 0.2}, seed=i, **design)
        row = answer_verdict(a, method=method, contrasts=[c for c in _contrasts() if c.group == "harmonious"],
                             **kw).iloc[0]
        hits.append(row["lo"] <= truth <= row["hi"])
        ses.append(row["se"])
        ests.append(row["ours"])
    return float(np.mean(hits)), float(np.mean(ses)), float(np.std(ests, ddof=1))


def _contrasts():
    from ift_utils.statistics import CONTRASTS

    return CONTRASTS


def test_bootstrap_covers_a_known_effect_and_its_se_matches_the_spread():
    """100 simulated studies of 3 domains × 4 replicates × 100 questions (true difference +3.4 points): measured
    coverage 0.96 and SE 2.25 against an estimate SD of 2.30 at n_boot 1000 (the raw pigeonhole bootstrap: SE
    4.0 against 2.8 and coverage 1.00; its uncorrected variance with 2 replicates: coverage 0.60)."""
    cov, se, sd = _coverage("bootstrap", 100, {"n_domains": 3, "n_replicates": 4, "n_questions": 100},
                            n_boot=300)
    assert 0.90 <= cov <= 1.0
    assert 0.8 < se / sd < 1.25, (se, sd)


def test_predict_mde_by_hand_and_against_the_measured_se():
    comp = {"var_question": 0.02, "var_replicate": 0.003, "var_residual": 0.4}
    # Var = (0.02/100 + 0.003/3 + 0.4/300) / 2 = 0.00126667; MDE = 100 × 2.8016 × sqrt(Var)
    expected = 100 * (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * math.sqrt((0.0002 + 0.001 + 0.4 / 300) / 2)
    assert predict_mde(comp, n_domains=2, n_replicates=3, n_questions=100) == pytest.approx(expected)
    assert abs(Z_MDE - 2.8016) < 1e-4
    assert predict_mde(comp, 3, 6, 200) < predict_mde(comp, 3, 3, 200) < predict_mde(comp, 3, 3, 100)
    with pytest.raises(ValueError, match="n_replicates must be at least 1"):
        predict_mde(comp, 2, 0, 100)
    # components measured on one simulated study predict that study's own bootstrap MDE
    a = simulate_answers({"harmonious": 0.2}, n_domains=2, n_replicates=4, n_questions=150, seed=7)
    data, _ = clean_answers(a)
    blocks = contrast_blocks(data, "harmonious", "incompatible")
    measured = bootstrap_contrast(blocks, n_boot=4000)["HOMO"]
    predicted = predict_mde(variance_components(blocks), n_domains=2, n_replicates=4, n_questions=150)
    assert predicted == pytest.approx(Z_MDE * measured["se"], rel=0.1)


def test_study_verdict_has_mde_and_the_t_cross_check_with_or_without_answers():
    a = simulate_answers({"harmonious": 1.5, "self_aligning": 0.0, "contextualized": 0.0, "general_only": -0.3,
                          "no_ift": -0.6}, n_domains=2, n_replicates=3, n_questions=80, test_sets=("HOMO", "ID"),
                         seed=3)
    a.loc[a["group"] == "no_ift", "seed"] = -1  # one untrained control per domain and test set
    a = a.drop_duplicates(["group", "domain", "seed", "test_set", "id"])
    table = make_eval_table()
    v = study_verdict(table, a, n_boot=500)
    assert {"claim", "test_set", "ours", "lo", "hi", "paper", "supported", "reading", "mde", "t_lo",
            "t_hi"} <= set(v.columns)
    harm = v[(v["claim"] == CLAIM_HARMONIOUS)].set_index("test_set")
    assert harm["supported"].all() and (harm["mde"] > 0).all()
    # MDE = (t_0.975 + t_0.8) × SE with the interval's degrees of freedom: at least the normal 2.80 × SE
    assert (harm["mde"] >= Z_MDE * harm["se"] - 1e-9).all()
    assert harm["reading"].str.contains(r"MDE [\d.]+ = [\d.]+ × SE", regex=True).all()
    ctx = v[v["claim"] == CLAIM_CONTEXTUALIZED]
    assert list(ctx["test_set"]) == ["HOMO", "ID", "all"]
    assert ctx.set_index("test_set").loc["all", "ours"] == pytest.approx(ctx["ours"].iloc[:2].mean())
    nots = v[(v["kind"] == "claim") & ~v["supported"].astype(bool) & v["claim"].ne(CLAIM_CONSISTENCY)]
    assert nots["reading"].str.contains("smaller than .* points, if any", regex=True).any()
    controls = v[v["kind"] == "control"]
    assert set(controls["claim"]) == {CLAIM_GENERAL_VS_NO_IFT, "harmonious − general_only",
                                      "incompatible − general_only", "self_aligning − general_only",
                                      "contextualized − general_only"}
    assert controls["supported"].isna().all()
    corr = v[v["claim"] == CLAIM_CONSISTENCY]
    assert (corr["mde"] > 0).all() and corr["note"].str.contains("points: one point per replicate").all()
    # without answers.csv: the pair-level t interval, said so, with its MDE
    old = study_verdict(table)
    diffs = old[old["claim"] == CLAIM_HARMONIOUS]
    assert (diffs["method"] == "pair-level t (no answers.csv)").all() and (diffs["mde"] > 0).all()
    assert (diffs["t_lo"] == diffs["lo"]).all()


def test_glmm_recovers_the_bootstrap_estimate_on_one_study():
    a = simulate_answers({"harmonious": 0.5}, n_domains=2, n_replicates=2, n_questions=60, seed=11)
    g = answer_verdict(a, method="glmm").query("claim == @CLAIM_HARMONIOUS").iloc[0]
    b = answer_verdict(a, method="bootstrap", n_boot=1000).query("claim == @CLAIM_HARMONIOUS").iloc[0]
    assert g["method"] == "glmm" and g["ours"] == pytest.approx(b["ours"], abs=1.5)
    assert "glmm, 4 replicate(s) × 120 question(s)" in g["reading"]
    with pytest.raises(ValueError, match="verdict_method must be"):
        answer_verdict(a, method="anova")


def test_consistency_by_group_lists_the_controls_first():
    table = make_eval_table()
    ctrl = table[table["group"] == "harmonious"].assign(group="general_only", kl=0.9)
    out = consistency_by_group(pd.concat([table, ctrl]))
    assert list(out["group"].unique()) == ["general_only", "harmonious", "incompatible", "mixture",
                                           "self_aligning", "contextualized"]
    assert out.loc[out["group"] == "general_only", "kl"].tolist() == [0.9, 0.9, 0.9]
    assert list(out["test_set"].iloc[:3]) == ["HOMO", "ID", "OOD"]


def test_glmm_covers_a_known_effect():
    """15 small simulated studies (2 domains × 2 replicates × 50 questions) to keep the test short. Measured on
    40 studies of 2 domains × 3 replicates × 100 questions: coverage 0.975, SE 3.30 against an estimate SD of 3.05,
    6.5 s a study on a loaded 2-core machine (the bootstrap: 0.99, 3.15 against 2.85, 0.26 s)."""
    cov, se, sd = _coverage("glmm", 15, {"n_domains": 2, "n_replicates": 2, "n_questions": 50})
    assert cov >= 0.8
    assert 0.6 < se / sd < 1.7, (se, sd)


def test_one_replicate_per_domain_is_said_in_the_reading():
    a = _hand_answers()
    row = answer_verdict(a[a["seed"] <= 0], n_boot=200).query("claim == @CLAIM_GENERAL_VS_NO_IFT").iloc[0]
    assert row["ours"] == pytest.approx(25.0) and row["n_replicates"] == 1
    assert "one replicate per domain: the between-run variance is not estimable" in row["reading"]
