"""Fine-tune one cell: LoRA, QLoRA (4-bit NF4 base) or full fine-tuning of a causal LM on prompt -> response
pairs, with the loss on response tokens only, resumable checkpoints and a DONE marker written last.

Why a plain torch loop driven by `accelerate` instead of the HF Trainer: each thing this module needs is an
override of the Trainer (a `compute_loss` that applies the LM head only at response positions, a sampler that
groups batches by length from the seed, a checkpoint layout whose resume is bit-exact and written atomically),
and together they are about as much code as the loop itself, which is easier to read and to test.
`accelerate` still does device placement and DDP: `accelerate launch --num_processes N` runs this same code on
N GPUs (on CPU: `ACCELERATE_USE_CPU=true torchrun --nproc_per_node N`, gloo). Gradient accumulation is
`Accelerator.no_sync` over micro-batches with the loss weighted by token counts, so N processes x batch b equals
one process x batch b x grad_accum N.

Speed on CPU (benchmarks/training.py): the LM head runs only at response positions; the tokens every row of a
batch starts with (the chat template's system turn, ~21 of ~57 tokens in the default study) run once per batch and
their keys/values are broadcast to the rows (`shared_prefix`, same loss and gradients up to float rounding;
`prefix_sharing_ok` says where it falls back); `cpu_bf16` trains under bf16 autocast with fp32 master weights.

Epochs: `cfg.epochs` is the most; an `on_epoch_end(model, epoch)` callback may stop earlier and ask to keep an
epoch's weights (`EpochDecision`); its answers are checkpointed, so a resumed run neither asks again nor differs.

Determinism: data order is a function of (seed, epoch) only; LoRA init, dropout and everything else draw from
the torch/python/numpy generators seeded at the start and saved (per process) in every checkpoint, so an
interrupted run resumed from its last checkpoint ends with the same tensors as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ift_utils.encoding import encode_pair, special_prefix
from ift_utils.io import sha256_json, write_csv, write_json, write_text


class _DropKernelsNotice(logging.Filter):
    """Drop bitsandbytes' notice about the optional `kernels` package (we do not install it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


# Installed before bitsandbytes is first imported (by peft or transformers), which is when it logs.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsNotice())

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
    fast_dropout: bool = True  # on CPU: LoRA dropout masks from numpy's PCG64 (`FastDropout`), not torch's generator

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
        if self.cpu_bf16 not in ("auto", True, False):
            raise ValueError(f"TrainConfig.cpu_bf16 must be 'auto', True or False, got {self.cpu_bf16!r}")


# Added after cells were first trained: at these defaults they stay out of a cell's fingerprint, so cells finished
# before they existed are still recognized as finished. shared_prefix never enters it (it changes only rounding).
_LATER_DEFAULTS = {"min_lr_ratio": 0.0}
_SPEED_ONLY = ("shared_prefix",)
_RECORDED_AS_USED = ("cpu_bf16", "fast_dropout")  # enter the fingerprint as what the device actually ran


def config_fingerprint_fields(cfg: TrainConfig, cpu_autocast: bool, fast_dropout: bool = False) -> dict[str, Any]:
    """The config as a cell's fingerprint sees it: later fields at their defaults and speed-only fields left out,
    and whether CPU bf16 autocast and `FastDropout` were actually used (so "auto" on a CPU without bf16 units, or
    the same config on a GPU, is another cell; a cell that used neither keeps the fingerprint it had before)."""
    out = {k: v for k, v in asdict(cfg).items()
           if k not in (*_SPEED_ONLY, *_RECORDED_AS_USED)
           and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}
    if cpu_autocast:  # LoRA: frozen weights stored in bf16, LoRA and the sums in fp32 (full FT: fp32 masters)
        out["cpu_autocast"] = "bf16 frozen, fp32 LoRA sums" if cfg.method == "lora" else "bf16"
    if fast_dropout:
        out["dropout_masks"] = FastDropout.RNG
    return out


def fast_dropout_wanted(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a cell's LoRA dropout runs as `FastDropout`: asked, on CPU, with adapters and a rate above 0."""
    return cfg.fast_dropout and device.type == "cpu" and cfg.method != "full" and cfg.lora_dropout > 0


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


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AVX-512 BF16 or AMX), where bf16 autocast is faster than fp32."""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def cpu_autocast_wanted(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a cell trains under CPU bf16 autocast: asked (or "auto" with bf16 units), on CPU, not 4-bit."""
    if device.type != "cpu" or cfg.method == "qlora" or cfg.cpu_bf16 is False:
        return False
    return cfg.cpu_bf16 is True or cpu_has_bf16()


