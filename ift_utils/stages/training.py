"""Stage 03 (notebooks/03_training.ipynb): fine-tune one adapter (or full model) per cell of the grid on its
training file; finished cells are skipped, interrupted ones resume from their last checkpoint."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pandas as pd

from ift_utils.io import read_jsonl
from ift_utils.paths import RunPaths
from ift_utils.probing import score_mcqs
from ift_utils.stages.grid import GENERAL_ONLY, Cell, cell_data, cell_dir, conditions, device_of, train_method
from ift_utils.stages.shared import fit_items, ft_spec, read_mcq_file

log = logging.getLogger(__name__)


FIT_LOG = "fit_log.json"  # per epoch: fit on the cell's own facts and accuracy on the replicate's fit_dev slice
FOLLOWS_INCOMPATIBLE = ("contextualized", GENERAL_ONLY)  # trained as many epochs as the replicate's incompatible
_KEPT: dict = {}  # per process: the ModelKeeper (base model + tokenizer kept across cells) and the scoring tokenizer


def model_keeper():
    """This process's `ModelKeeper`: stage 03 trains every cell on one loaded base model, the adapter reset in place
    (the same result as a fresh build; ≈ 1.5 s a cell saved, and the compiled layers kept)."""
    from ift_utils.training import ModelKeeper

    return _KEPT.setdefault("keeper", ModelKeeper())


def _scoring_tokenizer(P):
    """The tokenizer fit is scored with (as stage 04 loads it), loaded once per process."""
    from ift_utils.models import load_tokenizer

    key = ("tok", P.model, P.allow_network, P.trust_remote_code, P.allow_pickle)
    if key not in _KEPT:
        _KEPT[key] = load_tokenizer(P.model, allow_network=P.allow_network, trust_remote_code=P.trust_remote_code,
                                    allow_pickle=P.allow_pickle)
    return _KEPT[key]


def train_config(P, seed: int, epochs: float | None = None):
    """The training configuration of a cell, from the params (`epochs`: a fixed count that overrides P.epochs)."""
    from ift_utils.training import TrainConfig

    n = P.epochs if epochs is None else epochs
    return TrainConfig(method=train_method(P), lora_r=P.lora_r, lora_alpha=P.lora_alpha, lora_dropout=P.lora_dropout,
                       epochs=n, learning_rate=P.learning_rate, lr_scheduler=P.lr_scheduler,
                       min_lr_ratio=P.min_lr_ratio, warmup_ratio=P.warmup_ratio, max_length=P.max_length,
                       batch_size=P.batch_size, grad_accum=P.grad_accum, seed=seed, bf16=device_of(P) == "cuda",
                       cpu_bf16={"auto": "auto", "on": True, "off": False}[P.cpu_bf16], compile=P.compile,
                       save_epochs=tuple(e for e in P.eval_epochs if e < n))


def dose_epochs(P, paths: RunPaths, cell: Cell) -> tuple[float, float] | None:
    """(epochs, early-stop epoch) for cells that do not train to fit: contextualized and general_only take the dose
    of the replicate's incompatible cell (the epochs it reached, and its early-stopping epoch, kept as a checkpoint
    so both readings compare like with like); None = this cell trains to fit."""
    from ift_utils.io import read_json

    if P.fit_target is None or cell.group not in FOLLOWS_INCOMPATIBLE:
        return None
    inc = next((Cell(cell.domain, name, group, ratio, cell.seed) for name, group, ratio in conditions(P)
                if group == "incompatible"), None)
    result = cell_dir(paths, inc) / "train_result.json" if inc else None
    if result is None or not result.exists():
        log.warning("%s: the replicate's incompatible cell is not trained (other shard?): training %g epochs",
                    cell.key, P.epochs)
        return float(P.epochs), math.nan
    return float(read_json(result)["epochs_completed"]), early_stop_epoch(fit_curve(paths, inc))


def fit_monitor(P, paths: RunPaths, cell: Cell, tok):
    """The `on_epoch_end` callback that trains a cell to fit: after each epoch it scores the cell's own training
    facts (share answered with the training target) and the replicate's fit_dev slice (accuracy), as stage 04
    scores test sets; it keeps the epoch's weights when held-out accuracy is the best so far (early-stopping
    checkpoint) or `eval_epochs` asks for it, and stops once fit reaches `fit_target`. Each epoch's numbers go to
    fit_log.json (atomic), so a resumed run keeps them."""
    from ift_utils.io import read_json, write_json
    from ift_utils.training import EpochDecision

    items = fit_items(paths, cell)
    if P.fit_target is None or not items:
        return None
    dev_file = cell_data(paths, cell).parent / "fit_dev.jsonl"
    dev = read_mcq_file(dev_file) if dev_file.exists() else []
    log_path = cell_dir(paths, cell) / FIT_LOG
    history = read_json(log_path) if log_path.exists() else {}

    def on_epoch_end(model, epoch: int) -> EpochDecision:
        scored = score_mcqs(model, tok, [*(it["mcq"] for it in items), *dev], ft_spec(P),
                            max_batch=P.batch_size_eval, show_progress=False)  # one pass: own facts, then fit_dev
        preds = scored["pred"].iloc[: len(items)]
        fit = float(np.mean([int(p) == it["target"] for p, it in zip(preds, items, strict=True)]))
        dev_acc = float(scored["correct"].iloc[len(items):].mean()) if dev else math.nan
        earlier = [v["dev_acc"] for k, v in history.items() if int(k) < epoch]
        best = not earlier or (dev_acc > max(earlier))
        history[str(epoch)] = {"epoch": epoch, "fit": fit, "dev_acc": dev_acc, "n_fit": len(items), "n_dev": len(dev)}
        write_json(log_path, history)
        log.info("%s epoch %d: fit %.2f, fit_dev accuracy %.2f", cell.key, epoch, fit, dev_acc)
        return EpochDecision(stop=fit >= P.fit_target, save=best or epoch in P.eval_epochs)

    return on_epoch_end


def train_cell(P, paths: RunPaths, cell: Cell, model_path: str, tok=None) -> dict:
    """Train one cell (skipped when finished with the same data and config; a stale result is redone): to fit with
    `fit_target`, else for a fixed number of epochs. `tok` is needed to score fit (loaded when not given)."""
    from ift_utils.training import TrainResult, cpu_bf16_kind, train_adapter

    examples = read_jsonl(cell_data(paths, cell))
    dose = dose_epochs(P, paths, cell)
    cfg = train_config(P, cell.seed, dose[0] if dose else None)
    if dose and math.isfinite(dose[1]) and dose[1] < dose[0]:
        cfg = replace(cfg, save_epochs=tuple(sorted({*cfg.save_epochs, int(dose[1])})))
    monitor = None
    if dose is None and P.fit_target is not None:
        monitor = fit_monitor(P, paths, cell, tok if tok is not None else _scoring_tokenizer(P))
    res: TrainResult = train_adapter(model_path, examples, cfg, cell_dir(paths, cell), on_epoch_end=monitor,
                                     keeper=model_keeper())
    curve = fit_curve(paths, cell)
    early = early_stop_epoch(curve) if dose is None else dose[1]
    prune_checkpoints(P, paths, cell, early)
    return {"cell": cell.key, "domain": cell.domain, "condition": cell.condition, "group": cell.group,
            "ratio": cell.ratio, "seed": cell.seed, "method": cfg.method, "precision": res.precision,
            "compile": cfg.compile, "cpu_bf16_kind": cpu_bf16_kind(),  # in the stage summary, so the manifest
            "compiled": res.compiled, "compiled_graphs": res.compiled_graphs,
            "first_step_seconds": res.first_step_seconds,
            "examples": res.n_examples, "epochs": res.epochs_completed, "stop": res.stop_reason,
            "early_stop_epoch": early, "fit": curve["fit"].iloc[-1] if len(curve) else math.nan,
            "steps": res.steps, "train_tokens": res.train_tokens, "seconds": round(res.seconds, 1),
            "tokens_per_s": round(res.train_tokens / res.seconds, 1) if res.seconds else math.nan,
            "peak_rss_mb": round(res.peak_rss_mb), "peak_gpu_mb": res.peak_gpu_mb,
            "first_loss": res.losses[0] if res.losses else math.nan,
            "last_loss": res.losses[-1] if res.losses else math.nan}


def fit_curve(paths: RunPaths, cell: Cell) -> pd.DataFrame:
    """A cell's fit and held-out (fit_dev) accuracy per epoch, from its fit log (empty when it trained a fixed dose)."""
    from ift_utils.io import read_json

    path = cell_dir(paths, cell) / FIT_LOG
    if not path.exists():
        return pd.DataFrame(columns=["epoch", "fit", "dev_acc"])
    return pd.DataFrame(sorted(read_json(path).values(), key=lambda r: r["epoch"]))


