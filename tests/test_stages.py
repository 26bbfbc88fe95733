"""The grid of cells, its sharding, and keyed caches that never reuse stale results."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ift_utils.config import load_params
from ift_utils.paths import RunPaths, cached_frame
from ift_utils.records import MCQ
from ift_utils.stages import evaluation as evaluation_stage
from ift_utils.stages import grid, shared
from ift_utils.stages import probe as probe_stage
from ift_utils.stages import training as training_stage


def test_grid_and_shards_cover_every_cell_once():
    P = load_params(None, {"ratios": [0, 0.5, 1], "seeds": [0, 1], "extra_groups": ["harmonious", "contextualized"]})
    cells = grid.grid(P)
    assert len(cells) == len(P.domains) * 6 * 2  # 3 ratios, 2 extra groups, the general_only control
    assert ("general_only", "general_only") in {(c.condition, c.group) for c in cells}
    assert not any(c.group == "no_ift" for c in cells)  # nothing to train: scored in stage 04
    groups = {(c.condition, c.group) for c in cells}
    assert ("ratio_0", "incompatible") in groups and ("ratio_1", "self_aligning") in groups
    assert ("ratio_0.5", "mixture") in groups and ("harmonious", "harmonious") in groups
    assert all(math.isnan(c.ratio) for c in cells if c.group in ("harmonious", "contextualized"))
    shards = [grid.my_cells(load_params(None, {"ratios": [0, 0.5, 1], "seeds": [0, 1], "num_shards": 3,
                                                "shard_index": i})) for i in range(3)]
    assert sorted(c.key for s in shards for c in s) == sorted(c.key for c in cells)


def test_cached_frame_recomputes_when_key_changes(tmp_path):
    calls = []

    def compute(v):
        calls.append(v)
        return pd.DataFrame({"x": [v]})

    p = tmp_path / "f.jsonl"
    assert cached_frame(p, {"k": 1}, lambda: compute(1))["x"][0] == 1
    assert cached_frame(p, {"k": 1}, lambda: compute(2))["x"][0] == 1  # reused
    assert cached_frame(p, {"k": 2}, lambda: compute(3))["x"][0] == 3  # key changed
    p.with_suffix(".key.json").unlink()  # a crash between data and key: recomputed, never trusted
    assert cached_frame(p, {"k": 2}, lambda: compute(4))["x"][0] == 4
    assert calls == [1, 3, 4]


def test_train_method_auto_is_lora_on_cpu():
    P = load_params(None, {"device": "cpu"})
    assert grid.train_method(P) == "lora"
    assert training_stage.train_config(P, 3).seed == 3


def test_eval_epochs_must_be_within_the_run_and_reach_training():
    import pytest

    from ift_utils.config import ParamError

    with pytest.raises(ParamError, match="eval_epochs"):
        load_params(None, {"epochs": 3, "eval_epochs": [1, 10]})
    P = load_params(None, {"epochs": 3, "eval_epochs": [1, 3]})
    assert training_stage.train_config(P, 0).save_epochs == (1,)  # the last epoch is the final model itself
    paths = RunPaths(Path("/run"))
    cell = grid.Cell("d", "ratio_0", "incompatible", 0.0, 0)
    assert [t[0] for t in evaluation_stage.eval_targets(P, paths, cell)] == [1.0, 3.0]
    assert evaluation_stage.eval_targets(P, paths, cell)[0][1] == Path("/run/train/d/ratio_0/seed0/epochs/epoch1/adapter")


def test_checkpoints_follow_the_fit_log_early_stop_then_convergence(tmp_path):
    """A cell trained to fit: the early-stopping checkpoint is the first epoch with the best held-out accuracy,
    the final weights are the epoch it reached; contextualized and general_only take the incompatible cell's dose
    (its epochs and its early-stopping epoch)."""
    from ift_utils.io import write_json

    P = load_params(None, {"epochs": 10, "fit_target": 0.9, "eval_epochs": [1]})
    paths = RunPaths(tmp_path)
    inc = grid.Cell("d", "ratio_0", "incompatible", 0.0, 0)
    out = grid.cell_dir(paths, inc)
    write_json(out / "train_result.json", {"epochs_completed": 5.0})
    write_json(out / training_stage.FIT_LOG, {str(e): {"epoch": e, "fit": f, "dev_acc": d} for e, f, d in
                                             [(1, .3, .50), (2, .5, .60), (3, .7, .60), (4, .8, .55), (5, .95, .58)]})
    targets = evaluation_stage.eval_targets(P, paths, inc)
    assert [(t[0], t[2], t[3]) for t in targets] == [(1.0, False, False), (2.0, True, False), (5.0, False, True)]
    assert training_stage.early_stop_epoch(training_stage.fit_curve(paths, inc)) == 2.0
    ctx = grid.Cell("d", "contextualized", "contextualized", float("nan"), 0)
    assert training_stage.dose_epochs(P, paths, ctx) == (5.0, 2.0)
    assert training_stage.dose_epochs(P, paths, grid.Cell("d", "harmonious", "harmonious", float("nan"), 0)) is None
    fixed = load_params(None, {"epochs": 3, "fit_target": None})
    assert training_stage.dose_epochs(fixed, paths, ctx) is None


def test_precision_follows_the_training_method():
    assert shared.precision_of(load_params(None, {"device": "cpu", "train_method": "qlora"})).startswith("nf4")
    assert shared.precision_of(load_params(None, {"device": "cpu", "train_method": "lora"})) == "fp32"


def test_answers_and_rows_pair_each_question_with_the_base_probe():
    cell = grid.Cell("d", "ratio_0", "incompatible", 0.0, 1)
    base = pd.DataFrame({"domain": ["d"] * 3, "id": [1, 2, 3], "probs": [[.9, .1], [.2, .8], [.6, .4]],
                         "correct": [True, False, True]})
    ft = pd.DataFrame({"domain": ["d"] * 3, "id": [3, 1, 2], "probs": [[.1, .9], [.8, .2], [.5, .5]],
                       "correct": [False, True, False]})
    ans = evaluation_stage.answer_rows(cell, "HOMO", base, ft, "m", 3.0)
    assert ans.sort_values("id")[["correct", "base_correct"]].to_numpy().tolist() == [[1, 1], [0, 0], [0, 1]]
    row = evaluation_stage.base_ft_rows(cell, "HOMO", base, ft, "m", 3.0)
    assert row["epoch"] == 3.0 and math.isclose(row["ft_acc"], 1 / 3) and math.isclose(row["base_acc"], 2 / 3)


def test_final_only_keeps_final_models_and_the_no_ift_control():
    P = load_params(None, {"epochs": 3, "eval_epochs": [1]})
    t = pd.DataFrame({"group": ["incompatible", "incompatible", grid.NO_IFT], "epoch": [1.0, 3.0, 0.0]})
    assert evaluation_stage.final_only(P, t)["epoch"].tolist() == [3.0, 0.0]


def test_permuted_options_map_back_to_the_original_order():
    q = MCQ(id=7, question="q?", choices=("a", "b", "c", "d"), answer=2)
    p, order = probe_stage.permuted(q, "s")
    assert [q.choices[i] for i in order] == list(p.choices) and p.choices[p.answer] == "c"
    assert probe_stage.permuted(q, "s") == (p, order)  # seeded


def test_robust_labels_need_the_same_answer_under_every_prompt():
    train = pd.DataFrame({"id": [1, 2, 3, 4, 5], "answer": [0, 0, 0, 0, 0], "popularity": [5.0] * 5,
                          "confidence": [.9, .9, .9, .3, .9], "correct": [True, False, False, False, True],
                          "pred": [0, 1, 1, 2, 0],
                          "variant_preds": [[0, 0, 0], [1, 1, 1], [1, 2, 1], [2, 2, 2], [0, 3, 0]]})
    t = probe_stage.belief_labels(train, 0.5)
    assert t["single"].tolist() == ["known", "wrong", "wrong", "unsure", "known"]
    assert t["robust"].tolist() == ["known", "wrong", "unstable", "wrong", "unstable"]
    assert t["belief"].tolist() == ["known", "wrong", "unstable", "unsure", "unstable"]
    one = probe_stage.belief_labels(train.drop(columns="variant_preds"), 0.5)  # one prompt: the paper's rule
    assert one["belief"].tolist() == one["single"].tolist()
    agree = probe_stage.label_agreement(train.assign(split="train", probe_domain="d"), 0.5)
    assert agree["n"].sum() == 5 and len(agree) == 5


def test_bos_follows_the_original_per_test_set_in_paper_mode_only():
    plain = load_params(None, {})
    assert all(shared.ft_spec(plain, t).bos for t in ("HOMO", "ID", "OOD", "TRAIN"))
    paper = load_params(None, {"prompt_style": "paper", "id_ood_source": "mmlu"})
    assert shared.ft_spec(paper, "HOMO").bos and shared.ft_spec(paper, grid.FIT_SET).bos
    assert not shared.ft_spec(paper, "ID").bos and not shared.ft_spec(paper, "OOD").bos


def test_the_pools_and_the_label_table_apply_one_belief_rule():
    """Stage 02's pools (interventions.split_by_belief) and notebook 01's label table (probe_stage.belief_labels) read
    the same probe: a fact is in the harmonious (incompatible) pool exactly when its label is known (wrong)."""
    from ift_utils.interventions import split_by_belief

    rng = np.random.default_rng(0)
    n = 300
    answer = rng.integers(0, 4, n)
    variants = [[int(v) for v in rng.choice(4, 3, p=[.7, .1, .1, .1])] for _ in range(n)]
    pred = np.array([v[0] for v in variants])
    probe = pd.DataFrame({"id": range(n), "answer": answer, "pred": pred, "correct": pred == answer,
                          "confidence": rng.uniform(.2, 1, n), "popularity": 1.0, "variant_preds": variants})
    qs = [MCQ(id=i, question=f"q{i}?", choices=("a", "b", "c", "d"), answer=int(a)) for i, a in enumerate(answer)]
    pools = split_by_belief(qs, probe, 0.5)
    labels = probe_stage.belief_labels(probe, 0.5).set_index("id")["belief"]
    assert sorted(q.id for q, _ in pools["harmonious_pool"]) == sorted(labels.index[labels == "known"])
    assert sorted(q.id for q, _ in pools["incompatible_pool"]) == sorted(labels.index[labels == "wrong"])
    assert sorted(pools["unstable"]) == sorted(labels.index[labels == "unstable"])
    assert min(len(pools[k]) for k in ("harmonious_pool", "incompatible_pool", "unstable")) > 10
