"""Stage 03 (notebooks/03_training.ipynb): fine-tune one adapter (or full model) per cell of the grid on its
training file; finished cells are skipped, interrupted ones resume from their last checkpoint."""

from __future__ import annotations

import math

import pandas as pd

from ift_utils.io import read_jsonl
from ift_utils.paths import RunPaths
from ift_utils.stages.grid import Cell, cell_data, cell_dir, device_of, train_method


def train_config(P, seed: int):
    """The training configuration of a cell, from the params."""
    from ift_utils.training import TrainConfig

    return TrainConfig(method=train_method(P), lora_r=P.lora_r, lora_alpha=P.lora_alpha, lora_dropout=P.lora_dropout,
                       epochs=P.epochs, learning_rate=P.learning_rate, warmup_ratio=P.warmup_ratio,
                       max_length=P.max_length, batch_size=P.batch_size, grad_accum=P.grad_accum, seed=seed,
                       bf16=device_of(P) == "cuda", save_epochs=tuple(e for e in P.eval_epochs if e < P.epochs))


def train_cell(P, paths: RunPaths, cell: Cell, model_path: str) -> dict:
    """Train one cell (skipped when finished with the same data and config; a stale result is redone)."""
    from ift_utils.training import TrainResult, train_adapter

    examples = read_jsonl(cell_data(paths, cell))
    cfg = train_config(P, cell.seed)
    res: TrainResult = train_adapter(model_path, examples, cfg, cell_dir(paths, cell))
    return {"cell": cell.key, "domain": cell.domain, "condition": cell.condition, "group": cell.group,
            "ratio": cell.ratio, "seed": cell.seed, "method": cfg.method, "examples": res.n_examples,
            "steps": res.steps, "train_tokens": res.train_tokens, "seconds": round(res.seconds, 1),
            "tokens_per_s": round(res.train_tokens / res.seconds, 1) if res.seconds else math.nan,
            "peak_rss_mb": round(res.peak_rss_mb), "peak_gpu_mb": res.peak_gpu_mb,
            "first_loss": res.losses[0] if res.losses else math.nan,
            "last_loss": res.losses[-1] if res.losses else math.nan}


def loss_curves(paths: RunPaths, cells: list[Cell]) -> pd.DataFrame:
    """Every finished cell's loss per step, in one long table."""
    frames = []
    for c in cells:
        p = cell_dir(paths, c) / "loss.csv"
        if p.exists():
            frames.append(pd.read_csv(p).assign(domain=c.domain, condition=c.condition, seed=c.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

