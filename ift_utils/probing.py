"""Scoring multiple-choice questions: the model's belief as a probability distribution over options.

Two modes (every result records which):
- ``letter``: the original study's method — softmax over the next-token logits of the letter tokens
  after ``Answer:`` (token id = last id of tokenizing the bare letter).
- ``cloze``: each option's text scored by its log-likelihood after the prompt, summed over its tokens and
  divided by their count (length-normalized), then softmax over options. Small models do much better here.

Speed: prompts of one domain share a long k-shot prefix. We find the longest common token prefix,
encode it once, and reuse its key/value cache for every batch of question suffixes (left-padded, with
explicit position ids), computing logits only where they are used. `score_reference` is the original
one-question-per-forward-pass loop, kept for tests and benchmarks; both give the same probabilities.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ift_utils import prompts
from ift_utils.progress import progress
from ift_utils.records import LETTERS, MCQ

MODES = ("letter", "cloze")


@dataclass(frozen=True)
class PromptSpec:
    """How to build each question's prompt: scoring mode, k-shot demos, chat template, header quirk."""

    mode: str = "cloze"
    demos: tuple[MCQ, ...] = ()
    subject: str = ""
    template: str = "none"  # "none" for the base model's k-shot prompt; "vicuna"/"model" for fine-tuned 0-shot
    mmlu_quirk: bool = False


def build_prompt(q: MCQ, spec: PromptSpec, tokenizer=None) -> str:
    """The context string scored for `q` (options follow it in cloze mode, a letter in letter mode)."""
    if spec.template == "none":
        if spec.mode == "letter":
            return prompts.letter_prompt(q, spec.demos, spec.subject or q.subject, mmlu_quirk=spec.mmlu_quirk)
        return prompts.cloze_prompt(q, spec.demos, spec.subject or q.subject)
    return prompts.chat(prompts.ift_query(q, mode=spec.mode), spec.template, tokenizer) + \
        prompts.response_prefix(spec.mode)


def continuations(q: MCQ, spec: PromptSpec) -> list[str]:
    """Cloze continuations: ` text` after `Answer:` (in the k-shot prompt and at the start of a chat answer)."""
    return [" " + prompts.answer_text(q, i, "cloze") for i in range(len(q.choices))]


def letter_token_ids(tokenizer, n: int) -> list[int]:
    """Token id of each option letter: the last id of tokenizing the bare letter (as the original)."""
    return [tokenizer(LETTERS[i], add_special_tokens=False).input_ids[-1] for i in range(n)]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


class _PrefixScorer:
    """Run many token sequences that share `prefix` through the model, encoding the prefix once."""

    def __init__(self, model, prefix: list[int], pad_id: int):
        self.model, self.pad_id, self.L = model, pad_id, len(prefix)
        self.cache = None
        self._by_batch: dict[int, object] = {}  # prefix cache expanded to each batch size, reused after crop
        if prefix:
            out = model(input_ids=torch.tensor([prefix]), use_cache=True, logits_to_keep=1)
            self.cache = getattr(out, "cache", None) or out.past_key_values

    def _cache_for(self, B: int):
        """The prefix cache for a batch of B rows; the forward pass appends to it, `crop` undoes that."""
        if self.cache is None:
            return None
        cache = self._by_batch.get(B)
        if cache is None:
            cache = copy.deepcopy(self.cache)
            if B > 1:
                cache.batch_repeat_interleave(B)
            if not getattr(cache, "is_croppable", True):
                return cache  # cannot be reset: use a fresh copy every time
            self._by_batch[B] = cache
        else:
            extra = cache.get_seq_length() - self.L
            if extra > 0:
                cache.crop(-extra)
        return cache

    def last_logits(self, suffixes: list[list[int]], keep: int) -> torch.Tensor:
        """Logits (B, keep, V) at the last `keep` positions of each prefix+suffix (left-padded suffixes)."""
        B, S = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, self.L + S), dtype=torch.long)
        mask[:, : self.L] = 1
        for b, s in enumerate(suffixes):
            ids[b, S - len(s):] = torch.tensor(s)
            mask[b, self.L + S - len(s):] = 1
        pos = (self.L + torch.cumsum(mask[:, self.L:], dim=1) - 1).clamp(min=self.L)
        cache = self._cache_for(B)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                         use_cache=self.cache is not None, logits_to_keep=keep)
        return out.logits.float()


def _batches(order: list[int], lengths: list[int], max_tokens: int, max_batch: int, max_pad: float = 0.1):
    """Consecutive rows of a length-sorted order, closing a batch when it would exceed `max_batch` rows,
    `max_tokens` padded tokens, or a padding share of `max_pad` (padding is pure waste on a CPU)."""
    batch: list[int] = []
    real = longest = 0
    for i in order:
        new_longest, new_real = max(longest, lengths[i]), real + lengths[i]
        padded = new_longest * (len(batch) + 1)
        if batch and (len(batch) >= max_batch or padded > max_tokens or padded - new_real > max_pad * padded):
            yield batch
            batch, new_longest, new_real = [], lengths[i], lengths[i]
        batch.append(i)
        longest, real = new_longest, new_real
    if batch:
        yield batch


