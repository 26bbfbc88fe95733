"""The study's design: the test sets, the trained conditions and controls, the grid of cells (domain ×
condition × replicate) and where each cell's files live. Stages 02-05 walk this grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ift_utils.paths import RunPaths

TEST_SETS = ("HOMO", "ID", "OOD", "XD")  # XD: cross-domain, the same relation over another domain's entities


def device_of(P) -> str:
    """The torch device a run uses."""
    if P.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return P.device


def conditions(P) -> list[tuple[str, str, float]]:
    """The grid's trained conditions per domain: (name, group, ratio); r=0 is incompatible, r=1 self-aligning;
    then the extra groups, then the `general_only` control when asked (no_ift trains nothing: not here)."""
    from ift_utils.interventions import ratio_name

    out = []
    for r in P.ratios:
        group = "incompatible" if r == 0 else "self_aligning" if r == 1 else "mixture"
        out.append((ratio_name(r), group, r))
    for g in P.extra_groups:
        out.append((g, g, math.nan))
    if GENERAL_ONLY in P.controls:
        out.append((GENERAL_ONLY, GENERAL_ONLY, math.nan))
    return out


GENERAL_ONLY = "general_only"  # the control trained on general instruction data alone


@dataclass(frozen=True)
class Cell:
    """One fine-tuning run of the grid."""

    domain: str
    condition: str
    group: str
    ratio: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.domain}/{self.condition}/seed{self.seed}"


def grid(P) -> list[Cell]:
    """Every cell: domains × conditions × seeds, in a fixed order."""
    return [Cell(d, name, group, ratio, s) for d in P.domains for name, group, ratio in conditions(P)
            for s in P.seeds]


def my_cells(P) -> list[Cell]:
    """The cells this shard trains (cell i goes to shard i % num_shards)."""
    return [c for i, c in enumerate(grid(P)) if i % P.num_shards == P.shard_index]


def train_method(P) -> str:
    """`auto` is QLoRA on a GPU and fp32 LoRA on a CPU (4-bit on CPU saves memory but not time)."""
    if P.train_method != "auto":
        return P.train_method
    return "qlora" if device_of(P) == "cuda" else "lora"


def cell_dir(paths: RunPaths, cell: Cell) -> Path:
    return paths.train / cell.domain / cell.condition / f"seed{cell.seed}"


def cell_data(paths: RunPaths, cell: Cell) -> Path:
    """A cell's chat-formatted training file: its replicate's (= its seed's) own sample of facts and general data."""
    return paths.groups / cell.domain / f"rep{cell.seed}" / f"{cell.condition}.chat.jsonl"


NO_IFT = "no_ift"  # the control without fine-tuning: the base network scored exactly like the fine-tuned cells


FIT_SET = "TRAIN"  # a cell's own training questions, scored like the test sets (did it learn them?)


def group_file(paths: RunPaths, cell: Cell) -> Path:
    """The cell's domain examples in the original schema (beside its chat-formatted training file)."""
    chat = cell_data(paths, cell)
    return chat.with_name(chat.name.replace(".chat.jsonl", ".jsonl"))

