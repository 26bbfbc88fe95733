"""The decision rule (the primary gates Holm over the other claim rows) and its study-wide error on simulated null
studies, and the test against the paper's effect with its four readings, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ift_utils.decision import gated_rejections, holm_rows
from ift_utils.verdict import (
    CLAIM_CONSISTENCY,
    CLAIM_CONTEXTUALIZED,
    CLAIM_GENERAL_VS_NO_IFT,
    CLAIM_HARMONIOUS,
    CLAIM_SELF_ALIGNING,
    adjust,
    holm,
)

ROWS = [*((c, t) for c in (CLAIM_HARMONIOUS, CLAIM_SELF_ALIGNING, CLAIM_CONTEXTUALIZED)
          for t in ("HOMO", "ID", "XD", "OOD")), (CLAIM_CONTEXTUALIZED, "all"),
        *((CLAIM_CONSISTENCY, t) for t in ("HOMO", "ID", "XD", "OOD"))]  # the default study's 17 claim rows


def _null_p(n: int, rho: float, seed: int) -> np.ndarray:
    """Two-sided p of 17 claim rows in n null studies: the 13 difference rows share the incompatible group (z
    equicorrelated with rho), claim 4's four rows independent of them."""
    rng = np.random.default_rng(seed)
    z = np.sqrt(rho) * rng.normal(size=(n, 1)) + np.sqrt(1 - rho) * rng.normal(size=(n, 13))
    return 2 * stats.norm.sf(np.abs(np.concatenate([z, rng.normal(size=(n, 4))], axis=1)))


def test_holm_rows_equals_holm():
    p = np.array([[0.04, np.nan, 0.01, 0.03, 0.5], [0.2, 0.01, np.nan, np.nan, 0.02]])
    for row in p:
        assert np.allclose(holm_rows(row[None, :])[0], holm(pd.Series(row)).to_numpy(), equal_nan=True)
    assert np.allclose(holm_rows(p)[0], [0.09, np.nan, 0.04, 0.09, 0.5], equal_nan=True)


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_study_wide_error_of_the_rule_on_null_studies(rho):
    """Study-wide error (any claim row supported or contradicted) on 20,000 simulated null studies of the default
    study's 17 claim rows: the rule (primary first, Holm over the rest only if it passes) 0.0508 (rho 0) and 0.0463
    (rho 0.5): alpha, as it must be, since only the primary can open the gate. The previous rule (the primary at
    alpha unadjusted, Holm at alpha over the others with no gate) 0.1008 (rho 0) and 0.0797 (rho 0.5): up to 2
    alpha. Tolerance: 3 binomial SEs of 20,000 draws (0.0046). End to end (answer tables at the default design,
    2 domains × 2 replicates × 100 questions on HOMO/ID/XD/OOD with 20 gold answers and an answer × group effect,
    the 13 difference rows through contrast_estimate and adjust; 400 null studies, too slow for the suite):
    the rule 0.0375, the previous rule 0.065."""
    p = _null_p(20_000, rho, seed=1)
    rule = gated_rejections(p[:, 0], p[:, 1:]).any(axis=1).mean()
    old = ((p[:, 0] < 0.05) | (holm_rows(p[:, 1:]) < 0.05).any(axis=1)).mean()
    assert rule <= 0.05 + 0.0046, rule
    assert old > 0.075, old


def test_rule_with_a_true_primary_holds_the_rest_at_alpha():
    """The primary has a real effect (z = 4: it passes almost always) and every other row is null: the error over
    the other rows is Holm's, 0.043 on 20,000 studies (rho 0.5), below alpha (3 SEs: 0.0046)."""
    p = _null_p(20_000, 0.5, seed=2)
    p[:, 0] = 2 * stats.norm.sf(4.0)
    rejected = gated_rejections(p[:, 0], p[:, 1:])
    assert rejected[:, 0].all() and rejected[:, 1:].any(axis=1).mean() <= 0.05 + 0.0046


def _rows(ps: dict, est: float = 3.0) -> pd.DataFrame:
    """Claim rows with given p (interval from the p: est ± 1.96 × SE, with SE from the p) and a control row."""
    out = []
    for (claim, ts), p in ps.items():
        se = abs(est) / stats.norm.isf(p / 2)
        out.append({"claim": claim, "kind": "claim", "test_set": ts, "ours": est, "lo": est - 1.96 * se,
                    "hi": est + 1.96 * se, "p": p, "se": se, "df": 1e6, "paper": 10.0, "n_replicates": 4,
                    "_detail": "hand"})
    out.append({"claim": CLAIM_GENERAL_VS_NO_IFT, "kind": "control", "test_set": "HOMO", "ours": 1.0, "lo": -1.0,
                "hi": 3.0, "p": 0.3, "paper": np.nan, "n_replicates": 4, "_detail": "hand"})
    return pd.DataFrame(out)


def test_a_primary_that_fails_closes_the_gate():
    """Primary p 0.06; S − I on HOMO p 0.001 (Holm over 2 rows: 0.002) is not decided: the gate is closed."""
    v = adjust(_rows({(CLAIM_HARMONIOUS, "HOMO"): 0.06, (CLAIM_SELF_ALIGNING, "HOMO"): 0.001,
                      (CLAIM_SELF_ALIGNING, "ID"): 0.5})).set_index(["claim", "test_set"])
    s = v.loc[(CLAIM_SELF_ALIGNING, "HOMO")]
    assert s["p_holm_all"] == pytest.approx(0.002) and s["gate"] == "closed"
    assert s["decision"] == "not supported" and s["reading"].startswith("not tested: the primary contrast did not")
    v = adjust(_rows({(CLAIM_HARMONIOUS, "HOMO"): 0.04, (CLAIM_SELF_ALIGNING, "HOMO"): 0.001,
                      (CLAIM_SELF_ALIGNING, "ID"): 0.5})).set_index(["claim", "test_set"])
    assert v.loc[(CLAIM_SELF_ALIGNING, "HOMO"), "decision"] == "supported"
    assert v.loc[(CLAIM_SELF_ALIGNING, "HOMO"), "gate"] == "open"


