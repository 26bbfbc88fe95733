"""`train_adapter`: the training loop of one cell (plan, steps, epoch-end callback, checkpoints, outputs)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ift_utils.io import sha256_json, write_csv, write_json, write_text
from ift_utils.training.build import ModelKeeper, _build_model, _resolve, load_base
from ift_utils.training.checkpoints import (
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
from ift_utils.training.config import DONE, IGNORE, METHODS, EpochDecision, TrainConfig, TrainResult, make_scheduler
from ift_utils.training.data import collate, encode_example, plan_steps
from ift_utils.training.precision import (
    compile_wanted,
    compiled_graphs,
    config_fingerprint_fields,
    cpu_autocast_wanted,
    dropout_masks,
    frozen_bf16_wanted,
    precision_label,
)
from ift_utils.training.step import _LossModule, prefix_sharing_ok

log = logging.getLogger(__name__)


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
                  on_epoch_end: Callable[[nn.Module, int], EpochDecision | bool | None] | None = None,
                  keeper: ModelKeeper | None = None) -> TrainResult:
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
    keeper: a `ModelKeeper` that keeps the LoRA model and tokenizer loaded across cells (the adapter is reset in
    place, equal to a fresh build from the same seed); None builds both for this cell.
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
    fingerprint = sha256_json({"config": config_fingerprint_fields(cfg, cpu_autocast, dropout_masks(cfg, device)),
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
    if world > 1:
        keeper = None  # a kept model would be wrapped in DDP again for every cell: not checked, so built afresh
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    path = _resolve(model_path)

    tok = keeper.tokenizer(path) if keeper is not None else AutoTokenizer.from_pretrained(path)
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
    graphs0 = compiled_graphs()
    model = (keeper.model_for(path, cfg, accelerator.device) if keeper is not None
             else _build_model(path, cfg, accelerator.device))
    compiled = compile_wanted(cfg, accelerator.device)
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
    first_step, seen_graphs = 0.0, graphs0
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
        if index == start:
            first_step = time.perf_counter() - t0
        graphs = compiled_graphs()
        if compiled and graphs > seen_graphs:  # first compiles, then any recompile, each logged and counted
            log.info("%s step %d: %d graph(s) compiled (%d in this cell%s)", out_dir.name, number, graphs - seen_graphs,
                     graphs - graphs0, f", first step {first_step:.1f} s" if index == start else "")
            seen_graphs = graphs
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
        compiled=compiled, compiled_graphs=compiled_graphs() - graphs0, first_step_seconds=round(first_step, 3),
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
