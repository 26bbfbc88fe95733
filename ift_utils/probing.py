"""Scoring multiple-choice questions: the model's belief as a probability distribution over options.

Two modes (every result records which):
- ``letter``: the original study's method — softmax over the next-token logits of the letter tokens
  after ``Answer:`` (k-shot: token id = last id of tokenizing the bare letter; fine-tuned 0-shot: the first token
  of the response `L. text` as training encoded it).
- ``cloze``: each option's text scored by its log-likelihood after the prompt, summed over its tokens and
  divided by their count (length-normalized), then softmax over options. Small models do much better here.

Token ids come from `ift_utils.encoding`, the encoder training uses: a fine-tuned model is scored on exactly the
ids of the response it was trained to write (`encode_question`).

Speed: prompts of one domain share a prefix (the k-shot demos, or the chat template's system turn). We find the
longest common token prefix, encode it once, and reuse its key/value cache for every batch. Below that prefix,
cloze scoring works on two levels (`two_level=True`): each question's context is encoded once (level 1, whose
last logits score every option's first token) and only the options' remaining tokens run as short suffixes on
that context's cache (level 2; nothing at all when every option is one token). `two_level=False` is the previous
method (one row per option: context + option, on the shared-prefix cache), kept for the benchmark.
`score_reference` is the original one-question-per-forward-pass loop, kept for tests and benchmarks; all give the
same probabilities.

Calibrated scoring (`calibrate=True`; contextual calibration, Zhao et al. 2021): every option is also scored after
three *content-free* prompts, the same prompt with the asked entity replaced by each of `CONTENT_FREE` ("N/A", ""
and "[MASK]"; facts suite: `data_facts.entity_of`; other questions: the whole question text is the filler). The
content-free prior p_cf is the mean over the three of each one's distribution over the question's options (Zhao
et al. average the three distributions), and `probs_cal` = softmax over options of the pointwise mutual information
log p(option | prompt) − log p_cf(option), i.e. p(option | prompt) / p_cf(option), renormalized. Both are
*summed* log-probabilities of the option's tokens, so the ratio is the one stated (a per-token mean would divide
the PMI by the option's token count and pull multi-token answers toward zero); the raw `probs` stay
length-normalized. `probs_cf` is p_cf. In letter mode the scored text is one letter,
so this calibrates the letter distribution. This removes the answer prior a model holds regardless of the question
(in cloze mode the trained answers shift it on every test question). In cloze mode one content-free context serves
every question that shares it (all questions of one relation), with the union of their options as suffixes; in
letter mode each question has its own (its options are shown). A second, independent prior (each answer string's
mean probability over the other test questions that offer it) is `loo_calibrated`, used by stage 04 as a
sensitivity reading.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from ift_utils import encoding, prompts
from ift_utils.progress import progress
from ift_utils.records import LETTERS, MCQ

MODES = ("letter", "cloze")
CONTENT_FREE = ("N/A", "", "[MASK]")  # the fillers of the asked entity (or the whole question), as Zhao et al.
CALIBRATED_COLUMNS = ("probs_cf", "probs_cal", "pred_cal", "correct_cal", "confidence_cal")

Rows = list[tuple[list[int], list[int]]]  # per option: (context ids, scored ids)


@dataclass(frozen=True)
class PromptSpec:
    """How to build each question's prompt: scoring mode, k-shot demos, chat template, header quirk, BOS policy."""

    mode: str = "cloze"
    demos: tuple[MCQ, ...] = ()
    subject: str = ""
    template: str = "none"  # "none" for the base model's k-shot prompt; "vicuna"/"model" for fine-tuned 0-shot
    mmlu_quirk: bool = False
    bos: bool = True  # the tokenizer's own leading special tokens (BOS) before the prompt; paper: False for MMLU


def build_prompt(q: MCQ, spec: PromptSpec, tokenizer=None) -> str:
    """The context string scored for `q` (options follow it in cloze mode, a letter in letter mode)."""
    if spec.template == "none":
        if spec.mode == "letter":
            return prompts.letter_prompt(q, spec.demos, spec.subject or q.subject, mmlu_quirk=spec.mmlu_quirk)
        return prompts.cloze_prompt(q, spec.demos, spec.subject or q.subject)
    return chat_prompt(q, spec, tokenizer) + prompts.response_prefix(spec.mode)


def chat_prompt(q: MCQ, spec: PromptSpec, tokenizer=None) -> str:
    """The prompt of a fine-tuned model's 0-shot question: the user turn in the chat template, as in training."""
    return prompts.chat(prompts.ift_query(q, mode=spec.mode), spec.template, tokenizer)


