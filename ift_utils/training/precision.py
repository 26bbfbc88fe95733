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
_SPEED_ONLY = ("shared_prefix", "compile")  # compile: rounding only (its dropout masks enter as used)
_RECORDED_AS_USED = ("cpu_bf16", "fast_dropout")  # enter the fingerprint as what the device actually ran


def config_fingerprint_fields(cfg: TrainConfig, cpu_autocast: bool,
                              fast_dropout: bool | str = False) -> dict[str, Any]:
    """The config as a cell's fingerprint sees it: later fields at their defaults and speed-only fields left out,
    and whether CPU bf16 autocast and `FastDropout` (which masks) were actually used (so "auto" on a CPU without bf16 units, or
    the same config on a GPU, is another cell; a cell that used neither keeps the fingerprint it had before)."""
    out = {k: v for k, v in asdict(cfg).items()
           if k not in (*_SPEED_ONLY, *_RECORDED_AS_USED)
           and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}
    if cpu_autocast:  # LoRA: frozen weights stored in bf16, LoRA and the sums in fp32 (full FT: fp32 masters)
        out["cpu_autocast"] = "bf16 frozen, fp32 LoRA sums" if cfg.method == "lora" else "bf16"
    if fast_dropout:  # True or "numpy": numpy's masks (as before); "hash": the traceable ones of compiled training
        out["dropout_masks"] = FastDropout.RNG_HASH if fast_dropout == "hash" else FastDropout.RNG
    return out


def dropout_masks(cfg: TrainConfig, device: torch.device) -> str | bool:
    """Which `FastDropout` masks a cell draws: "hash" when its layers are compiled, "numpy" in eager, False when
    `FastDropout` is not used (what enters the fingerprint)."""
    if not fast_dropout_wanted(cfg, device):
        return False
    return "hash" if compile_wanted(cfg, device) else "numpy"


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


def cpu_bf16_kind() -> str:
    """Which bf16 matrix units this CPU has, for manifests and benchmarks: "AMX", "AVX-512 BF16" or "none"."""
    with contextlib.suppress(OSError):
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
        if "amx_bf16" in flags:
            return "AMX" + (" + AVX-512 BF16" if "avx512_bf16" in flags else "")
        return "AVX-512 BF16" if "avx512_bf16" in flags else "none"
    return "AVX-512 BF16 or AMX" if cpu_has_bf16() else "none"


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
    mean is kept), with masks from 16-bit draws that are cheaper than torch's per-element generator on CPU.

    Why: peft drops out the input of every LoRA layer (210 in SmolLM2 with all-linear targets), and on CPU torch's
    per-element generator made that a quarter to a third of a training step (measured: 2.12 s vs 1.58 s a step
    without dropout, interleaved on the same batches; 1.91 s with numpy's masks). The rate is round(p * 65536) /
    65536 (0.05 -> 0.0500031) and the scale 1 / (1 - that rate). Two mask generators:
    - "numpy" (eager training, as before): numpy's PCG64 from a seed that torch's generator draws in each call;
    - "hash" (compiled training): a counter hash (murmur3's fmix32, two rounds) of each element's index and a
      per-call key, all torch ops, so a compiled layer traces it without a graph break and fuses it. The key is
      drawn by torch's generator once per backbone call (`_draw_dropout_key`, a hook outside the compiled layers)
      and mixed with a per-layer salt; eager and compiled runs draw the same masks.
    Both take their seeds from torch's generator, so a run is deterministic and resumes exactly (checkpoints restore
    torch's state); the masks differ from `nn.Dropout`'s and from each other, so cells are other draws (recorded
    in the fingerprint as `RNG` or `RNG_HASH`)."""

    RNG = "numpy PCG64, 16-bit"
    RNG_HASH = "fmix32 x2 counter hash, 16-bit"

    def __init__(self, p: float, mode: str = "numpy", salt: int = 0) -> None:
        super().__init__()
        if mode not in ("numpy", "hash"):
            raise ValueError(f"FastDropout mode must be 'numpy' or 'hash', got {mode!r}")
        self.p = p
        self.mode = mode
        self.cut = round(p * 65536)  # a 16-bit draw below this drops its element
        # buffers, not constants: a compiled layer takes them as inputs (one graph for every layer and every call)
        self.register_buffer("salt", torch.tensor(_fmix32_int(salt * _GOLDEN + 1), dtype=torch.int32),
                             persistent=False)
        self.register_buffer("key", torch.zeros((), dtype=torch.int32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        if self.mode == "hash":
            keep = _hash_draws(x.shape, self.key, self.salt, x.device) >= self.cut
        else:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            draws = np.random.Generator(np.random.PCG64(seed)).integers(0, 65536, size=x.numel(), dtype=np.uint16)
            keep = torch.from_numpy(draws.view(np.int16)).view(x.shape) >= self.cut - 32768
        return x * keep * (65536 / (65536 - self.cut))

    def extra_repr(self) -> str:
        return f"p={self.p}, masks: {self.RNG_HASH if self.mode == 'hash' else self.RNG}"


_GOLDEN = 0x9E3779B1  # odd 32-bit constants of murmur3's finalizer (as signed int32 below)
_M1, _M2 = 0x85EBCA6B, 0xC2B2AE35


def _i32(v: int) -> int:
    """A 32-bit pattern as the signed int32 value torch stores."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _fmix32_int(v: int) -> int:
    """murmur3's fmix32 on a Python int (for per-layer salts), as signed int32."""
    v &= 0xFFFFFFFF
    v ^= v >> 16
    v = (v * _M1) & 0xFFFFFFFF
    v ^= v >> 13
    v = (v * _M2) & 0xFFFFFFFF
    v ^= v >> 16
    return _i32(v)


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's fmix32 on an int32 tensor (wrapping multiplies; logical shifts by masking)."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _i32(_M1)
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * _i32(_M2)
    return h ^ ((h >> 16) & 0xFFFF)


def _hash_draws(shape: torch.Size, key: torch.Tensor, salt: torch.Tensor, device: torch.device) -> torch.Tensor:
    """16-bit draws (0..65535, int32) for every element of a tensor of `shape`, from the call's key and the layer's
    salt: fmix32(fmix32(index + key) ^ salt) keeps its top 16 bits."""
    idx = torch.arange(shape.numel(), dtype=torch.int32, device=device).view(shape)
    h = _fmix32(_fmix32(idx * _i32(_GOLDEN) + key) ^ salt)
    return (h >> 16) & 0xFFFF


def _draw_dropout_key(module: nn.Module, _args: Any) -> None:
    """Forward pre-hook of the backbone: a fresh key from torch's generator for every hash `FastDropout`, once per
    call (the shared prefix's call and the rest's get different masks). Not drawn in eval mode."""
    if not module.training:
        return
    key = torch.randint(-(2**31), 2**31 - 1, (), dtype=torch.int32)
    for drop in module._ift_hash_dropouts:
        drop.key = key  # a new tensor, not an in-place write: autograd may still hold the previous call's


def use_fast_dropout(model: nn.Module, mode: str = "numpy") -> int:
    """Replace the dropout of every LoRA layer by `FastDropout` at the same rate; returns the layers changed.
    mode "hash" (for compiled layers) also hooks the backbone to draw each call's key (`_draw_dropout_key`)."""
    from peft.tuners.lora.layer import LoraLayer

    changed: list[FastDropout] = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, drop in module.lora_dropout.items():
                if isinstance(drop, nn.Dropout) and drop.p > 0:
                    module.lora_dropout[name] = FastDropout(drop.p, mode, salt=len(changed))
                    changed.append(module.lora_dropout[name])
    if mode == "hash" and changed:
        backbone = _backbone(model)
        if not hasattr(backbone, "_ift_hash_dropouts"):
            backbone.register_forward_pre_hook(_draw_dropout_key)
        backbone._ift_hash_dropouts = changed
    return len(changed)


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings, layers, norm) of a transformers causal LM, under a peft wrapper or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix)


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


