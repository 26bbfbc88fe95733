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
    assert list(per_ts.columns) == ["model", "test_set", "r", "p", "n"]
    assert len(per_ts) == 6 and (per_ts["n"] == 24).all()  # 2 domains × 4 ratios × 3 seeds
    pooled = partial_by_model(table, per_test_set=False)
    assert len(pooled) == 2 and (pooled["test_set"] == "pooled").all() and (pooled["n"] == 72).all()


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