def early_stop_epoch(curve: pd.DataFrame) -> float:
    """Gekhman et al.'s EARLY_STOP checkpoint: the first epoch with the best held-out (fit_dev) accuracy."""
    if curve.empty or curve["dev_acc"].isna().all():
        return math.nan
    return float(curve.loc[curve["dev_acc"].idxmax(), "epoch"])


def prune_checkpoints(P, paths: RunPaths, cell: Cell, best: float) -> None:
    """Drop the early-stopping candidates that lost (kept: `best`, the early-stopping epoch; the eval_epochs; the
    final weights)."""
    import shutil

    folder = cell_dir(paths, cell) / "epochs"
    for d in sorted(folder.glob("epoch*")) if folder.exists() else []:
        e = int(d.name.removeprefix("epoch"))
        if e != best and e not in P.eval_epochs:
            shutil.rmtree(d, ignore_errors=True)


def fit_curves(paths: RunPaths, cells: list[Cell]) -> pd.DataFrame:
    """Every cell's fit curve in one long table (the dose each group received, epoch by epoch)."""
    frames = [fit_curve(paths, c).assign(domain=c.domain, condition=c.condition, group=c.group, seed=c.seed)
              for c in cells]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def loss_curves(paths: RunPaths, cells: list[Cell]) -> pd.DataFrame:
    """Every finished cell's loss per step, in one long table."""
    frames = []
    for c in cells:
        p = cell_dir(paths, c) / "loss.csv"
        if p.exists():
            frames.append(pd.read_csv(p).assign(domain=c.domain, condition=c.condition, seed=c.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def early_stop_of(P, paths: RunPaths, cell: Cell) -> float:
    """The epoch of a trained cell's early-stopping checkpoint (NaN when it trained a fixed dose without monitor)."""
    dose = dose_epochs(P, paths, cell)
    return early_stop_epoch(fit_curve(paths, cell)) if dose is None else dose[1]
