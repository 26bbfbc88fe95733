"""A training cell's settings and outcomes: `TrainConfig`, `EpochDecision`, `TrainResult`, the LR schedule."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

METHODS = ("lora", "qlora", "full")
LR_SCHEDULES = {"cosine": "cosine", "constant": "constant_with_warmup", "linear": "linear"}  # -> transformers' name
ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
IGNORE = -100
DONE = "DONE"
MEGABATCH = 50  # batches per length-sorted group (as transformers' LengthGroupedSampler)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training cell (effective batch = batch_size * grad_accum * number of processes)."""

    method: str = "lora"  # "lora" (fp32/bf16 LoRA), "qlora" (4-bit NF4 + double quant), "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # attention + MLP (peft's; not lm_head), or "attention"
    epochs: float = 3  # the most epochs; an `on_epoch_end` callback may stop earlier
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"  # one of LR_SCHEDULES; warm-up first in each
    min_lr_ratio: float = 0.0  # cosine decays to learning_rate * min_lr_ratio (0: to zero, as before)
    warmup_ratio: float = 0.03
    max_length: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    save_every: int = 0  # checkpoint every N optimizer steps (0 = at each epoch end); used to resume
    save_epochs: tuple[int, ...] = ()  # also keep the weights at the end of these epochs (epochs/epochN/), to evaluate
    seed: int = 0
    bf16: bool = False  # bf16 compute (GPU)
    cpu_bf16: str | bool = False  # on CPU: bf16 autocast, fp32 master weights; "auto" = where the CPU has bf16 units
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    gradient_checkpointing: bool = False
    response_only_logits: bool = True  # False: the plain full-logits loss (same value, slower; for benchmarks)
    shared_prefix: bool = True  # run the batch's common prefix once (same loss up to rounding); see prefix_sharing_ok
    fast_dropout: bool = True  # on CPU: LoRA dropout masks from `FastDropout` (numpy's, or hashed when compiled)
    compile: str = "off"  # decoder layers compiled by inductor: "on", "off", "auto" (dense LoRA / full FT)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"TrainConfig.method must be one of {METHODS}, got {self.method!r}")
        for name in ("lora_r", "max_length", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ValueError("TrainConfig.epochs and learning_rate must be > 0")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("TrainConfig.warmup_ratio and lora_dropout must be in [0, 1)")
        if self.save_every < 0:
            raise ValueError("TrainConfig.save_every must be >= 0")
        if self.lr_scheduler not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_scheduler must be one of {list(LR_SCHEDULES)}, got {self.lr_scheduler!r}")
        if not 0 <= self.min_lr_ratio < 1:
            raise ValueError("TrainConfig.min_lr_ratio must be in [0, 1)")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"TrainConfig.compile must be 'auto', 'on' or 'off', got {self.compile!r}")
        if self.cpu_bf16 not in ("auto", True, False):
            raise ValueError(f"TrainConfig.cpu_bf16 must be 'auto', True or False, got {self.cpu_bf16!r}")


@dataclass(frozen=True)
class EpochDecision:
    """What an `on_epoch_end` callback decides after an epoch: stop training now, keep this epoch's weights."""

    stop: bool = False
    save: bool = False

    @classmethod
    def of(cls, answer: Any) -> EpochDecision:
        """A callback's answer as a decision: None = go on, a bool = stop or not, or an EpochDecision."""
        if answer is None:
            return cls()
        if isinstance(answer, EpochDecision):
            return answer
        if isinstance(answer, bool):
            return cls(stop=answer)
        raise TypeError(f"on_epoch_end must return None, a bool or an EpochDecision, got {answer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    """The LR schedule of a run: warm-up over warmup_ratio of the steps, then cosine (down to min_lr_ratio of the
    peak), constant or linear, over all planned steps (the most epochs, whether or not a callback stops early)."""
    from transformers import get_scheduler

    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if cfg.lr_scheduler == "cosine" and cfg.min_lr_ratio > 0:
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                             scheduler_specific_kwargs={"min_lr_rate": cfg.min_lr_ratio})
    return get_scheduler(LR_SCHEDULES[cfg.lr_scheduler], optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)


@dataclass
class TrainResult:
    """What one finished cell reports (also stored in out_dir/train_result.json)."""

    out_dir: Path
    steps: int
    seconds: float  # wall time of the training loop, summed over resumed sessions (model loading excluded)
    peak_rss_mb: float
    peak_gpu_mb: float | None
    train_tokens: int  # non-padding tokens (prompt + response + eos) fed to the model, all epochs
    losses: list[float]  # mean response-token loss per optimizer step
    loss_tokens: int = 0  # response + eos tokens the loss was computed on, all epochs
    n_examples: int = 0  # examples kept
    n_truncated: int = 0  # examples whose prompt was cut from the left to fit max_length
    n_dropped: int = 0  # examples whose response + eos alone does not fit max_length
    precision: str = "fp32"  # compute precision trained in (see precision_label)
    shared_prefix: bool = False  # whether batches' common prefixes ran once per batch
    epochs_completed: float = 0.0  # epochs trained (fractional when cfg.epochs is)
    stop_reason: str = "max_epochs"  # "max_epochs", or "callback" when on_epoch_end stopped it before the last epoch
    decisions: list[dict] = field(default_factory=list)  # on_epoch_end's answers: {"epoch", "stop", "save"}
    compiled: bool = False  # whether the decoder layers ran compiled (`compile_layers`)
    compiled_graphs: int = 0  # graphs dynamo compiled during this cell (first compiles and recompiles)
    first_step_seconds: float = 0.0  # wall time of this session's first step (includes compiling, if any)

    @classmethod
    def read(cls, out_dir: Path) -> TrainResult:
        """Re-read a finished cell's result."""
        data = json.loads((Path(out_dir) / "train_result.json").read_text(encoding="utf-8"))
        data["out_dir"] = Path(out_dir)
        return cls(**data)
