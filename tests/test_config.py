"""Parameter validation: every bad input gives one clear error naming the key, the value and what is allowed."""

import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ift_utils.config import PROJECT_ROOT, ParamError, StudyParams, load_params, parse_overrides


@pytest.mark.parametrize("name", ["smoke", "default", "paper"])
def test_shipped_params_are_valid(name, tmp_path):
    overrides = {"data_path": str(tmp_path)} if name == "paper" else {}  # paper data are the user's to provide
    P = load_params(PROJECT_ROOT / "params" / f"{name}.yaml", overrides)
    assert P.run_name == name


@pytest.mark.parametrize(("override", "needle"), [
    ({"k_shot": 20}, "k_shot"),
    ({"k_shot": "five"}, "k_shot"),
    ({"bogus_key": 1}, "unknown key 'bogus_key'"),
    ({"scoring": "logits"}, "'letter' or 'cloze'"),
    ({"ratios": [0.5, 2]}, "between 0 and 1"),
    ({"ratios": [0.5, 0.5]}, "must not repeat"),
    ({"confidence_threshold": 1.5}, "confidence_threshold"),
    ({"confidence_threshold": float("nan")}, "confidence_threshold"),
    ({"model": "someone/some-model"}, "allow_network"),
    ({"seeds": [-1]}, "seeds"),
    ({"domains": []}, "domains"),
    ({"domains": ["../../etc"]}, "domain"),
    ({"run_name": "../escape"}, "run_name"),
    ({"shard_index": 3, "num_shards": 2}, "shard_index"),
    ({"data_source": "jsonl"}, "data_path"),
    ({"epochs": 0}, "epochs"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"n_test": 10**9}, "n_test"),
    ({"allow_pickle": "sometimes"}, "allow_pickle"),
    ({"general_data": "/no/such/alpaca.json"}, "general_data"),
    ({"data_source": "jsonl", "data_path": "/no/such/folder"}, "data_path"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ParamError) as e:
        load_params(None, override)
    assert needle in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("k_shot: [1, 2\n")
    with pytest.raises(ParamError, match="not valid UTF-8 YAML"):
        load_params(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ParamError, match="mapping"):
        load_params(lst)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ParamError):
        load_params(latin)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n"])
def test_an_empty_params_file_is_refused_by_name(tmp_path, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ParamError, match=r"empty\.yaml.* is empty; set at least run_name"):
        load_params(empty)


def test_schema_defaults_are_the_default_study():
    """params/default.yaml and StudyParams' defaults are one study: every key the file sets equals the default."""
    from_file = yaml.safe_load((PROJECT_ROOT / "params" / "default.yaml").read_text())
    schema = StudyParams().model_dump()
    assert {k: v for k, v in from_file.items() if schema[k] != v} == {}
    assert load_params(PROJECT_ROOT / "params" / "default.yaml") == StudyParams()


def test_a_file_with_only_run_name_runs_the_default_study(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("run_name: mine\n")
    default = load_params(PROJECT_ROOT / "params" / "default.yaml").model_dump()
    assert load_params(f).model_dump() == {**default, "run_name": "mine"}


def test_smoke_and_paper_keep_their_own_sizes(tmp_path):
    """Where the schema's defaults became the default study's, smoke and paper set their own values."""
    became = ("n_train", "max_per_group", "explanation_max_new_tokens", "learning_rate", "max_length")
    for name in ("smoke", "paper"):
        assert set(became) <= set(yaml.safe_load((PROJECT_ROOT / "params" / f"{name}.yaml").read_text())), name
    smoke = load_params(PROJECT_ROOT / "params" / "smoke.yaml")
    assert (smoke.n_train, smoke.max_per_group, smoke.max_length) == (60, 4, 128)
    paper = load_params(PROJECT_ROOT / "params" / "paper.yaml", {"data_path": str(tmp_path)})
    assert (paper.n_train, paper.max_per_group) == (None, None)  # every training question, groups uncapped


def test_overrides_are_coerced_like_yaml():
    o = parse_overrides(["k_shot=5", "seeds=[0,1,2]", "scoring=letter", "allow_network=false", "n_train=null"])
    assert o == {"k_shot": 5, "seeds": [0, 1, 2], "scoring": "letter", "allow_network": False, "n_train": None}
    with pytest.raises(ParamError, match="key=value"):
        parse_overrides(["k_shot"])


def test_run_dir_stays_in_output_root():
    P = load_params(None, {"run_name": "abc"})
    assert P.run_dir().parent == (PROJECT_ROOT / "outputs").resolve()


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(StudyParams.model_fields)),
                       st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                                 st.text(max_size=20), st.lists(st.integers(-3, 3), max_size=4)), max_size=4))
def test_any_input_is_valid_or_a_param_error(overrides):
    try:
        P = load_params(None, overrides)
    except ParamError as e:
        assert "invalid parameters" in str(e)
    else:
        assert isinstance(P, StudyParams)


def test_cli_bad_param_exits_nonzero_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ift_utils.run", "params/smoke.yaml", "-p", "k_shot=99",
                        "-p", f"output_root={tmp_path}"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert "k_shot" in r.stderr and "<= 10" in r.stderr
    assert not any(tmp_path.iterdir())


def test_params_files_hold_only_known_keys():
    for p in (PROJECT_ROOT / "params").glob("*.yaml"):
        assert set(yaml.safe_load(p.read_text())) <= set(StudyParams.model_fields), p
