"""Multi-process training of a shard's cells outside the notebooks (python -m ift_utils.train_grid)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ift_utils.config import PROJECT_ROOT, load_params
from ift_utils.paths import RunPaths
from ift_utils.stages import grid

pytestmark = pytest.mark.slow


def test_two_processes_train_a_cell_that_stage_03_accepts(finished_copy, tmp_path):
    """torchrun with 2 CPU processes (gloo) retrains the first cell of the finished smoke run; the cell
    records 2 processes and the same fingerprint as the notebook's own, so stage 03 would skip it. ≈ 20 s: two
    processes each import torch, transformers and peft and load SmolLM2; one cell is the least that shows it."""
    copy = finished_copy
    P = load_params(PROJECT_ROOT / "params" / "smoke.yaml")
    shards = len(grid.grid(P))  # shard 0 of as many shards as cells holds the first cell only
    cell = grid.cell_dir(RunPaths(copy), grid.grid(P)[0])
    before = json.loads((cell / "train_config.json").read_text())
    shutil.rmtree(cell)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        "-m", "ift_utils.train_grid", "params/smoke.yaml", "-p", f"output_root={tmp_path}",
                        "-p", f"num_shards={shards}", "-p", "shard_index=0"],
                       cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"1 of 1 cell(s) of shard 1/{shards} trained" in r.stdout
    after = json.loads((cell / "train_config.json").read_text())
    assert (cell / "DONE").exists() and after["processes"] == 2
    assert after["fingerprint"] == before["fingerprint"]


def test_missing_groups_say_which_stages_to_run_first(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ift_utils.train_grid", "params/smoke.yaml", "-p",
                        f"output_root={tmp_path}"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and "--stages 01,02" in r.stderr
