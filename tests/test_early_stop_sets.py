"""Which test sets the early-stop checkpoint is scored on (`early_stop_sets`): validated by name, all of them in
the default study, HOMO only in the powered one; the convergence checkpoint is always scored on every set."""

import pandas as pd
import pytest
import yaml

from ift_utils.config import ParamError, load_params
from ift_utils.power import design_cost, design_of
from ift_utils.stages.evaluation import checkpoint_tests

TESTS = {"HOMO": ["h"], "ID": ["i"], "OOD": ["o"], "XD": ["x"]}


def test_default_scores_every_set_power_only_homo_at_early_stop():
    default, power = load_params("params/default.yaml"), load_params("params/power.yaml")
    assert default.early_stop_sets == "all" and power.early_stop_sets == ["HOMO"]
    assert checkpoint_tests(default, TESTS, early=True, final=False) == TESTS
    assert checkpoint_tests(power, TESTS, early=True, final=False) == {"HOMO": ["h"]}
    for early in (True, False):  # convergence (also when it serves as the early-stop reading): every set
        assert checkpoint_tests(power, TESTS, early=early, final=True) == TESTS
    assert checkpoint_tests(power, TESTS, early=False, final=False) == TESTS  # an eval_epochs checkpoint
    # the plan reads the same key: the powered design costs what params/power.yaml runs
    assert design_of(power).early_sets() == ("HOMO",)
    assert design_cost(design_of(power))["total_s"] / 60 == pytest.approx(60.6, abs=0.1)


@pytest.mark.parametrize(("value", "needle"), [
    ("[HOMO, FOO]", "unknown test set(s) ['FOO']; allowed: 'all' or a list of HOMO, ID, OOD, XD"),
    ("[]", "name at least one test set"),
    ("[HOMO, HOMO]", "test sets must not repeat"),
    ("some", "'some' is neither 'all' nor a list of test sets; allowed: 'all' or a list of HOMO, ID, OOD, XD"),
])
def test_bad_early_stop_sets_name_the_key_and_the_allowed_values(value, needle):
    with pytest.raises(ParamError) as e:
        load_params("params/default.yaml", {"early_stop_sets": yaml.safe_load(value)})
    assert str(e.value).splitlines()[1].strip().startswith("early_stop_sets: ") and needle in str(e.value)


def test_an_early_stop_decision_needs_homo_scored_at_early_stop():
    with pytest.raises(ParamError, match="decide_by.checkpoint early_stop needs HOMO in early_stop_sets"):
        load_params("params/power.yaml", {"decide_by": {"score": "raw", "checkpoint": "early_stop"},
                                          "early_stop_sets": ["ID", "OOD"]})
    ok = load_params("params/power.yaml", {"decide_by": {"score": "raw", "checkpoint": "early_stop"},
                                           "early_stop_sets": ["HOMO", "ID"]})
    assert ok.early_stop_sets == ["HOMO", "ID"]


def test_the_verdict_reads_an_early_stop_scored_on_homo_only():
    """Answers as stage 04 writes them with early_stop_sets [HOMO]: convergence on HOMO and ID, early stop on HOMO
    alone. Every reading is computed; at early stop the ID rows are absent, not wrong."""
    from ift_utils.power import simulate_answers
    from ift_utils.verdict import sensitivity_verdicts

    a = simulate_answers({"harmonious": 1.5, "self_aligning": 0.0}, n_domains=2, n_replicates=2, n_questions=30,
                         test_sets=("HOMO", "ID"), seed=3)
    a["correct_cal"] = a["correct"]
    early = a[a["test_set"] == "HOMO"].assign(early_stop=True, final=False)
    both = pd.concat([a.assign(early_stop=False, final=True), early], ignore_index=True)
    ev = (both.groupby(["model", "domain", "condition", "group", "ratio", "seed", "epoch", "test_set", "early_stop",
                        "final"], dropna=False).agg(ft_acc=("correct", "mean")).reset_index())
    table = ev.assign(base_acc=0.5, kl=0.3, rank_corr=0.5)
    long = sensitivity_verdicts(table, both, {"score": "raw", "checkpoint": "convergence"}, n_boot=100)
    claims = long[long["kind"] == "claim"]
    conv = set(claims.loc[claims["checkpoint"] == "convergence", "test_set"])
    es = set(claims.loc[claims["checkpoint"] == "early_stop", "test_set"])
    assert {"HOMO", "ID"} <= conv and "HOMO" in es and "ID" not in es