# ---------------------------------------------------------------------------------------------- compilation

COMPILE_MODES = ("auto", "on", "off")


def compile_wanted(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a cell's decoder layers run compiled: "on", or "auto" for dense LoRA / full fine-tuning without
    gradient checkpointing (4-bit bitsandbytes layers and checkpointed layers are not traced)."""
    if cfg.compile == "off":
        return False
    if cfg.compile == "on":
        return True
    return device.type in ("cpu", "cuda") and cfg.method != "qlora" and not cfg.gradient_checkpointing


def use_inductor_cache() -> Path:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd, kernels) at $IFT_CACHE/inductor unless
    TORCHINDUCTOR_CACHE_DIR is set, so a later process reuses the compiled code (the default is under /tmp)."""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from ift_utils.models import cache_dir

    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given is None or os.path.abspath(given) == os.path.abspath(default_cache_dir()):  # torch's own default
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks of a transformers causal LM (under a peft wrapper or not); [] if not found."""
    layers = getattr(_backbone(model), "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def compile_layers(model: nn.Module) -> int:
    """Regional compilation: each decoder layer `.compile()`d (inductor, dynamic shapes), after every hook and
    adapter is in place (they are traced into the layer's graph). All layers share one compiled code per graph
    variant (parameters are graph inputs), so the compile cost is one layer's, once per process. Returns the
    layers compiled (a layer compiled before is left as it is)."""
    use_inductor_cache()
    # A batch of 2 or 3 rows must not be taken for the same size as a head count (duck sizing), which would make
    # the batch size static and recompile at the next batch size.
    torch.fx.experimental._config.use_duck_shape = False
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(p.requires_grad for p in model.parameters()) and hasattr(inner, "enable_input_require_grads"):
        # layer 0's input then requires grad as every later layer's does: one graph for all layers, not two
        inner.enable_input_require_grads()
    n = 0
    for layer in decoder_layers(model):
        if getattr(layer, "_compiled_call_impl", None) is None:
            layer.compile(dynamic=True)
            n += 1
    return n


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (the first compile of each variant, then every recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def graph_breaks() -> int:
    """Graph breaks dynamo has met in this process (each one splits a compiled layer; the goal is 0)."""
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))

