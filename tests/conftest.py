"""Shared fixtures: the tiny random model (built offline on first use), a few hand-made questions, and the
smoke study run once per session by the runner, with a network guard that records any attempt to go online."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FAULTS = Path(__file__).parent / "faults"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny random Llama."""
    import torch

    from ift_utils.models import load_model

    torch.manual_seed(0)
    return load_model("tiny-random")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): on 2 shared cores
    OpenMP spin-waiting makes tiny ops ~100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir() -> str:
    """The folder of the tiny random Llama (what train_adapter loads)."""
    from ift_utils.models import resolve_model

    return resolve_model("tiny-random")


@pytest.fixture(scope="session")
def tok(tiny_dir: str):
    """The tiny model's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def questions():
    from ift_utils.records import MCQ

    return [MCQ(id=i, question=f"In which country is the city of Town{i}{'x' * (i % 4)}?",
                choices=("France", "Spain", "Italy", "Germany"), answer=i % 4, domain="geo", subject="geography",
                context=f"Town{i} is a city in {('France', 'Spain', 'Italy', 'Germany')[i % 4]}.")
            for i in range(10)]


def run_study(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m ift_utils.run ARGS` from the project root, output captured."""
    from ift_utils.config import PROJECT_ROOT

    return subprocess.run([sys.executable, "-m", "ift_utils.run", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env=env)


def guarded_env(netlog: Path) -> dict:
    """The environment of a run with no help to stay offline (HF_*_OFFLINE unset) and the network guard on:
    the runner and its kernels load tests/faults/sitecustomize.py, which refuses and logs outside connections."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), env.get("PYTHONPATH")]))
    env["IFT_NETLOG"] = str(netlog)
    return env


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """(run folder, completed process, network log) of one smoke study run through all stages.

    The suite's slowest step (≈ 4.5 min on a 2-core EPYC): the real default model through five kernels, 12 training
    cells and 25 scored checkpoints; every end-to-end test reads this one run instead of running its own."""
    root = tmp_path_factory.mktemp("runs")
    netlog = root / "network_attempts.log"
    r = run_study("params/smoke.yaml", "-p", f"output_root={root}", "--quiet", env=guarded_env(netlog))
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "smoke", r, netlog


@pytest.fixture
def finished_copy(smoke, tmp_path):
    """A copy of the finished smoke run in tmp_path/smoke, to break without touching the shared one."""
    run_dir, *_ = smoke
    shutil.copytree(run_dir, tmp_path / "smoke", ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "smoke"
