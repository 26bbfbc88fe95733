"""Claim 4 and the regressions against independent computations: the paper's partial Spearman, the test that
controls domain and condition (null and planted simulations), grouped OLS, consistency tables, dose-response."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ift_utils.correlation import (
    consistency_by_group,
    consistency_test,
    dose_response,
    fitted_shares,
    grouped_regression,
    partial_by_model,
    partial_rank_test,
    partial_spearman,
    per_group_fits,
    simulate_cells,
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


def test_partial_by_model_shapes():
    table = make_eval_table()
    per_ts = partial_by_model(table)
    assert list(per_ts.columns) == ["model", "test_set", "r", "p", "n", "unit"]
    assert len(per_ts) == 6 and (per_ts["n"] == 24).all()  # 2 domains × 4 ratios × 3 seeds
    assert per_ts["unit"].str.startswith("one point per domain × replicate × ratio condition").all()
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




# ------------------------------------------------------------------------- claim 4: the test that controls
def test_partial_rank_test_by_hand_and_its_degrees_of_freedom():
    cells = simulate_cells(beta=0.5, n_domains=3, n_replicates=3, seed=4)
    res = partial_rank_test(cells, "rank_corr", "ft_acc", ("domain", "condition"))
    # covariates: 2 domain + 2 condition indicators -> df = 27 - 2 - 4 = 21
    assert res["n"] == 27 and res["k"] == 4 and res["df"] == 21
    # independent path: ranks, least squares on [1, indicators], Pearson of the residuals, t with 21 df
    design = np.column_stack([np.ones(27), pd.get_dummies(cells[["domain", "condition"]], drop_first=True,
                                                          dtype=float).to_numpy()])
    rx, ry = stats.rankdata(cells["rank_corr"]), stats.rankdata(cells["ft_acc"])
    ex = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
    ey = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
    r = np.corrcoef(ex, ey)[0, 1]
    assert res["r"] == pytest.approx(r, abs=1e-12)
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(r) * math.sqrt(21 / (1 - r * r)), 21), rel=1e-9)
    assert res["lo"] < res["r"] < res["hi"]
    # Bonett-Wright: z ± 1.96 × sqrt((1 + r²/2) / (n - 3 - k)), n - 3 - k = 20
    half = stats.norm.ppf(0.975) * math.sqrt((1 + r * r / 2) / 20)
    assert res["lo"] == pytest.approx(math.tanh(math.atanh(r) - half), abs=1e-12)
    assert res["hi"] == pytest.approx(math.tanh(math.atanh(r) + half), abs=1e-12)


def test_bonett_wright_interval_at_the_default_size_by_hand():
    """The default study's claim 4 on HOMO: 12 cells, k = 5 covariate columns (4 replicates, 3 conditions), so
    n - 3 - k = 4. At r = 0.90 the plain Fisher z interval tanh(atanh 0.9 ± 1.96 / 2) = [0.456, 0.985]; Bonett and
    Wright's variance (1 + 0.81/2) / 4 = 0.351 widens it to tanh(1.472 ± 1.96 × 0.593) = [0.301, 0.990]."""
    from ift_utils.correlation import partial_rank_test as prt

    cells = simulate_cells(beta=1.5, n_domains=2, n_replicates=2, seed=0)
    cells["replicate"] = cells["domain"] + "|" + cells["seed"].astype(str)
    res = prt(cells, "rank_corr", "ft_acc", ("replicate", "condition"))
    assert res["n"] == 12 and res["k"] == 5 and res["df"] == 5
    half = stats.norm.ppf(0.975) * math.sqrt((1 + 0.81 / 2) / 4)
    assert (math.tanh(math.atanh(0.9) - half), math.tanh(math.atanh(0.9) + half)) == pytest.approx((0.301, 0.990),
                                                                                                    abs=1e-3)
    r = res["r"]
    h = stats.norm.ppf(0.975) * math.sqrt((1 + r * r / 2) / 4)
    assert (res["lo"], res["hi"]) == pytest.approx((math.tanh(math.atanh(r) - h), math.tanh(math.atanh(r) + h)))