@torch.inference_mode()
def score_mcqs(model, tokenizer, questions: Sequence[MCQ], spec: PromptSpec, *, max_batch: int = 16,
               max_tokens: int = 4096, show_progress: bool = True, desc: str = "scoring") -> pd.DataFrame:
    """Score questions fast (shared-prefix KV cache, length buckets, logits only where needed).

    Returns one row per question: id, domain, subject, answer, probs, pred, correct, confidence, mode.
    """
    if spec.mode not in MODES:
        raise ValueError(f"scoring mode must be one of {MODES}, got {spec.mode!r}")
    if not questions:
        return _frame([], [], spec)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx = [_encode(tokenizer, build_prompt(q, spec, tokenizer)) for q in questions]
    # rows: (question index, token sequence, number of tokens whose log-prob is summed)
    rows: list[tuple[int, list[int], int]] = []
    for qi, (q, c) in enumerate(zip(questions, ctx, strict=True)):
        if spec.mode == "letter":
            rows.append((qi, c, 0))
        else:
            for cont in continuations(q, spec):
                cids = _encode(tokenizer, cont)
                rows.append((qi, c + cids, len(cids)))
    L = _common_prefix([r[1] for r in rows])
    L = min(L, min(len(r[1]) for r in rows) - 1 - max(r[2] for r in rows))  # keep every scored position
    L = max(L, 0)
    scorer = _PrefixScorer(model, rows[0][1][:L], pad)
    suffixes = [r[1][L:] for r in rows]
    lengths = [len(s) for s in suffixes]
    order = sorted(range(len(rows)), key=lambda i: (lengths[i], i))
    letter_ids = letter_token_ids(tokenizer, max(len(q.choices) for q in questions))
    scores: list[list[float]] = [[] for _ in questions]
    row_scores: dict[int, float] = {}
    letter_logits: dict[int, np.ndarray] = {}
    bar = progress(total=len(rows), desc=desc, disable=not show_progress)
    for batch in _batches(order, lengths, max_tokens, max_batch):
        keep = 1 if spec.mode == "letter" else max(rows[i][2] for i in batch) + 1
        logits = scorer.last_logits([suffixes[i] for i in batch], keep)
        logp = torch.log_softmax(logits, dim=-1)
        for b, i in enumerate(batch):
            qi, seq, n = rows[i]
            if spec.mode == "letter":
                letter_logits[qi] = logits[b, -1, letter_ids[: len(questions[qi].choices)]].numpy()
            else:
                targets = torch.tensor(seq[-n:])
                lp = logp[b, keep - 1 - n: keep - 1].gather(-1, targets[:, None]).sum().item()
                row_scores[i] = lp / n
        bar.update(len(batch))
    bar.close()
    if spec.mode == "letter":
        probs = [_softmax(letter_logits[qi].astype(np.float64)) for qi in range(len(questions))]
    else:
        for i, (qi, _, _) in enumerate(rows):
            scores[qi].append(row_scores[i])
        probs = [_softmax(np.array(s, dtype=np.float64)) for s in scores]
    return _frame(list(questions), probs, spec)


def _frame(questions: list[MCQ], probs: list[np.ndarray], spec: PromptSpec) -> pd.DataFrame:
    recs = []
    for q, p in zip(questions, probs, strict=True):
        pred = int(np.argmax(p))
        recs.append({"id": q.id, "domain": q.domain, "subject": q.subject, "answer": q.answer,
                     "probs": [float(x) for x in p], "pred": pred, "correct": pred == q.answer,
                     "confidence": float(p[pred]),
                     "popularity": q.popularity if q.popularity is not None else math.nan,
                     "mode": spec.mode})
    cols = ["id", "domain", "subject", "answer", "probs", "pred", "correct", "confidence", "popularity", "mode"]
    return pd.DataFrame(recs, columns=cols)


@torch.inference_mode()
def score_reference(model, tokenizer, questions: Sequence[MCQ], spec: PromptSpec,
                    show_progress: bool = False) -> pd.DataFrame:
    """The original loop: one full prompt per forward pass (per option in cloze mode), batch size 1."""
    letter_ids = letter_token_ids(tokenizer, max(len(q.choices) for q in questions))
    probs = []
    for q in progress(questions, disable=not show_progress, desc="reference"):
        ctx = _encode(tokenizer, build_prompt(q, spec, tokenizer))
        if spec.mode == "letter":
            logits = model(input_ids=torch.tensor([ctx])).logits[0, -1].float()
            probs.append(_softmax(logits[letter_ids[: len(q.choices)]].numpy().astype(np.float64)))
            continue
        s = []
        for cont in continuations(q, spec):
            cids = _encode(tokenizer, cont)
            logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cids])).logits[0].float(), -1)
            s.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cids)) / len(cids))
        probs.append(_softmax(np.array(s)))
    return _frame(list(questions), probs, spec)

