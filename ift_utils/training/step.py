"""The loss of one micro-batch: response-only logits and the batch's shared prefix run once."""

from __future__ import annotations

import torch
from torch import nn

from ift_utils.training.build import _inner
from ift_utils.training.config import IGNORE, TrainConfig
from ift_utils.training.precision import decoder_layers

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
    gradient checkpointing (which drops the cache) and without compiled layers, on decoders whose cache was
    checked (PREFIX_MODEL_TYPES)."""
    if not cfg.shared_prefix:
        return False, "off in the config"
    if not cfg.response_only_logits:
        return False, "needs response_only_logits"
    if cfg.gradient_checkpointing:
        return False, "gradient checkpointing does not keep a key/value cache"
    if world > 1:
        return False, "not checked under DDP (several processes)"
    if any(getattr(layer, "_compiled_call_impl", None) is not None for layer in decoder_layers(model)):
        # the key/value cache indexes its layers by each layer's constant layer_idx, so a compiled layer that
        # takes the cache is compiled once per layer index: past torch's recompile limit (8) the rest run eager
        return False, "compiled layers (a key/value cache would compile one graph per layer)"
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