def _rates_at_12(beta: float, draws: int) -> dict[str, float]:
    """Claim 4 at the default study's size: 2 domains × 2 replicates × 3 ratio conditions = 12 cells."""
    rs, rej, excl = [], [], []
    for i in range(draws):
        cells = simulate_cells(beta=beta, n_domains=2, n_replicates=2, seed=i)
        cells["replicate"] = cells["domain"] + "|" + cells["seed"].astype(str)
        res = partial_rank_test(cells, "rank_corr", "ft_acc", ("replicate", "condition"))
        rs.append(res["r"])
        rej.append(res["p"] < 0.05)
        excl.append(not res["lo"] <= 0 <= res["hi"])
    return {"mean": float(np.nanmean(rs)), "reject": float(np.mean(rej)), "excludes_0": float(np.mean(excl))}


def test_claim4_null_and_planted_at_twelve_cells():
    """At the default study's 12 cells (5 residual df). Measured on 1,000 simulated studies each: null (beta 0)
    mean r -0.002, SD 0.41, t-test rejection 0.047, Bonett-Wright interval excluding 0 in 0.023; planted beta 1.5:
    mean r 0.72, rejection 0.57 (the power of a 12-cell study against a strong association). Here 150 null studies
    (rejection within 0.10: 2.7 binomial SEs above 0.05) and 60 planted (rejection above 0.35)."""
    null = _rates_at_12(0.0, 150)
    assert abs(null["mean"]) < 0.1 and null["reject"] <= 0.10 and null["excludes_0"] <= null["reject"] + 0.02, null
    planted = _rates_at_12(1.5, 60)
    assert planted["mean"] > 0.5 and planted["reject"] > 0.35, planted


def _rates(beta: float, draws: int = 200) -> dict[str, float]:
    """Claim 4's statistic over simulated studies (3 domains × 3 replicates × 3 ratio conditions), controlling
    replicate (which nests the domain) and condition, as consistency_test does: the test's
    mean r, its SD and rejection rate at 0.05, and the paper's statistic's rejection rate."""
    rs, rej, paper = [], [], []
    for i in range(draws):
        cells = simulate_cells(beta=beta, seed=i)
        cells["replicate"] = cells["domain"] + "|" + cells["seed"].astype(str)
        res = partial_rank_test(cells, "rank_corr", "ft_acc", ("replicate", "condition"))
        rs.append(res["r"])
        rej.append(res["p"] < 0.05)
        old = partial_spearman(cells.assign(consistency=cells["rank_corr"]), "consistency", "ft_acc", "base_acc")
        paper.append(old["p"] < 0.05)
    return {"mean": float(np.mean(rs)), "sd": float(np.std(rs, ddof=1)), "reject": float(np.mean(rej)),
            "paper_reject": float(np.mean(paper))}


def test_claim4_null_is_centred_on_zero_and_rejects_about_five_percent():
    """200 simulated studies with no association inside any replicate × condition (domains differ in mean
    consistency and accuracy, the ratio moves both, the cells of a replicate share an effect). Measured on these
    200: mean r -0.006, SD 0.27, rejection 0.070 (on 1,000: -0.001, 0.26, 0.056); the paper's statistic
    (controlling base accuracy, a step function of the domain) rejects in 0.985 of them."""
    null = _rates(0.0)
    assert abs(null["mean"]) < 0.05, null
    assert 0.01 <= null["reject"] <= 0.10, null
    assert null["paper_reject"] > 0.5, null  # why the paper's statistic is only the reproduction row


def test_claim4_finds_a_planted_association():
    """beta 1.5 (60 studies): mean r 0.76, rejection 0.97; beta 0.8 (200): 0.56, 0.71."""
    planted = _rates(1.5, draws=60)
    assert planted["mean"] > 0.5 and planted["reject"] > 0.8, planted


