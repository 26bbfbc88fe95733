"""Which test sets the early-stop checkpoint is scored on (`early_stop_sets`): validated by name, all of them in
the default study, HOMO only in the powered one; the convergence checkpoint is always scored on every set."""

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
    assert design_cost(design_of(power))["total_s"] / 60 == pytest.approx(264.3, abs=0.1)


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
