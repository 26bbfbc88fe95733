"""The grid of cells, its sharding, and keyed caches that never reuse stale results."""

import math

import pandas as pd

from ift_utils import study
from ift_utils.config import load_params


def test_grid_and_shards_cover_every_cell_once():
    P = load_params(None, {"ratios": [0, 0.5, 1], "seeds": [0, 1], "extra_groups": ["harmonious", "contextualized"]})
    cells = study.grid(P)
    assert len(cells) == len(P.domains) * 5 * 2
    groups = {(c.condition, c.group) for c in cells}
    assert ("ratio_0", "incompatible") in groups and ("ratio_1", "self_aligning") in groups
    assert ("ratio_0.5", "mixture") in groups and ("harmonious", "harmonious") in groups
    assert all(math.isnan(c.ratio) for c in cells if c.group in ("harmonious", "contextualized"))
    shards = [study.my_cells(load_params(None, {"ratios": [0, 0.5, 1], "seeds": [0, 1], "num_shards": 3,
                                                "shard_index": i})) for i in range(3)]
    assert sorted(c.key for s in shards for c in s) == sorted(c.key for c in cells)


def test_cached_frame_recomputes_when_key_changes(tmp_path):
    calls = []

    def compute(v):
        calls.append(v)
        return pd.DataFrame({"x": [v]})

    p = tmp_path / "f.jsonl"
    assert study.cached_frame(p, {"k": 1}, lambda: compute(1))["x"][0] == 1
    assert study.cached_frame(p, {"k": 1}, lambda: compute(2))["x"][0] == 1  # reused
    assert study.cached_frame(p, {"k": 2}, lambda: compute(3))["x"][0] == 3  # key changed
    p.with_suffix(".key.json").unlink()  # a crash between data and key: recomputed, never trusted
    assert study.cached_frame(p, {"k": 2}, lambda: compute(4))["x"][0] == 4
    assert calls == [1, 3, 4]


def test_train_method_auto_is_lora_on_cpu():
    P = load_params(None, {"device": "cpu"})
    assert study.train_method(P) == "lora"
    assert study.train_config(P, 3).seed == 3