def test_consistency_test_rows_and_the_no_ift_reference():
    table = make_eval_table()
    rows = consistency_test(table)
    assert len(rows) == 6 and (rows["reference"] == "probe").all()
    assert (rows["df"] == rows["n"] - 2 - rows["k"]).all()
    # 2 domains × 3 seeds = 6 replicates (5 columns) + 4 ratio conditions (3 columns) -> k 8
    assert (rows["k"] == 8).all() and (rows["covariates"] == "replicate + condition").all()
    assert consistency_test(table, reference="no_ift").empty  # no rank_corr_no_ift column: nothing to test
    with_ref = table.assign(rank_corr_no_ift=table["rank_corr"] * 0.5, kl_no_ift=0.1)
    assert len(consistency_test(with_ref, reference="no_ift")) == 6
    out = consistency_by_group(with_ref)
    assert {"kl", "rank_corr", "kl_no_ift", "rank_corr_no_ift"} <= set(out.columns)
    assert "kl_no_ift" not in consistency_by_group(table).columns


def test_consistency_by_group_lists_the_controls_first():
    table = make_eval_table()
    ctrl = table[table["group"] == "harmonious"].assign(group="general_only", kl=0.9)
    out = consistency_by_group(pd.concat([table, ctrl]))
    assert list(out["group"].unique()) == ["general_only", "harmonious", "incompatible", "mixture",
                                           "self_aligning", "contextualized"]
    assert out.loc[out["group"] == "general_only", "kl"].tolist() == [0.9, 0.9, 0.9]
    assert list(out["test_set"].iloc[:3]) == ["HOMO", "ID", "OOD"]