def frozen_bf16_wanted(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a cell stores its frozen weights in bf16 on CPU: LoRA under CPU bf16 autocast (`sum_lora_in_fp32`);
    such a model runs only under autocast, in training and in the `on_epoch_end` callback alike."""
    return cfg.method == "lora" and cpu_autocast_wanted(cfg, device)


def precision_label(cfg: TrainConfig, device: torch.device, cpu_autocast: bool) -> str:
    """The compute precision a cell trains in, for its result JSON."""
    if cpu_autocast and cfg.method == "lora":
        compute = "bf16 autocast, frozen weights bf16, LoRA weights and sums fp32"
    elif cpu_autocast:
        compute = "bf16 autocast, fp32 weights"
    elif cfg.bf16 and device.type == "cuda":
        compute = "bf16" if cfg.method == "lora" else "bf16 autocast, fp32 weights"
    else:
        compute = "fp32"
    return f"nf4 + {compute}" if cfg.method == "qlora" else compute


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

    @classmethod
    def read(cls, out_dir: Path) -> TrainResult:
        """Re-read a finished cell's result."""
        data = json.loads((Path(out_dir) / "train_result.json").read_text(encoding="utf-8"))
        data["out_dir"] = Path(out_dir)
        return cls(**data)


# ---------------------------------------------------------------------------------------------- data


def encode_example(tok: Any, prompt: str, response: str, max_length: int, *, bos: bool = True) -> dict | None:
    """Token ids and labels (-100 on the prompt) of prompt + response + eos; the prompt is cut from the left.

    Encoded by `ift_utils.encoding.encode_pair`, as evaluation encodes the same prompt and answer: prompt and response
    tokenized separately (so the mask is exact), the tokenizer's leading special tokens (BOS) when `bos`, kept when
    the prompt is cut. None when response + eos leaves no room for one prompt token (the response is never cut).
    """
    prompt_ids, response_ids = encode_pair(tok, prompt, response, bos=bos)
    response_ids.append(tok.eos_token_id)
    lead = special_prefix(tok) if bos else []
    if not lead or prompt_ids[: len(lead)] != lead:
        lead = []
    text_ids = prompt_ids[len(lead):]
    room = max_length - len(response_ids) - len(lead)
    if room < 1:
        return None
    truncated = len(text_ids) > room
    prompt_ids = lead + text_ids[-room:]
    return {"input_ids": prompt_ids + response_ids,
            "labels": [IGNORE] * len(prompt_ids) + response_ids,
            "truncated": truncated}


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one micro-batch to its own longest sequence (dynamic padding)."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's micro-batches: shuffled from (seed, epoch), sorted by length within groups of MEGABATCH
    batches to cut padding, batch order shuffled, the longest batch first (an out-of-memory shows at once)."""
    rng = np.random.default_rng([seed, epoch])
    lens = np.asarray(lengths)
    perm = rng.permutation(len(lens))
    batches: list[list[int]] = []
    group = batch_size * MEGABATCH
    for start in range(0, len(perm), group):
        chunk = perm[start:start + group]
        chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    longest = max(range(len(batches)), key=lambda i: (lens[batches[i]].max(), -i))
    batches.insert(0, batches.pop(longest))
    return batches


@dataclass(frozen=True)
class _Step:
    """One optimizer step: its epoch and the micro-batches of all processes (world * grad_accum of them)."""

    epoch: int
    micro: list[list[int]]


def plan_steps(lengths: Sequence[int], cfg: TrainConfig, world: int = 1) -> tuple[list[_Step], int]:
    """All optimizer steps of a run and the steps per epoch; with several processes the last step of an epoch
    is filled up from the epoch's first batches (as DistributedSampler does) so every process has work."""
    per_step = cfg.grad_accum * world
    per_epoch = math.ceil(math.ceil(len(lengths) / cfg.batch_size) / per_step)
    total = max(1, math.ceil(cfg.epochs * per_epoch - 1e-9))
    steps: list[_Step] = []
    epoch = 0
    while len(steps) < total:
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        for k in range(0, len(batches), per_step):
            micro = batches[k:k + per_step]
            if world > 1:
                micro += [batches[j % len(batches)] for j in range(per_step - len(micro))]
            steps.append(_Step(epoch, micro))
        epoch += 1
    return steps[:total], per_epoch


# ---------------------------------------------------------------------------------------------- models


def disable_cpu_repack(model: nn.Module) -> int:
    """Work around bitsandbytes' AVX512-BF16 CPU path: an eval-mode forward repacks 4-bit weights, and a later
    `state_dict()`/`save_pretrained` writes them corrupted (on tiny layers it crashes). Returns modules fixed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    fixed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            fixed += 1
    return fixed


def _resolve(model_path: str) -> str:
    """A registry name becomes its local folder; folders and hub ids pass through."""
    from ift_utils.models import MODEL_NAMES, resolve_model

    return resolve_model(model_path) if model_path in MODEL_NAMES else model_path


def bnb_config() -> Any:
    """QLoRA quantization: 4-bit NF4 with double quantization, compute in bf16 on GPU and fp32 on CPU."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def load_base(path: str, method: str, *, bf16: bool = False, device: str | torch.device | None = None) -> nn.Module:
    """The base model as a method trains on it: 4-bit NF4 for qlora (with the CPU work-around), else dense."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if method == "qlora":
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config(), dtype=torch.float32,
                                                     device_map={"": device}, use_safetensors=True)
        disable_cpu_repack(model)
        if device.type == "cpu":
            # The unquantized tensors (embeddings, norms) are views of the memory-mapped fp32 checkpoint, which
            # keeps all of its pages resident (~4 bytes/parameter in RSS); own copies release the mapping.
            with torch.no_grad():
                for t in [*model.parameters(), *model.buffers()]:
                    if type(t).__name__ != "Params4bit":
                        t.data = t.data.clone()
    else:
        dtype = torch.bfloat16 if (bf16 and method == "lora") else torch.float32  # full FT keeps fp32 masters
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device)
    model.config.use_cache = False
    return model


def _build_model(path: str, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Base model plus fresh LoRA adapters (or all weights trainable for full fine-tuning)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    frozen_bf16 = frozen_bf16_wanted(cfg, device)  # no fp32 master copy is needed for weights not trained
    model = load_base(path, cfg.method, bf16=cfg.bf16 or frozen_bf16, device=device)
    if cpu_autocast_wanted(cfg, device):
        use_fp32_attention(model)
    ckpt_kwargs = {"use_reentrant": False}
    with warnings.catch_warnings():  # peft still calls transformers' deprecated gradient-checkpointing names
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        if cfg.method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                    gradient_checkpointing_kwargs=ckpt_kwargs)
        elif cfg.gradient_checkpointing and hasattr(model, "activation_checkpointing_enable"):  # transformers 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        elif cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        if cfg.method != "full":
            targets = ATTENTION_TARGETS if cfg.target_modules == "attention" else cfg.target_modules
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=targets, bias="none", task_type="CAUSAL_LM")
            model = get_peft_model(model, lora)  # adapter weights in fp32 (peft's autocast_adapter_dtype)
    if fast_dropout_wanted(cfg, device):
        use_fast_dropout(model)
    if frozen_bf16:
        sum_lora_in_fp32(model)
    model.train()
    return model


class FastDropout(nn.Module):
    """Dropout as `nn.Dropout` applies it (each element zeroed with probability p, the others scaled so that the
    mean is kept), with the mask drawn by numpy's PCG64 from a seed that torch's generator draws.

    Why: peft drops out the input of every LoRA layer (210 in SmolLM2 with all-linear targets), and on CPU torch's
    per-element generator made that a quarter to a third of a training step (measured: 2.12 s vs 1.58 s a step
    without dropout, interleaved on the same batches; 1.91 s with these masks). Masks come from 16-bit draws: the
    rate is round(p * 65536) / 65536 (0.05 -> 0.0500031) and the scale 1 / (1 - that rate). The seed comes from
    torch's generator, so a run is deterministic and resumes exactly (checkpoints restore torch's state); the masks
    differ from `nn.Dropout`'s, so cells are other draws."""

    RNG = "numpy PCG64, 16-bit"

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.cut = round(p * 65536)  # a 16-bit draw below this drops its element

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)).item())
        draws = np.random.Generator(np.random.PCG64(seed)).integers(0, 65536, size=x.numel(), dtype=np.uint16)
        keep = torch.from_numpy(draws.view(np.int16)).view(x.shape) >= self.cut - 32768
        return x * keep * (65536 / (65536 - self.cut))

    def extra_repr(self) -> str:
        return f"p={self.p}, masks: {self.RNG}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace the dropout of every LoRA layer by `FastDropout` at the same rate; returns the layers changed."""
    from peft.tuners.lora.layer import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, drop in module.lora_dropout.items():
                if isinstance(drop, nn.Dropout) and drop.p > 0:
                    module.lora_dropout[name] = FastDropout(drop.p)
                    n += 1
    return n


