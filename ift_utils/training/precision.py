"""Precision and dropout of a cell on CPU: bf16 units and autocast, fp32 LoRA sums and attention,
`FastDropout`, and the fingerprint fields they enter."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ift_utils.training.config import TrainConfig

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
