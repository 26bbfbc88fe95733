"""Cell files on disk: the DONE marker, atomic folders, resumable checkpoints with every RNG, peak memory."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ift_utils.io import write_json
from ift_utils.training.config import DONE

log = logging.getLogger(__name__)


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
