"""The two-checkpoint table of notebook 05: each checkpoint's answers go to the verdict under each score, and the
claim rows are joined side by side."""

from __future__ import annotations

import pandas as pd

from ift_utils.checkpoints import verdict_at_checkpoints


def _fake_verdict(table, answers, partial, score="correct", **kw):
    """A verdict stand-in: one claim row and one control row whose estimate records what it was given."""
    ours = 100.0 * answers[score].mean() + len(answers) / 1000
    return pd.DataFrame([
        {"claim": "harmonious > incompatible", "kind": "claim", "test_set": "HOMO", "ours": ours, "lo": ours - 1,
         "hi": ours + 1, "decision": f"{score}/{kw.get('method')}"},
        {"claim": "general_only - no_ift", "kind": "control", "test_set": "HOMO", "ours": 0.0, "lo": -1, "hi": 1,
         "decision": "descriptive"}])


def test_four_columns_per_field_and_only_claim_rows():
    answers = pd.DataFrame({"correct": [1, 0, 1, 1], "correct_cal": [0, 0, 1, 0],
                            "early_stop": [True, True, False, False], "final": [False, False, True, True]})
    table = pd.DataFrame({"early_stop": [True, False], "final": [False, True]})
    wide = verdict_at_checkpoints(table, answers, verdict_fn=_fake_verdict, method="anova")
    assert list(wide["claim"]) == ["harmonious > incompatible"]
    assert wide["ours (early stop, raw)"].iloc[0] == 100 * 0.5 + 0.002
    assert wide["ours (convergence, raw)"].iloc[0] == 100 * 1.0 + 0.002
    assert wide["ours (convergence, calibrated)"].iloc[0] == 100 * 0.5 + 0.002
    assert wide["decision (early stop, calibrated)"].iloc[0] == "correct_cal/anova"
    assert len(wide.columns) == 2 + 4 * 4


def test_without_calibrated_scores_or_checkpoints():
    answers = pd.DataFrame({"correct": [1, 0], "early_stop": [True, False], "final": [True, True]})
    table = pd.DataFrame({"early_stop": [True], "final": [True]})
    wide = verdict_at_checkpoints(table, answers, verdict_fn=_fake_verdict)
    assert [c for c in wide.columns if c.startswith("ours")] == ["ours (early stop, raw)", "ours (convergence, raw)"]
    assert verdict_at_checkpoints(table, answers.drop(columns="early_stop"), verdict_fn=_fake_verdict).empty
    assert verdict_at_checkpoints(table, None, verdict_fn=_fake_verdict).empty