def sum_lora_in_fp32(model: nn.Module) -> int:
    """Make each LoRA layer's frozen base output fp32, so that the adapter's small update is added to it in fp32.

    Under bf16 autocast the sum `base(x) + B(A(x))` is otherwise rounded to bf16 (8 significant bits), which
    drops most of an update that is still small against the base output: the loss then falls more slowly (on
    SmolLM2-135M the first step's effect was mostly lost: loss 1.88 instead of fp32's 1.68). Returns the layers."""
    from peft.tuners.lora.layer import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.get_base_layer().register_forward_hook(_output_fp32)
            n += 1
    return n


def _output_fp32(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def _sdpa_fp32(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA computed in fp32 and returned in the query's dtype: on CPU, torch's bf16 attention kernel is several
    times slower than its fp32 one (measured: 0.66 s vs 0.10 s of a SmolLM2 LoRA step), while bf16 matmuls gain."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):  # autocast would cast sdpa's inputs back to bf16
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(query.dtype), weights


def use_fp32_attention(model: nn.Module) -> bool:
    """Switch a transformers model from "sdpa" to SDPA in fp32 (for CPU bf16 autocast); False if it is not SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register("sdpa_fp32", _sdpa_fp32)
    AttentionMaskInterface.register("sdpa_fp32", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the same masks as SDPA
    model.set_attn_implementation("sdpa_fp32")
    return True


def _inner(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM module under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


PREFIX_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # plain DynamicCache decoders, checked equal
MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a second forward call


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """Tokens every row of a right-padded batch starts with that no loss position needs as a query (the chat
    template's system turn): the part `response_loss` may run once for the whole batch."""
    if input_ids.shape[0] < 2:
        return 0
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(dim=0)
    common = int(same.long().cumprod(0).sum())
    keep = (labels[:, 1:] != IGNORE).any(dim=0)  # hidden state at t predicts label t + 1
    first_needed = int(keep.long().argmax()) if bool(keep.any()) else input_ids.shape[1] - 1
    return min(common, first_needed, input_ids.shape[1] - 1)


def _prefix_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   prefix: int) -> torch.Tensor:
    """Hidden states of positions prefix.. of every row, the shared prefix run once (batch 1) and its keys and
    values broadcast to the batch (a view, not a copy); gradients flow through them into the adapter."""
    B, W = input_ids.shape
    head = backbone(input_ids=input_ids[:1, :prefix], use_cache=True)
    cache = getattr(head, "cache", None) or head.past_key_values
    for layer in cache.layers:
        layer.keys = layer.keys.expand(B, -1, -1, -1)
        layer.values = layer.values.expand(B, -1, -1, -1)
    pos = torch.arange(prefix, W, device=input_ids.device).expand(B, -1)
    out = backbone(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, position_ids=pos, cache=cache,
                   use_cache=True)
    return out.last_hidden_state


def response_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, response_only: bool = True,
                  shared_prefix: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over label positions and their count.

    response_only: run the backbone, keep the hidden states whose next token is a label and apply the LM
    head to those only (the vocabulary-sized head over every position is a large share of the cost: 1.3x
    faster steps on SmolLM2-135M with 25 % response tokens); otherwise the model's own full-logits loss.
    shared_prefix (with response_only): the tokens all rows start with (`shared_prefix_length`) run once per
    batch, not once per row; the caller checks the model supports it (`prefix_sharing_ok`).
    All give the same value up to float rounding. The head runs in fp32 on CPU and wherever its weight is fp32
    (also under bf16 autocast: it runs on the label positions only, and the loss keeps fp32 logits).
    """
    shifted = labels[:, 1:]
    keep = shifted != IGNORE
    count = keep.sum()
    if not response_only:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
        return out.loss * count, count
    inner = _inner(model)
    backbone = getattr(inner, inner.base_model_prefix)
    prefix = shared_prefix_length(input_ids, attention_mask, labels) if shared_prefix else 0
    if prefix >= MIN_SHARED_PREFIX:
        hidden = _prefix_hidden(backbone, input_ids, attention_mask, prefix)[:, :-1][keep[:, prefix:]]
    else:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        hidden = hidden[:, :-1][keep]
    lm_head = inner.get_output_embeddings()
    if lm_head.weight.dtype == torch.float32 or hidden.device.type == "cpu":
        with torch.autocast(hidden.device.type, enabled=False):
            logits = nn.functional.linear(hidden.float(), lm_head.weight.float(),
                                          None if lm_head.bias is None else lm_head.bias.float())
    else:
        logits = lm_head(hidden).float()
    config = getattr(inner.config, "get_text_config", lambda: inner.config)()
    if getattr(config, "final_logit_softcapping", None):  # Gemma-2/3 style heads
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    if getattr(config, "logit_scale", None):  # Cohere style heads
        logits = logits * config.logit_scale
    return nn.functional.cross_entropy(logits, shifted[keep], reduction="sum"), count


def prefix_sharing_ok(model: nn.Module, cfg: TrainConfig, world: int) -> tuple[bool, str]:
    """Whether a run may share the batch's common prefix, and why not: only single-process runs without
    gradient checkpointing (which drops the cache) on decoders whose cache was checked (PREFIX_MODEL_TYPES)."""
    if not cfg.shared_prefix:
        return False, "off in the config"
    if not cfg.response_only_logits:
        return False, "needs response_only_logits"
    if cfg.gradient_checkpointing:
        return False, "gradient checkpointing does not keep a key/value cache"
    if world > 1:
        return False, "not checked under DDP (several processes)"
    model_type = getattr(_inner(model).config, "model_type", "")
    if model_type not in PREFIX_MODEL_TYPES:
        return False, f"model type {model_type!r} not among the checked {PREFIX_MODEL_TYPES}"
    return True, ""


class _LossModule(nn.Module):
    """The model plus its loss in one forward, so DDP (which hooks `forward`) syncs the gradients."""

    def __init__(self, model: nn.Module, response_only: bool, bf16: bool, shared_prefix: bool = False) -> None:
        super().__init__()
        self.model = model
        self.response_only = response_only
        self.bf16 = bf16
        self.shared_prefix = shared_prefix

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return response_loss(self.model, input_ids, attention_mask, labels, self.response_only,
                                 self.shared_prefix)


# ---------------------------------------------------------------------------------------------- files


def is_done(out_dir: Path) -> bool:
    """A cell is finished once its DONE marker (written last) exists."""
    return (Path(out_dir) / DONE).exists()


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it onto `path` only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (renamed into place), oldest first."""
    root = out_dir / "checkpoints"
    found = [(int(p.name.split("-")[1]), p) for p in root.glob("step-*") if (p / "state.json").exists()]
    return sorted(found)


def _rng_state() -> dict[str, Any]:
    """Every generator the run draws from, in a form `torch.load(weights_only=True)` reads back."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `_rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the optimizer updates, by name (shared weights once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: Any, scheduler: Any,
                     rng_states: list[dict[str, Any]], progress: dict[str, Any]) -> None:
    """Write checkpoints/step-N atomically (trainable weights, optimizer, scheduler, each process's RNG,
    counters); keep only the newest."""
    from safetensors.torch import save_file

    root = out_dir / "checkpoints"
    with _atomic_dir(root / f"step-{step}") as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in _trainable(model).items()},
                  str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states, tmp / "rng.pt")
        write_json(tmp / "state.json", {"step": step, **progress})
    for old_step, old in _checkpoints(out_dir):
        if old_step != step:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, rank: int,
                     world: int) -> dict[str, Any]:
    """Restore a checkpoint into the freshly built model/optimizer/scheduler and this process's RNG; return
    its counters."""
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    params = _trainable(model)
    if saved.keys() != params.keys():
        raise RuntimeError(f"checkpoint {path} does not match the model's trainable parameters")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_states = torch.load(path / "rng.pt", weights_only=True)
    if len(rng_states) != world:
        log.warning("checkpoint %s was written by %d processes, now %d: random streams (dropout) restart from "
                    "process 0's, so the result differs from an uninterrupted run", path, len(rng_states), world)
    _set_rng_state(rng_states[rank if len(rng_states) == world else 0])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- memory


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (Linux), so the peak is this cell's, not the process lifetime's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak resident memory: /proc VmHWM (resettable) on Linux, else getrusage (psutil has no peak on Linux)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------------------------------------- training


def _versions() -> dict[str, str]:
    """Versions of the libraries that shape the training result."""
    import accelerate
    import peft
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
           "accelerate": accelerate.__version__}
    with contextlib.suppress(ImportError):
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    return out


def _ask_epoch_end(callback: Callable[[nn.Module, int], Any], model: nn.Module, epoch: int,
                   accelerator: Any, frozen_bf16: bool = False) -> EpochDecision:
    """Run `on_epoch_end` on the main process with the model in eval mode under no_grad, then restore train mode
    and every random generator (so what the callback draws does not change the rest of the run). frozen_bf16:
    the model trains with bf16 frozen weights on CPU (`sum_lora_in_fp32`), so it is asked under autocast too."""
    from accelerate.utils import broadcast_object_list

    answer = [None]
    if accelerator.is_main_process:
        rng = _rng_state()
        model.eval()
        try:  # a model whose frozen weights are bf16 on CPU runs only under autocast, as in training
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=frozen_bf16):
                answer = [EpochDecision.of(callback(model, epoch))]
        finally:
            model.train()
            _set_rng_state(rng)
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    return answer[0]


def train_adapter(model_path: str, examples: list[dict], cfg: TrainConfig, out_dir: Path,
                  progress: bool = True, *, on_step: Callable[[int, float], None] | None = None,
                  on_epoch_end: Callable[[nn.Module, int], EpochDecision | bool | None] | None = None
                  ) -> TrainResult:
    """Train one cell into out_dir (adapter or full weights, loss.csv, train_config.json, train_result.json,
    then DONE); a cell finished with the same data and config is skipped (one finished with others is
    trained again), an interrupted one resumes from its last checkpoint.

    examples: [{"prompt": chat-formatted text ending with the assistant opener, "response": answer text}].
    on_step(step, loss) is called after every optimizer step (and after its checkpoint, if any).
    on_epoch_end(model, epoch) is called after each full epoch (1-based; also after a last partial one) with
    the model in eval mode under no_grad, on the main process only; it returns an `EpochDecision` (stop now,
    keep this epoch's weights in epochs/epochN/), a bool (stop) or None (go on). Its answers are stored in the
    checkpoints and the result, so a resumed run does not ask again for epochs already decided. Random
    generators are restored after it, so it may sample. Not called for a finished cell.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from transformers import AutoTokenizer

    from ift_utils.progress import progress as tqdm

    out_dir = Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as Accelerator() picks it
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        device = torch.device("cpu")
    cpu_autocast = cpu_autocast_wanted(cfg, device)
    frozen_bf16 = frozen_bf16_wanted(cfg, device)  # asked once: `auto` reads /proc/cpuinfo
    fingerprint = sha256_json({"config": config_fingerprint_fields(cfg, cpu_autocast, fast_dropout_wanted(cfg, device)),
                               "model": model_path,
                               "examples": examples})
    if is_done(out_dir):
        saved = json.loads((out_dir / "train_config.json").read_text(encoding="utf-8"))
        if saved.get("fingerprint") == fingerprint:
            log.info("training cell %s is finished; skipped", out_dir)
            return TrainResult.read(out_dir)
        log.info("training cell %s was trained on other data or settings; training it again", out_dir)
        shutil.rmtree(out_dir)
    _reset_peak_rss()
    accelerator = Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    path = _resolve(model_path)

    tok = AutoTokenizer.from_pretrained(path)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded: list[dict] = []
    for ex in examples:
        enc = encode_example(tok, ex["prompt"], ex["response"], cfg.max_length, bos=ex.get("bos", True))
        if enc is not None:
            encoded.append(enc)
    n_dropped = len(examples) - len(encoded)
    if n_dropped:
        log.warning("%d of %d examples dropped: response + eos longer than max_length=%d",
                    n_dropped, len(examples), cfg.max_length)
    if not encoded:
        raise ValueError(f"no training example fits max_length={cfg.max_length}")
    lengths = [len(e["input_ids"]) for e in encoded]
    n_labels = [sum(label != IGNORE for label in e["labels"]) for e in encoded]
    steps, per_epoch = plan_steps(lengths, cfg, world)

    set_seed(cfg.seed)
    model = _build_model(path, cfg, accelerator.device)
    optimizer = torch.optim.AdamW(list(_trainable(model).values()), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, len(steps))
    # The scheduler is not prepared: its step count is already global (accelerate would step it once per process).
    share, why_not = prefix_sharing_ok(model, cfg, world)
    if cfg.shared_prefix and not share:
        log.info("%s: shared prefix off (%s); every row runs its whole sequence", out_dir.name, why_not)
    autocast = cfg.bf16 or cpu_autocast
    precision = precision_label(cfg, accelerator.device, cpu_autocast)
    wrapped = accelerator.prepare_model(_LossModule(model, cfg.response_only_logits, autocast, share),
                                        device_placement=cfg.method != "qlora")
    optimizer = accelerator.prepare_optimizer(optimizer)

    done = {"losses": [], "rows": [], "train_tokens": 0, "loss_tokens": 0, "seconds": 0.0, "peak_rss_mb": 0.0,
            "decisions": []}
    start = 0
    if accelerator.is_main_process:  # leftovers of a crash inside an atomic write
        for stale in [*out_dir.glob(".*.partial-*"), *(out_dir / "checkpoints").glob(".*.partial-*")]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    found = _checkpoints(out_dir)
    if found:
        state = json.loads((found[-1][1] / "state.json").read_text(encoding="utf-8"))
        if state.get("fingerprint") == fingerprint:
            state = _load_checkpoint(found[-1][1], model, optimizer, scheduler, rank, world)
            start = state["step"]
            done = {k: state.get(k, done[k]) for k in done}  # checkpoints older than "decisions" lack it
            log.info("resuming %s from step %d of %d", out_dir, start, len(steps))
        else:
            log.warning("checkpoints in %s are from another config or data set; starting over", out_dir)
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)

    bar = tqdm(total=len(steps), initial=start, desc=f"train {out_dir.name}", unit="step",
               disable=not progress or not accelerator.is_main_process)
    t0 = time.perf_counter()
    stopped = any(d["stop"] for d in done["decisions"])  # resumed after the callback asked to stop
    reached = start
    for index in range(start, len(steps) if not stopped else start):
        step = steps[index]
        mine = step.micro[rank * cfg.grad_accum:(rank + 1) * cfg.grad_accum] if world > 1 else step.micro
        n_global = sum(n_labels[i] for mb in step.micro for i in mb)
        loss_sum = torch.zeros((), device=accelerator.device)
        for k, mb in enumerate(mine):
            batch = {key: t.to(accelerator.device) for key, t in collate([encoded[i] for i in mb], pad_id).items()}
            sync = contextlib.nullcontext() if k == len(mine) - 1 else accelerator.no_sync(wrapped)
            with sync:
                summed, _ = wrapped(**batch)
                # token-weighted mean over the whole step; DDP averages gradients over processes, hence * world
                accelerator.backward(summed * world / n_global)
            loss_sum += summed.detach()
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(list(_trainable(model).values()), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss = float(accelerator.reduce(loss_sum, reduction="sum")) / n_global
        number = index + 1
        done["losses"].append(loss)
        done["rows"].append({"step": number, "epoch": round(number / per_epoch, 6), "loss": loss, "lr": lr})
        done["train_tokens"] += sum(lengths[i] for mb in step.micro for i in mb)
        done["loss_tokens"] += n_global
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        epoch_end = number == len(steps) or steps[number].epoch != step.epoch
        if epoch_end:
            epoch_losses = [done["losses"][i] for i in range(number) if steps[i].epoch == step.epoch]
            log.info("%s epoch %d/%s: %d steps, mean loss %.4f, %.0f tokens/s", out_dir.name, step.epoch + 1,
                     f"{cfg.epochs:g}", len(epoch_losses), float(np.mean(epoch_losses)),
                     done["train_tokens"] / max(done["seconds"] + time.perf_counter() - t0, 1e-9))
        decision = EpochDecision()
        if epoch_end and on_epoch_end is not None:
            decision = _ask_epoch_end(on_epoch_end, model, step.epoch + 1, accelerator,
                                      frozen_bf16=frozen_bf16)
            done["decisions"].append({"epoch": step.epoch + 1, "stop": decision.stop, "save": decision.save})
        stopped = decision.stop
        last = number == len(steps) or stopped
        keep = decision.save or (epoch_end and step.epoch + 1 in cfg.save_epochs and not last)
        if keep and accelerator.is_main_process:
            _save_epoch(out_dir, step.epoch + 1, accelerator.unwrap_model(wrapped).model, tok, cfg)
        checkpoint = (number % cfg.save_every == 0) if cfg.save_every else epoch_end
        if (checkpoint or stopped) and number < len(steps):  # a stop is saved, so a resumed run stops too
            # each process draws its own dropout masks, so every process's generators are saved
            rng_states = gather_object([_rng_state()]) if world > 1 else [_rng_state()]
            if accelerator.is_main_process:
                progress_state = {**done, "seconds": done["seconds"] + time.perf_counter() - t0,
                                  "peak_rss_mb": max(done["peak_rss_mb"], _peak_rss_mb()),
                                  "fingerprint": fingerprint}
                _save_checkpoint(out_dir, number, model, optimizer, scheduler, rng_states, progress_state)
            accelerator.wait_for_everyone()
        reached = number
        if on_step is not None:
            on_step(number, loss)
        if stopped:
            log.info("%s: on_epoch_end stopped training after epoch %d", out_dir.name, step.epoch + 1)
            break
    bar.close()
    seconds = done["seconds"] + time.perf_counter() - t0

    result = TrainResult(
        out_dir=out_dir, steps=reached, seconds=seconds, peak_rss_mb=max(done["peak_rss_mb"], _peak_rss_mb()),
        peak_gpu_mb=(torch.cuda.max_memory_allocated(accelerator.device) / 2**20
                     if accelerator.device.type == "cuda" else None),
        train_tokens=done["train_tokens"], losses=done["losses"], loss_tokens=done["loss_tokens"],
        n_examples=len(encoded), n_truncated=sum(e["truncated"] for e in encoded), n_dropped=n_dropped,
        precision=precision, shared_prefix=share, epochs_completed=round(reached / per_epoch, 6),
        stop_reason="callback" if stopped and reached < len(steps) else "max_epochs", decisions=done["decisions"])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_cell(out_dir, accelerator.unwrap_model(wrapped).model, tok, cfg, result,
                    {"model_path": model_path, "resolved_path": path, "fingerprint": fingerprint,
                     "processes": world, "steps_per_epoch": per_epoch, "planned_steps": len(steps),
                     "versions": _versions()},
                    done["rows"])
    accelerator.wait_for_everyone()
    return result


def _save_epoch(out_dir: Path, epoch: int, model: nn.Module, tok: Any, cfg: TrainConfig) -> None:
    """Keep the weights at the end of an epoch in epochs/epochN/ (adapter, or the whole model for full FT),
    written atomically so a half-written folder is never evaluated."""
    name = "model" if cfg.method == "full" else "adapter"
    with _atomic_dir(out_dir / "epochs" / f"epoch{epoch}" / name) as tmp:
        if cfg.method == "full":
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)


def _write_cell(out_dir: Path, model: nn.Module, tok: Any, cfg: TrainConfig, result: TrainResult,
                meta: dict[str, Any], rows: list[dict]) -> None:
    """Write the cell's outputs, DONE last; then drop the checkpoints, which are no longer needed."""
    import pandas as pd

    if cfg.method == "full":
        with _atomic_dir(out_dir / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    else:
        with _atomic_dir(out_dir / "adapter") as tmp:
            model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    write_csv(out_dir / "loss.csv", pd.DataFrame(rows, columns=["step", "epoch", "loss", "lr"]))
    write_json(out_dir / "train_config.json", {"config": asdict(cfg), **meta})
    write_json(out_dir / "train_result.json", {**asdict(result), "out_dir": str(out_dir)})
    write_text(out_dir / DONE, "ok\n")
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)


def load_trained(model_path: str, out_dir: Path, method: str, *, device: str | None = None,
                 merge: bool = False) -> nn.Module:
    """The fine-tuned model of a finished cell in eval mode: base (4-bit for qlora) + adapter, or full weights.

    merge=True folds a LoRA adapter into dense weights (faster to evaluate; not for qlora).
    """
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    if not is_done(out_dir):
        raise FileNotFoundError(f"training cell {out_dir} is not finished (no {DONE} marker)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(out_dir / "model", dtype=torch.float32, use_safetensors=True)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        from peft import PeftModel

        saved = json.loads((out_dir / "train_config.json").read_text(encoding="utf-8"))
        base = load_base(_resolve(model_path), method, bf16=saved["config"].get("bf16", False), device=device)
        model = PeftModel.from_pretrained(base, out_dir / "adapter")
        if merge and method == "lora":
            model = model.merge_and_unload()
    model.eval()
    return model


__all__ = ["TrainConfig", "TrainResult", "EpochDecision", "train_adapter", "make_scheduler", "cpu_has_bf16",
           "cpu_autocast_wanted", "precision_label", "prefix_sharing_ok", "shared_prefix_length",
           "config_fingerprint_fields", "load_trained", "is_done", "encode_example", "collate",
           "epoch_batches", "plan_steps", "response_loss", "disable_cpu_repack", "load_base", "bnb_config"]
