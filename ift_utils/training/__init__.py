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

Layout (imports point down only): `config` (settings, results, schedule) <- `data` (encoding, batches) <-
`precision` (bf16, dropout, compilation) <- `build` (models) <- `step` (the loss) <- `checkpoints` (files, RNG)
<- `loop` (`train_adapter`). The public names (and the private ones tests and benchmarks use) are re-exported
here, so `from ift_utils.training import X` works as before the split.
"""

from __future__ import annotations

import logging


class _DropKernelsNotice(logging.Filter):
    """Drop bitsandbytes' notice about the optional `kernels` package (we do not install it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


# Installed before bitsandbytes is first imported (by peft or transformers), which is when it logs.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsNotice())

from ift_utils.training.build import (  # noqa: E402  (after the filter: peft imports bitsandbytes)
    ModelKeeper,
    _build_model,
    _inner,
    _resolve,
    bnb_config,
    disable_cpu_repack,
    load_base,
    reset_adapter,
)
from ift_utils.training.checkpoints import (  # noqa: E402
    _atomic_dir,
    _checkpoints,
    _load_checkpoint,
    _peak_rss_mb,
    _reset_peak_rss,
    _rng_state,
    _save_checkpoint,
    _set_rng_state,
    _trainable,
    is_done,
)
from ift_utils.training.config import (  # noqa: E402
    ATTENTION_TARGETS,
    DONE,
    IGNORE,
    LR_SCHEDULES,
    MEGABATCH,
    METHODS,
    EpochDecision,
    TrainConfig,
    TrainResult,
    make_scheduler,
)
from ift_utils.training.data import _Step, collate, encode_example, epoch_batches, plan_steps  # noqa: E402
from ift_utils.training.loop import _ask_epoch_end, _versions, load_trained, train_adapter  # noqa: E402
from ift_utils.training.precision import (  # noqa: E402
    COMPILE_MODES,
    FastDropout,
    compile_layers,
    compile_wanted,
    compiled_graphs,
    config_fingerprint_fields,
    cpu_autocast_wanted,
    cpu_bf16_kind,
    cpu_has_bf16,
    decoder_layers,
    dropout_masks,
    fast_dropout_wanted,
    frozen_bf16_wanted,
    graph_breaks,
    precision_label,
    sum_lora_in_fp32,
    use_fast_dropout,
    use_fp32_attention,
    use_inductor_cache,
)
from ift_utils.training.step import (  # noqa: E402
    MIN_SHARED_PREFIX,
    PREFIX_MODEL_TYPES,
    _LossModule,
    prefix_sharing_ok,
    response_loss,
    shared_prefix_length,
)

__all__ = ["TrainConfig", "TrainResult", "EpochDecision", "train_adapter", "make_scheduler", "cpu_has_bf16",
           "cpu_autocast_wanted", "frozen_bf16_wanted", "precision_label", "prefix_sharing_ok",
           "shared_prefix_length", "config_fingerprint_fields", "fast_dropout_wanted", "load_trained", "is_done",
           "encode_example", "collate", "epoch_batches", "plan_steps", "response_loss", "disable_cpu_repack",
           "load_base", "bnb_config", "FastDropout", "use_fast_dropout", "sum_lora_in_fp32", "use_fp32_attention",
           "ATTENTION_TARGETS", "DONE", "IGNORE", "LR_SCHEDULES", "MEGABATCH", "METHODS", "MIN_SHARED_PREFIX",
           "PREFIX_MODEL_TYPES", "ModelKeeper", "reset_adapter", "COMPILE_MODES", "compile_layers", "compile_wanted",
           "compiled_graphs", "decoder_layers", "dropout_masks", "graph_breaks", "use_inductor_cache", "cpu_bf16_kind",
           # private, used by tests and benchmarks
           "_build_model", "_inner", "_resolve", "_atomic_dir", "_checkpoints", "_load_checkpoint", "_peak_rss_mb",
           "_reset_peak_rss", "_rng_state", "_save_checkpoint", "_set_rng_state", "_trainable", "_Step",
           "_ask_epoch_end", "_versions", "_LossModule"]