def continuations(q: MCQ, spec: PromptSpec) -> list[str]:
    """Cloze continuations of the k-shot prompt: ` text` after `Answer:`."""
    return [" " + prompts.answer_text(q, i, "cloze") for i in range(len(q.choices))]


def letter_token_ids(tokenizer, n: int) -> list[int]:
    """Token id of each option letter: the last id of tokenizing the bare letter (as the original)."""
    return [tokenizer(LETTERS[i], add_special_tokens=False).input_ids[-1] for i in range(n)]


def encode_question(tokenizer, q: MCQ, spec: PromptSpec) -> Rows:
    """Per option: (context ids, scored ids). Fine-tuned (chat) prompts use the training encoder: context + scored
    ids are the training sequence's prompt ids + the first ids of the response `Answer: text` (cloze: scored = the
    ids after those of `Answer:`) or `L. text` (letter: scored = its first id)."""
    n = len(q.choices)
    if spec.template == "none":
        text = build_prompt(q, spec)
        if spec.mode == "letter":
            ctx = encoding.encode_prompt(tokenizer, text, bos=spec.bos)
            return [(ctx, [t]) for t in letter_token_ids(tokenizer, n)]
        return encoding.continuation_rows(tokenizer, text, continuations(q, spec), bos=spec.bos)
    responses = [prompts.ift_response(q, i, "", spec.mode) for i in range(n)]
    rows = encoding.answer_rows(tokenizer, chat_prompt(q, spec, tokenizer), responses,
                                prompts.response_prefix(spec.mode), bos=spec.bos)
    if spec.mode == "letter":
        rows = [(ctx, scored[:1]) for ctx, scored in rows]
        if len({r[1][0] for r in rows}) < n:
            raise ValueError(f"question {q.id}: the responses {responses} do not start with distinct tokens, so "
                             "letter mode cannot tell the options apart; use scoring: cloze")
    return rows


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


def _select_rows(cache, index: torch.Tensor):
    """A new cache holding rows `index` of `cache` (which is left as it is)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        sub = copy.deepcopy(cache)
    else:
        sub = copy.copy(cache)
        sub.layers = [copy.copy(layer) for layer in layers]
    sub.batch_select_indices(index)
    return sub


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

    def _run(self, suffixes: list[list[int]], keep: int, use_cache: bool):
        """Forward prefix + left-padded suffixes; return (model output, attention mask over prefix + suffixes)."""
        B, S = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.full((B, S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, self.L + S), dtype=torch.long)
        mask[:, : self.L] = 1
        for b, s in enumerate(suffixes):
            ids[b, S - len(s):] = torch.tensor(s)
            mask[b, self.L + S - len(s):] = 1
        pos = (self.L + torch.cumsum(mask[:, self.L:], dim=1) - 1).clamp(min=self.L)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=self._cache_for(B),
                         use_cache=use_cache, logits_to_keep=keep)
        return out, mask

    def last_logits(self, suffixes: list[list[int]], keep: int) -> torch.Tensor:
        """Logits (B, keep, V) at the last `keep` positions of each prefix+suffix (left-padded suffixes)."""
        out, _ = self._run(suffixes, keep, use_cache=self.cache is not None)
        return out.logits.float()

    def contexts(self, suffixes: list[list[int]]) -> tuple[torch.Tensor, object, torch.Tensor]:
        """Level 1: log-probs (B, V) after each prefix+suffix, the cache holding them all, and its mask."""
        out, mask = self._run(suffixes, 1, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1), cache, mask

    def options(self, cache, mask: torch.Tensor, rows: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Level 2: log-probs (R, S, V) after each token of `rows` = (context row, ids), each continuing its
        context row of a `contexts` cache (right-padded: padding after the ids attends to nothing used)."""
        index = torch.tensor([b for b, _ in rows])
        R, S = len(rows), max(len(s) for _, s in rows)
        ids = torch.full((R, S), self.pad_id, dtype=torch.long)
        own = torch.zeros((R, S), dtype=torch.long)
        for r, (_, s) in enumerate(rows):
            ids[r, : len(s)] = torch.tensor(s)
            own[r, : len(s)] = 1
        ctx_mask = mask[index]
        pos = ctx_mask.sum(dim=1, keepdim=True) + torch.arange(S)[None, :]
        out = self.model(input_ids=ids, attention_mask=torch.cat([ctx_mask, own], dim=1), position_ids=pos,
                         cache=_select_rows(cache, index), use_cache=True, logits_to_keep=S)
        return torch.log_softmax(out.logits.float(), dim=-1)


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


