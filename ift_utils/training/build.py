"""Models as a cell trains them: the base (dense, bf16-frozen or 4-bit) plus fresh LoRA adapters."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ift_utils.training.config import ATTENTION_TARGETS, TrainConfig
from ift_utils.training.precision import (
    cpu_autocast_wanted,
    fast_dropout_wanted,
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
    if fast_dropout_wanted(cfg, device):
        use_fast_dropout(model)
    if frozen_bf16:
        sum_lora_in_fp32(model)
    model.train()
    return model


def _inner(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM module under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