# ------------------------------------------------------------------------------------ dose-response of fit
def _fit_tables(epochs: tuple[float, ...], slope_unknown: float = -20.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Eval and train_fit rows for harmonious and incompatible cells at the given epochs; accuracy falls by
    `slope_unknown` points per 100 % of unknown facts fitted (plus noise), and rises 5 points per known."""
    rng = np.random.default_rng(0)
    ev, fit = [], []
    for d in ("d0", "d1"):
        for s in range(3):
            for e in epochs:
                for g in ("harmonious", "incompatible"):
                    known = g == "harmonious"
                    share = min(1.0, e / 3 + rng.uniform(-0.1, 0.1))
                    acc = 0.5 + (0.05 * share if known else slope_unknown / 100 * share) + rng.normal(0, 0.01)
                    cell = {"model": "m", "domain": d, "condition": g, "group": g, "seed": s, "epoch": e}
                    ev.append({**cell, "test_set": "HOMO", "ft_acc": acc})
                    fit.append({**cell, "ratio": np.nan, "n": 48, "fit": share, "gold": share, "own": 0.0})
    return pd.DataFrame(ev), pd.DataFrame(fit)


def test_dose_response_recovers_the_unknown_slope_and_says_when_not_estimable():
    ev, fit = _fit_tables((1.0, 2.0, 3.0))
    out = dose_response(ev, fit).set_index("term")
    assert out.loc["unknown_fit", "coef"] == pytest.approx(-20.0, abs=3.0)
    assert out.loc["unknown_fit", "lo"] < -15 and out.loc["unknown_fit", "hi"] < 0
    assert out.loc["unknown_fit", "clusters"] == 6 and out.loc["unknown_fit", "checkpoints"] == 3
    one = dose_response(*_fit_tables((3.0,)))
    assert one["coef"].isna().all() and one["reading"].str.startswith("not identified: one checkpoint").all()


def _within_cell_tables(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The default design's cells (2 domains × 2 replicates × harmonious, incompatible, self-aligning, mixture) at
    two checkpoints (early stop, convergence). Within a cell accuracy moves −20 points per 100 % of unknown facts
    fitted and +5 per 100 % of known; across cells a cell effect of +40 × the cell's mean unknown share (groups
    that fit more unknown facts are better for other reasons), which a regression without cell effects mistakes for
    a slope. Harmonious has one checkpoint (it converges in one epoch)."""
    rng = np.random.default_rng(seed)
    ev, fit = [], []
    for d in ("d0", "d1"):
        for s in range(2):
            for g in ("harmonious", "incompatible", "self_aligning", "mixture"):
                epochs = (1.0,) if g == "harmonious" else (2.0, 5.0)
                level = {"harmonious": 0.0, "incompatible": 0.6, "self_aligning": 0.05, "mixture": 0.35}[g]
                cell_effect = 40 * level + rng.normal(0, 3)
                for e in epochs:
                    late = e == max(epochs)
                    gold = 0.0 if g == "harmonious" else min(1.0, level * (1.5 if late else 0.5) + rng.uniform(0, .05))
                    own = (0.9 if late else 0.6) * {"harmonious": 1, "incompatible": 0, "self_aligning": 1,
                                                     "mixture": 0.5}[g]
                    f = gold + own if g != "harmonious" else own
                    known, unknown = (f, 0.0) if g == "harmonious" else (f - gold, gold)
                    acc = 50 + cell_effect + 5 * known - 20 * unknown + rng.normal(0, 1.0)
                    cell = {"model": "m", "domain": d, "condition": g, "group": g, "seed": s, "epoch": e}
                    ev.append({**cell, "test_set": "HOMO", "ft_acc": acc / 100})
                    fit.append({**cell, "ratio": np.nan, "n": 48, "fit": f, "gold": gold, "own": own})
    return pd.DataFrame(ev), pd.DataFrame(fit)


def test_dose_response_with_cell_effects_recovers_the_within_cell_slope():
    """Known within-cell slopes −20 (unknown) and +5 (known), cell effects correlated with the unknown share. Over
    40 simulated studies (measured): unknown_fit −20.2 (SD 1.2), known_fit +5.4 (SD 1.9), the 95 % CR2 /
    Bell-McCaffrey intervals (mean 3.0 df, 4 replicate clusters) covering −20 in 37 of 40; a pooled regression
    without cell effects gives +0.6 for unknown_fit (the cell effect, wrong sign). One study here: within 4 points
    of −20, interval covering it, and every group has both shares defined (self-aligning fits known facts)."""
    ev, fit = _within_cell_tables(0)
    out = dose_response(ev, fit).set_index("term")
    assert out.loc["unknown_fit", "coef"] == pytest.approx(-20.0, abs=4.0)
    assert out.loc["unknown_fit", "lo"] < -20 < out.loc["unknown_fit", "hi"]
    assert out.loc["unknown_fit", "clusters"] == 4 and 1 <= out.loc["unknown_fit", "df"] <= 4
    assert out.loc["unknown_fit", "cells_varying"] == 12 and out.loc["unknown_fit", "cells"] == 16
    shares = fitted_shares(ev, fit)
    sa = shares[shares["group"] == "self_aligning"]
    assert (sa["known_fit"] > 0.5).all() and (sa["unknown_fit"] < 0.15).all()
    pooled = np.polyfit(shares["unknown_fit"], 100 * shares["ft_acc"], 1)[0]
    assert pooled > 0  # without cell effects the slope has the wrong sign


def test_cr2_is_hc2_with_one_observation_per_cluster():
    """With every observation its own cluster CR2 is HC2 (statsmodels' HC2 by hand check)."""
    import statsmodels.api as sm

    from ift_utils.correlation import cr2

    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(30), rng.normal(size=30)])
    y = x @ [1.0, 2.0] + rng.normal(size=30) * (1 + np.abs(x[:, 1]))
    got = cr2(x, y, np.arange(30), [1])[1]
    want = sm.OLS(y, x).fit(cov_type="HC2")
    assert got["coef"] == pytest.approx(want.params[1]) and got["se"] == pytest.approx(want.bse[1], rel=1e-9)
    assert 1 < got["df"] < 29