def _chunks(items: list, per_chunk: int) -> Iterator[list]:
    for i in range(0, len(items), per_chunk):
        yield items[i: i + per_chunk]


def _score_two_level(model, encoded: list[Rows], pad: int, max_batch: int, max_tokens: int, bar) -> list[list[float]]:
    """Mean log-prob of each option's scored ids: contexts once (level 1), options' later ids on their cache."""
    # a context: (question, its ids, [(option, scored ids)]); options of a question usually share one context
    contexts: list[tuple[int, list[int], list[tuple[int, list[int]]]]] = []
    for qi, rows in enumerate(encoded):
        by_ctx: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for oi, (ctx, scored) in enumerate(rows):
            by_ctx.setdefault(tuple(ctx), []).append((oi, scored))
        contexts += [(qi, list(ctx), opts) for ctx, opts in by_ctx.items()]
    L = min(_common_prefix([c[1] for c in contexts]), min(len(c[1]) for c in contexts) - 1)
    scorer = _PrefixScorer(model, contexts[0][1][:L], pad)
    lengths = [len(c[1]) - L for c in contexts]
    order = sorted(range(len(contexts)), key=lambda i: (lengths[i], i))
    scores = [[0.0] * len(rows) for rows in encoded]
    for batch in _batches(order, lengths, max_tokens, max_batch):
        first, cache, mask = scorer.contexts([contexts[i][1][L:] for i in batch])
        later: list[tuple[int, int, int, list[int]]] = []  # (context row, question, option, scored ids)
        for b, i in enumerate(batch):
            qi, _, opts = contexts[i]
            for oi, scored in opts:
                scores[qi][oi] = first[b, scored[0]].item()
                if len(scored) > 1:
                    later.append((b, qi, oi, scored))
        if later:
            longest = mask.shape[1] + max(len(s) - 1 for *_, s in later)
            per_chunk = max(len(batch), 4 * max_tokens // longest)  # level-2 cache <= max(level 1's, 4 x max_tokens)
            for chunk in _chunks(later, per_chunk):
                logp = scorer.options(cache, mask, [(b, s[:-1]) for b, _, _, s in chunk])
                for r, (_, qi, oi, s) in enumerate(chunk):
                    targets = torch.tensor(s[1:])
                    scores[qi][oi] += logp[r, : len(s) - 1].gather(-1, targets[:, None]).sum().item()
        for i in batch:
            qi, _, opts = contexts[i]
            for oi, scored in opts:
                scores[qi][oi] /= len(scored)
        bar.update(sum(len(contexts[i][2]) for i in batch))
    return scores


def _score_flat(model, encoded: list[Rows], pad: int, max_batch: int, max_tokens: int, mode: str,
                bar) -> list[list[float]]:
    """The previous method: one row per option (context + option ids; letter mode: one row per question, the
    letter logits at its end) on the shared-prefix cache; scores are mean log-probs (letter: raw logits)."""
    rows: list[tuple[int, int, list[int], int]] = []  # (question, option or -1 for all letters, ids, n scored)
    for qi, opts in enumerate(encoded):
        if mode == "letter":
            rows.append((qi, -1, opts[0][0], 0))
        else:
            rows += [(qi, oi, ctx + scored, len(scored)) for oi, (ctx, scored) in enumerate(opts)]
    L = _common_prefix([r[2] for r in rows])
    L = max(0, min(L, min(len(r[2]) for r in rows) - 1 - max(r[3] for r in rows)))  # keep every scored position
    scorer = _PrefixScorer(model, rows[0][2][:L], pad)
    suffixes = [r[2][L:] for r in rows]
    lengths = [len(s) for s in suffixes]
    order = sorted(range(len(rows)), key=lambda i: (lengths[i], i))
    scores = [[0.0] * len(opts) for opts in encoded]
    for batch in _batches(order, lengths, max_tokens, max_batch):
        keep = max(rows[i][3] for i in batch) + 1
        logits = scorer.last_logits([suffixes[i] for i in batch], keep)
        logp = torch.log_softmax(logits, dim=-1)
        for b, i in enumerate(batch):
            qi, oi, seq, n = rows[i]
            if oi < 0:
                scores[qi] = [logits[b, -1, scored[0]].item() for _, scored in encoded[qi]]
                bar.update(len(encoded[qi]))
            else:
                targets = torch.tensor(seq[-n:])
                scores[qi][oi] = logp[b, keep - 1 - n: keep - 1].gather(-1, targets[:, None]).sum().item() / n
                bar.update(1)
    return scores


def content_free(q: MCQ, filler: str = CONTENT_FREE[0]) -> MCQ:
    """`q` with its content removed, for contextual calibration: the asked entity replaced by `filler` in a
    facts-suite question ("In which country is the city of N/A?"), else the question text `filler`; same options,
    no knowledge context."""
    from ift_utils.data_facts import entity_of

    entity = entity_of(q)
    if entity and entity in q.question:
        return replace(q, question=q.question.replace(entity, filler), context="")
    return replace(q, question=filler, context="")


def calibrated(probs: Sequence[float], prior: Sequence[float]) -> np.ndarray:
    """Contextually calibrated probabilities: softmax(log probs − log prior) = probs / prior, renormalized."""
    return _softmax(np.log(np.asarray(probs, dtype=np.float64)) - np.log(np.asarray(prior, dtype=np.float64)))


def pmi_calibrated(logp: Sequence[float], logp_cf: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(content-free prior, calibrated probabilities) of one question from summed option log-probs `logp` under
    its prompt and `logp_cf[f][o]` under each content-free prompt f: p_cf = mean over f of softmax_o(logp_cf[f])
    (Zhao et al. average the content-free distributions over the options), calibrated = softmax_o(logp[o] −
    log p_cf(o)) (PMI). Each step ignores a constant per prompt, so raw letter logits serve as well."""
    prior = np.mean([_softmax(np.asarray(f, dtype=np.float64)) for f in logp_cf], axis=0)
    return prior, _softmax(np.asarray(logp, dtype=np.float64) - np.log(prior))


def loo_calibrated(probs: Sequence[Sequence[float]], choices: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Calibrated by a leave-one-out answer prior: each option's prior is its answer string's mean probability
    over the *other* questions that offer it; an option no other question offers gets the geometric mean of the
    question's other priors (no correction of its own; a question with none is left as it is)."""
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for p, cs in zip(probs, choices, strict=True):
        for x, c in zip(p, cs, strict=True):
            total[c] = total.get(c, 0.0) + float(x)
            count[c] = count.get(c, 0) + 1
    out = []
    for p, cs in zip(probs, choices, strict=True):
        p = np.asarray(p, dtype=np.float64)
        prior = np.array([(total[c] - x) / (count[c] - 1) if count[c] > 1 else np.nan
                          for x, c in zip(p, cs, strict=True)])
        known = np.isfinite(prior) & (prior > 0)
        if not known.any():
            out.append(p / p.sum())
            continue
        log_prior = np.where(known, np.log(np.where(known, prior, 1.0)), np.log(prior[known]).mean())
        out.append(_softmax(np.log(p) - log_prior))
    return out


def _content_free_set(questions: Sequence[MCQ], mode: str
                      ) -> tuple[list[MCQ], list[list[list[tuple[int, int]]]]]:
    """The distinct content-free items to score and, per question, per filler of `CONTENT_FREE` and per option,
    (item, option index) in them. Cloze: one item per distinct content-free question holding the union of its
    questions' options (each is scored as a suffix of one shared context); letter: one item per distinct
    (question, options)."""
    items: list[MCQ] = []
    where: dict[tuple, int] = {}
    index: list[list[list[tuple[int, int]]]] = []
    for q in questions:
        per_filler = []
        for filler in CONTENT_FREE:
            cf = content_free(q, filler)
            key = (cf.question, cf.subject) if mode == "cloze" else (cf.question, cf.subject, cf.choices)
            if key not in where:
                where[key] = len(items)
                items.append(replace(cf, choices=(), answer=0) if mode == "cloze" else cf)
            k = where[key]
            if mode == "cloze":
                have = list(items[k].choices)
                have += [c for c in dict.fromkeys(q.choices) if c not in have]
                items[k] = replace(items[k], choices=tuple(have))
                per_filler.append([(k, have.index(c)) for c in q.choices])
            else:
                per_filler.append([(k, i) for i in range(len(q.choices))])
        index.append(per_filler)
    return items, index


@torch.inference_mode()
def score_mcqs(model, tokenizer, questions: Sequence[MCQ], spec: PromptSpec, *, max_batch: int = 16,
               max_tokens: int = 4096, show_progress: bool = True, desc: str = "scoring",
               two_level: bool = True, calibrate: bool = False) -> pd.DataFrame:
    """Score questions fast (shared-prefix KV cache, each context once, length buckets, logits only where needed).

    `max_batch` and `max_tokens` bound the contexts (or, with `two_level=False`, the option rows) of one forward
    pass. Returns one row per question: id, domain, subject, answer, probs, pred, correct, confidence, mode; with
    `calibrate`, also the content-free distribution `probs_cf` (mean over the three content-free prompts) and the
    PMI-calibrated `probs_cal`, `pred_cal`, `correct_cal`, `confidence_cal` (module docstring).
    """
    if spec.mode not in MODES:
        raise ValueError(f"scoring mode must be one of {MODES}, got {spec.mode!r}")
    if not questions:
        return _frame([], [], spec, calibrate=calibrate)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_question(tokenizer, q, spec) for q in questions]
    cf_items, cf_index = _content_free_set(questions, spec.mode) if calibrate else ([], [])
    cf_encoded = [encode_question(tokenizer, q, spec) for q in cf_items]
    bar = progress(total=sum(len(r) for r in encoded + cf_encoded), desc=desc, disable=not show_progress)
    # the content-free items are scored in the same pass (one shared prefix, fuller batches)
    if two_level:
        every = _score_two_level(model, encoded + cf_encoded, pad, max_batch, max_tokens, bar)
    else:
        every = _score_flat(model, encoded + cf_encoded, pad, max_batch, max_tokens, spec.mode, bar)
    scores, cf_scores = every[: len(encoded)], every[len(encoded):]
    bar.close()
    probs = [_softmax(np.array(s, dtype=np.float64)) for s in scores]
    if not calibrate:
        return _frame(list(questions), probs, spec)
    # the scorers give per-token means (cloze) or one letter's score: the PMI is on summed log-probabilities
    summed = [[m * len(scored) for m, (_, scored) in zip(s, rows, strict=True)]
              for s, rows in zip(scores, encoded, strict=True)]
    cf_summed = [[m * len(scored) for m, (_, scored) in zip(s, rows, strict=True)]
                 for s, rows in zip(cf_scores, cf_encoded, strict=True)]
    pairs = [pmi_calibrated(s, [[cf_summed[k][i] for k, i in opts] for opts in fillers])
             for s, fillers in zip(summed, cf_index, strict=True)]
    return _frame(list(questions), probs, spec, calibrate=True, prior=[p for p, _ in pairs],
                  cal=[c for _, c in pairs])


def _frame(questions: list[MCQ], probs: list[np.ndarray], spec: PromptSpec, *, calibrate: bool = False,
           prior: list[np.ndarray] | None = None, cal: list[np.ndarray] | None = None) -> pd.DataFrame:
    recs = []
    for i, (q, p) in enumerate(zip(questions, probs, strict=True)):
        pred = int(np.argmax(p))
        rec = {"id": q.id, "domain": q.domain, "subject": q.subject, "answer": q.answer,
               "probs": [float(x) for x in p], "pred": pred, "correct": pred == q.answer,
               "confidence": float(p[pred]),
               "popularity": q.popularity if q.popularity is not None else math.nan,
               "mode": spec.mode}
        if calibrate and prior is not None and cal is not None:
            pc = int(np.argmax(cal[i]))
            rec.update(probs_cf=[float(x) for x in prior[i]], probs_cal=[float(x) for x in cal[i]], pred_cal=pc,
                       correct_cal=pc == q.answer, confidence_cal=float(cal[i][pc]))
        recs.append(rec)
    cols = ["id", "domain", "subject", "answer", "probs", "pred", "correct", "confidence", "popularity", "mode"]
    return pd.DataFrame(recs, columns=cols + (list(CALIBRATED_COLUMNS) if calibrate else []))


@torch.inference_mode()
def score_reference(model, tokenizer, questions: Sequence[MCQ], spec: PromptSpec,
                    show_progress: bool = False) -> pd.DataFrame:
    """The original loop: one full prompt per forward pass (per option in cloze mode), batch size 1."""
    probs = []
    for q in progress(questions, disable=not show_progress, desc="reference"):
        rows = encode_question(tokenizer, q, spec)
        if spec.mode == "letter":
            logits = model(input_ids=torch.tensor([rows[0][0]])).logits[0, -1].float()
            probs.append(_softmax(np.array([logits[scored[0]].item() for _, scored in rows])))
            continue
        s = []
        for ctx, scored in rows:
            logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + scored])).logits[0].float(), -1)
            s.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(scored)) / len(scored))
        probs.append(_softmax(np.array(s)))
    return _frame(list(questions), probs, spec)
