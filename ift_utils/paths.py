"""Where things are: the project root, the layout of one run folder, and the small file helpers every stage
uses to set up, cache per item and write its tables and summary."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ift_utils.io import read_json, read_jsonl, sha256_json, write_json, write_jsonl

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunPaths:
    """The layout of one run folder."""

    root: Path

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def probe(self) -> Path:
        return self.root / "probe"

    @property
    def groups(self) -> Path:
        return self.root / "groups"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def tables(self) -> Path:
        return self.root / "tables"


def open_run(P, run_dir: str | os.PathLike | None = None, *, uses_torch: bool = True) -> RunPaths:
    """Set up a stage: logging, threads, seeds, silenced library chatter; return the run's paths. A stage that
    never runs a model (05) passes uses_torch=False and starts without importing torch (1.5 s)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("bitsandbytes", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not P.allow_network:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if uses_torch:
        import torch

        if P.threads:
            torch.set_num_threads(P.threads)
    seed_everything(P.data_seed, torch=uses_torch)
    root = Path(run_dir) if run_dir else P.run_dir()
    root.mkdir(parents=True, exist_ok=True)
    return RunPaths(root)


def seed_everything(seed: int, *, torch: bool = True) -> None:
    """Seed python, numpy and (unless torch=False) torch: CPU runs are then deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    if torch:
        import torch as _torch

        _torch.manual_seed(seed)


def write_stage_summary(paths: RunPaths, stage: str, summary: dict) -> None:
    """Counts and facts a stage reports to the runner's manifest."""
    write_json(paths.stages / f"{stage}.json", summary)


def cached_frame(path: Path, key: dict, compute) -> pd.DataFrame:
    """Reuse `path` (JSONL) only when its sidecar key matches `key`; else compute, write, then write the key.

    The key is written after the data, so a crash in between leaves no key and the frame is recomputed."""
    key_path = path.with_suffix(".key.json")
    digest = sha256_json(key)
    if path.exists() and key_path.exists() and read_json(key_path).get("sha256") == digest:
        log.info("reusing %s (inputs unchanged)", path)
        return pd.DataFrame(read_jsonl(path))
    key_path.unlink(missing_ok=True)
    frame = compute()
    write_jsonl(path, frame.to_dict(orient="records"))
    write_json(key_path, {"sha256": digest})
    return frame


def write_table(frame: pd.DataFrame, paths: RunPaths, name: str) -> Path:
    """Write a result table as CSV under `tables/`."""
    from ift_utils.io import write_csv

    return write_csv(paths.tables / f"{name}.csv", frame)

