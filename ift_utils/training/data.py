"""Examples to batches: encoding with the loss mask, dynamic padding, the seeded length-grouped batch plan."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ift_utils.encoding import encode_pair, special_prefix
from ift_utils.training.config import IGNORE, MEGABATCH, TrainConfig


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