def test_against_the_paper_four_readings_by_hand():
    """Paper +10 (fixed), normal df. Rows (estimate, SE):
    - supported: H − I HOMO +6, SE 2 (p against 0: 0.0027, the primary); against the paper z = (6 − 10)/2 = −2,
      p = 0.0228;
    - smaller than the paper's: S − I HOMO +2, SE 2 (p 0.32; [−1.9, 5.9] holds 0); z = −4, p = 3.2e-5, Holm × 4
      = 1.3e-4 < 0.05;
    - inconclusive: S − I ID +4, SE 4 (p 0.32; [−3.8, 11.8] holds 0 and 10); z = −1.5, p = 0.0668;
    - contradicted: S − I OOD −8, SE 2 (p 6.3e-5, Holm over 2 others 1.3e-4); z = −9, p ≈ 0.
    Holm against the paper over the 4 rows: ≈0 × 4, 3.2e-5 × 3 = 9.5e-5, 0.0228 × 2 = 0.0455, 0.0668 × 1; so the
    supported row reads "supported, smaller than the paper's"."""
    spec = {(CLAIM_HARMONIOUS, "HOMO"): (6.0, 2.0), (CLAIM_SELF_ALIGNING, "HOMO"): (2.0, 2.0),
            (CLAIM_SELF_ALIGNING, "ID"): (4.0, 4.0), (CLAIM_SELF_ALIGNING, "OOD"): (-8.0, 2.0)}
    rows = []
    for (claim, ts), (est, se) in spec.items():
        rows.append({"claim": claim, "kind": "claim", "test_set": ts, "ours": est, "lo": est - 1.96 * se,
                     "hi": est + 1.96 * se, "p": float(2 * stats.norm.sf(abs(est) / se)), "se": se, "df": 1e9,
                     "paper": 10.0, "n_replicates": 4, "_detail": ""})
    v = adjust(pd.DataFrame(rows)).set_index(["claim", "test_set"])
    assert v.loc[(CLAIM_HARMONIOUS, "HOMO"), "p_vs_paper"] == pytest.approx(0.02275, abs=1e-5)
    assert v.loc[(CLAIM_HARMONIOUS, "HOMO"), "p_vs_paper_holm"] == pytest.approx(2 * 0.02275, abs=1e-4)
    assert v.loc[(CLAIM_SELF_ALIGNING, "HOMO"), "p_vs_paper_holm"] == pytest.approx(3 * 3.167e-5, rel=1e-3)
    assert v.loc[(CLAIM_SELF_ALIGNING, "ID"), "p_vs_paper_holm"] == pytest.approx(0.0668, abs=1e-4)
    labels = v["vs_paper"].to_dict()
    assert labels[(CLAIM_HARMONIOUS, "HOMO")] == "supported, smaller than the paper's"
    assert labels[(CLAIM_SELF_ALIGNING, "HOMO")] == "smaller than the paper's"
    assert labels[(CLAIM_SELF_ALIGNING, "ID")] == "inconclusive"
    assert labels[(CLAIM_SELF_ALIGNING, "OOD")] == "contradicted"
    text = v.loc[(CLAIM_SELF_ALIGNING, "HOMO"), "reading_vs_paper"]
    assert "+2.0 points [-1.9, 5.9]" in text and "Holm-adjusted < 0.001" in text and "7B-13B" in text
    assert "holds both 0 and the paper" in v.loc[(CLAIM_SELF_ALIGNING, "ID"), "reading_vs_paper"]


def test_against_the_paper_a_row_held_by_the_gate_reads_smaller_not_inconclusive():
    """Paper +10. The primary H − I HOMO +1, SE 2 ([−2.9, 4.9], p 0.62) does not pass, so the gate holds every other
    row. S − I ID +3, SE 1 has an unadjusted interval [1.04, 4.96] that leaves 0 out (p 0.0027) but is not decided;
    against the paper z = (3 − 10)/1 = −7, p ≈ 1e-12, so it reads "smaller than the paper's", not "inconclusive"."""
    spec = {(CLAIM_HARMONIOUS, "HOMO"): (1.0, 2.0), (CLAIM_SELF_ALIGNING, "ID"): (3.0, 1.0)}
    rows = [{"claim": c, "kind": "claim", "test_set": ts, "ours": e, "lo": e - 1.96 * s, "hi": e + 1.96 * s,
             "p": float(2 * stats.norm.sf(abs(e) / s)), "se": s, "df": 1e9, "paper": 10.0, "n_replicates": 4,
             "_detail": ""} for (c, ts), (e, s) in spec.items()]
    v = adjust(pd.DataFrame(rows)).set_index(["claim", "test_set"])
    row = v.loc[(CLAIM_SELF_ALIGNING, "ID")]
    assert row["decision"] == "not supported" and row["lo"] > 0
    assert row["vs_paper"] == "smaller than the paper's"
    assert "leaves out 0" in row["reading_vs_paper"] and "+3.0 points [1.0, 5.0]" in row["reading_vs_paper"]
    assert v.loc[(CLAIM_HARMONIOUS, "HOMO"), "vs_paper"] == "smaller than the paper's"
