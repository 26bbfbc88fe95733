"""Models as a cell trains them: the base (dense, bf16-frozen or 4-bit) plus fresh LoRA adapters."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ift_utils.training.config import ATTENTION_TARGETS, TrainConfig
from ift_utils.training.precision import (
    compile_layers,
    compile_wanted,
    cpu_autocast_wanted,
    dropout_masks,
    frozen_bf16_wanted,
    sum_lora_in_fp32,
    use_fast_dropout,
    use_fp32_attention,
)


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
    masks = dropout_masks(cfg, device)
    if masks:
        use_fast_dropout(model, masks)
    if frozen_bf16:
        sum_lora_in_fp32(model)
    if compile_wanted(cfg, device):  # last: hooks and adapters are traced into the compiled layers
        compile_layers(model)
    model.train()
    return model


def _lora_key(path: str, cfg: TrainConfig, device: torch.device) -> tuple:
    """What a kept LoRA model must share with a cell to be reset for it instead of rebuilt."""
    return (path, str(device), cfg.method, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, str(cfg.target_modules),
            cfg.bf16, frozen_bf16_wanted(cfg, device), cpu_autocast_wanted(cfg, device),
            dropout_masks(cfg, device), compile_wanted(cfg, device), cfg.gradient_checkpointing)


def reset_adapter(model: nn.Module) -> int:
    """Give every LoRA layer fresh weights in place, drawing from torch's generator exactly as `get_peft_model`
    does when it builds them (per layer, in module order: nn.Linear's init of A, then of B, then peft's
    `reset_lora_parameters`: A kaiming-uniform, B zeros). After `set_seed(s)` the adapter equals a fresh build's
    from the same seed (tested). Returns the layers reset."""
    from peft.tuners.lora.layer import LoraLayer

    n = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name in module.lora_A:
                    module.lora_A[name].reset_parameters()
                    module.lora_B[name].reset_parameters()
                    module.reset_lora_parameters(name, True)
                    n += 1
    for p in model.parameters():
        p.grad = None
    return n


class ModelKeeper:
    """Keeps a LoRA model and the tokenizer loaded across the cells of a process (stage 03), resetting the adapter
    in place for each cell instead of reloading the base and the tokenizer and rebuilding the adapter (and, when
    compiled, keeps the compiled layers). Full fine-tuning changes the base weights, so it is never kept."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model: nn.Module | None = None
        self.toks: dict[str, Any] = {}
        self.builds = 0  # how many times a model was built (the rest were resets)

    def tokenizer(self, path: str) -> Any:
        """The tokenizer of `path`, loaded once."""
        from transformers import AutoTokenizer

        if path not in self.toks:
            self.toks[path] = AutoTokenizer.from_pretrained(path)
        return self.toks[path]

    def model_for(self, path: str, cfg: TrainConfig, device: torch.device) -> nn.Module:
        """A model with a fresh adapter for `cfg`, as `_build_model` would build it after the caller's
        `set_seed(cfg.seed)`: the kept one reset in place when it matches, else a new build (kept for later)."""
        key = _lora_key(path, cfg, device)
        if cfg.method != "lora":
            self.release()
            return _build_model(path, cfg, device)
        if self.model is not None and key == self.key:
            reset_adapter(self.model)
            self.model.train()
            return self.model
        self.release()
        self.model, self.key = _build_model(path, cfg, device), key
        self.builds += 1
        return self.model

    def release(self) -> None:
        """Drop the kept model (its memory is freed once no cell holds it)."""
        self.model, self.key = None, None


def _inner(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM module under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
