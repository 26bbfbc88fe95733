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
from dataclasses import asdict, dataclass
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
    target_modules: str | list[str] = "all-linear"  # peft's "all-linear" leaves out lm_head
    epochs: float = 3
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    max_length: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    save_every: int = 0  # checkpoint every N optimizer steps (0 = at each epoch end); used to resume
    save_epochs: tuple[int, ...] = ()  # also keep the weights at the end of these epochs (epochs/epochN/), to evaluate
    seed: int = 0
    bf16: bool = False  # bf16 compute (GPU)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    gradient_checkpointing: bool = False
    response_only_logits: bool = True  # False: the plain full-logits loss (same value, slower; for benchmarks)

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

    model = load_base(path, cfg.method, bf16=cfg.bf16, device=device)
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
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM")
            model = get_peft_model(model, lora)
    model.train()
    return model


def _inner(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM module under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def response_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, response_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over label positions and their count.

    response_only: run the backbone, keep the hidden states whose next token is a label and apply the LM
    head to those only (the vocabulary-sized head over every position is a large share of the cost: 1.3x
    faster steps on SmolLM2-135M with 25 % response tokens); otherwise the model's own full-logits loss.
    Both give the same value.
    """
    shifted = labels[:, 1:]
    keep = shifted != IGNORE
    count = keep.sum()
    if not response_only:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
        return out.loss * count, count
    inner = _inner(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    config = getattr(inner.config, "get_text_config", lambda: inner.config)()
    if getattr(config, "final_logit_softcapping", None):  # Gemma-2/3 style heads
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    if getattr(config, "logit_scale", None):  # Cohere style heads
        logits = logits * config.logit_scale
    return nn.functional.cross_entropy(logits, shifted[keep], reduction="sum"), count


class _LossModule(nn.Module):
    """The model plus its loss in one forward, so DDP (which hooks `forward`) syncs the gradients."""

    def __init__(self, model: nn.Module, response_only: bool, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.response_only = response_only
        self.bf16 = bf16

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return response_loss(self.model, input_ids, attention_mask, labels, self.response_only)


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


def train_adapter(model_path: str, examples: list[dict], cfg: TrainConfig, out_dir: Path,
                  progress: bool = True, *, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train one cell into out_dir (adapter or full weights, loss.csv, train_config.json, train_result.json,
    then DONE); a cell finished with the same data and config is skipped (one finished with others is
    trained again), an interrupted one resumes from its last checkpoint.

    examples: [{"prompt": chat-formatted text ending with the assistant opener, "response": answer text}].
    on_step(step, loss) is called after every optimizer step (and after its checkpoint, if any).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from transformers import AutoTokenizer, get_scheduler

    from ift_utils.progress import progress as tqdm

    out_dir = Path(out_dir)
    fingerprint = sha256_json({"config": asdict(cfg), "model": model_path, "examples": examples})
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
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * len(steps)),
                              num_training_steps=len(steps))
    # The scheduler is not prepared: its step count is already global (accelerate would step it once per process).
    wrapped = accelerator.prepare_model(_LossModule(model, cfg.response_only_logits, cfg.bf16),
                                        device_placement=cfg.method != "qlora")
    optimizer = accelerator.prepare_optimizer(optimizer)

    done = {"losses": [], "rows": [], "train_tokens": 0, "loss_tokens": 0, "seconds": 0.0, "peak_rss_mb": 0.0}
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
            done = {k: state[k] for k in done}
            log.info("resuming %s from step %d of %d", out_dir, start, len(steps))
        else:
            log.warning("checkpoints in %s are from another config or data set; starting over", out_dir)
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)

    bar = tqdm(total=len(steps), initial=start, desc=f"train {out_dir.name}", unit="step",
               disable=not progress or not accelerator.is_main_process)
    t0 = time.perf_counter()
    for index in range(start, len(steps)):
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
        if epoch_end and step.epoch + 1 in cfg.save_epochs and number < len(steps) and accelerator.is_main_process:
            _save_epoch(out_dir, step.epoch + 1, accelerator.unwrap_model(wrapped).model, tok, cfg)
        checkpoint = (number % cfg.save_every == 0) if cfg.save_every else epoch_end
        if checkpoint and number < len(steps):
            # each process draws its own dropout masks, so every process's generators are saved
            rng_states = gather_object([_rng_state()]) if world > 1 else [_rng_state()]
            if accelerator.is_main_process:
                progress_state = {**done, "seconds": done["seconds"] + time.perf_counter() - t0,
                                  "peak_rss_mb": max(done["peak_rss_mb"], _peak_rss_mb()),
                                  "fingerprint": fingerprint}
                _save_checkpoint(out_dir, number, model, optimizer, scheduler, rng_states, progress_state)
            accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(number, loss)
    bar.close()
    seconds = done["seconds"] + time.perf_counter() - t0

    result = TrainResult(
        out_dir=out_dir, steps=len(steps), seconds=seconds, peak_rss_mb=max(done["peak_rss_mb"], _peak_rss_mb()),
        peak_gpu_mb=(torch.cuda.max_memory_allocated(accelerator.device) / 2**20
                     if accelerator.device.type == "cuda" else None),
        train_tokens=done["train_tokens"], losses=done["losses"], loss_tokens=done["loss_tokens"],
        n_examples=len(encoded), n_truncated=sum(e["truncated"] for e in encoded), n_dropped=n_dropped)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_cell(out_dir, accelerator.unwrap_model(wrapped).model, tok, cfg, result,
                    {"model_path": model_path, "resolved_path": path, "fingerprint": fingerprint,
                     "processes": world, "steps_per_epoch": per_epoch, "versions": _versions()},
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


__all__ = ["TrainConfig", "TrainResult", "train_adapter", "load_trained", "is_done", "encode_example", "collate",
           "epoch_batches", "plan_steps", "response_loss", "disable_cpu_repack", "load_base", "bnb_config"]
