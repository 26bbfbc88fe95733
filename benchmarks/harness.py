"""Ours against lm-evaluation-harness: cloze log-likelihood scoring of the same facts-suite questions, k-shot as stage
01 probes them, by our `score_mcqs` and by lm-eval's Hugging Face backend (`HFLM.loglikelihood`), fed the very
context and option strings our encoder scores. lm-eval is installed by `make bench` (requirements-bench.txt)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from benchmarks.common import Row, timed
from ift_utils.probing import PromptSpec, _softmax, build_prompt, continuations, encode_question
from ift_utils.records import MCQ

LABEL = "harness (lm-eval cloze)"
MISSING = ("lm_eval (lm-evaluation-harness) is not installed, so the harness section cannot run: `make bench` "
           "installs it (requirements-bench.txt) before running the benchmarks")
MAX_HARNESS_DELTA = 1e-4  # |Δ mean log-prob| per option, fp32, when both score the same token ids


class HarnessUnavailable(RuntimeError):
    """lm-evaluation-harness cannot be imported."""


def lm_eval_classes() -> tuple[type, type]:
    """(HFLM, Instance) from lm-evaluation-harness; `HarnessUnavailable` saying to run `make bench` without it."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise HarnessUnavailable(f"{MISSING} ({e})") from e
    return HFLM, Instance


def harness_set(n: int) -> tuple[PromptSpec, list[MCQ]]:
    """Stage 01's k-shot cloze spec (params/default.yaml: k, prompt style, scoring) for the facts suite's city →
    country relation, and `n` of its training questions; the demos are its dev split's first k questions."""
    from dataclasses import replace

    from ift_utils.config import load_params
    from ift_utils.data_facts import build_facts_suite
    from ift_utils.data_sources import DomainData
    from ift_utils.paths import PROJECT_ROOT
    from ift_utils.stages.shared import base_spec

    P = load_params(PROJECT_ROOT / "params" / "default.yaml")
    k = P.k_shot
    suite = build_facts_suite(seed=0, domains=["city_country"], n_train=n, n_dev=max(k, 1), n_test=1, n_id=1)
    part = suite["city_country"]
    questions, subject = part["train"][:n], part["train"][0].subject
    dd = DomainData(name="city_country", subject=subject, train=questions, dev=part["dev"], test=[], id_test=[],
                    ood_test=[], demos={subject: part["dev"][:k]})
    return replace(base_spec(P, dd, subject), mode="cloze"), questions


def _ours(model, tok, questions: list[MCQ], spec, max_batch: int):
    from ift_utils.probing import score_mcqs

    return score_mcqs(model, tok, questions, spec, max_batch=max_batch, show_progress=False)


def _our_scores(model, tok, questions: list[MCQ], spec, max_batch: int) -> list[list[float]]:
    """Per option: the mean log-prob `score_mcqs` softmaxes (its two-level scorer, untimed, for the raw values)."""
    from ift_utils.probing import _score_two_level
    from ift_utils.progress import progress

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [encode_question(tok, q, spec) for q in questions]
    with torch.inference_mode():
        return _score_two_level(model, encoded, pad, max_batch, 4096, progress(total=0, disable=True))


def _requests(questions: list[MCQ], spec, instance: type) -> list:
    """lm-eval loglikelihood requests: per option, (our rendered context, our option string with its space)."""
    reqs = []
    for q in questions:
        ctx = build_prompt(q, spec)
        reqs += [instance(request_type="loglikelihood", doc={}, arguments=(ctx, c), idx=i)
                 for i, c in enumerate(continuations(q, spec))]
    return reqs


def _harness(lm, questions: list[MCQ], spec, instance: type) -> list[tuple[float, bool]]:
    with torch.inference_mode():
        return lm.loglikelihood(_requests(questions, spec, instance), disable_tqdm=True)


def _seams(lm, tok, questions: list[MCQ], spec) -> tuple[list[list[int]], list[list[int]]]:
    """Per question and option: lm-eval's continuation token count, and how its token ids compare with ours (2: the
    same context and continuation ids, 1: the same sequence split elsewhere, 0: other ids); ours are
    `encode_question`'s, lm-eval's those of `_encode_pair`, what its `loglikelihood` tokenizes with."""
    lengths, alike = [], []
    for q in questions:
        ctx, n_lm, same = build_prompt(q, spec), [], []
        for (c_ours, s_ours), cont in zip(encode_question(tok, q, spec), continuations(q, spec), strict=True):
            c_lm, s_lm = lm._encode_pair(ctx, cont)
            n_lm.append(len(s_lm))
            same.append(0 if c_ours + s_ours != list(c_lm) + list(s_lm) else 2 if len(s_ours) == len(s_lm) else 1)
        lengths.append(n_lm)
        alike.append(same)
    return lengths, alike


def bench_harness(model, tok, questions: list[MCQ], spec: PromptSpec, max_batch: int) -> tuple[list[Row], dict]:
    """Our `score_mcqs` against lm-eval's `HFLM.loglikelihood` on the same questions, strings and model object:
    questions/s and options/s, max |Δ| of each option's mean log-prob, max |Δp|, same choice."""
    hflm, instance = lm_eval_classes()
    # its own tokenizer copy: HFLM sets a pad token when there is none
    lm = hflm(pretrained=model, tokenizer=copy.deepcopy(tok), batch_size=max_batch)
    _ours(model, tok, questions[:1], spec, max_batch)  # warm-ups
    _harness(lm, questions[:1], spec, instance)
    ours, t_ours = timed(lambda: _ours(model, tok, questions, spec, max_batch))
    harness, t_lm = timed(lambda: _harness(lm, questions, spec, instance))

    n, n_opt = len(questions), sum(len(q.choices) for q in questions)
    raw = _our_scores(model, tok, questions, spec, max_batch)
    lengths, alike = _seams(lm, tok, questions, spec)
    deltas, dps, same, acc_lm, acc_sum, acc_chars, check = [], [], 0, 0, 0, 0, 0.0
    it = iter(harness)
    for q, p_ours, s_ours, n_lm, how in zip(questions, ours["probs"], raw, lengths, alike, strict=True):
        got = [next(it)[0] for _ in q.choices]
        mean = np.array(got) / np.array(n_lm)
        deltas += [(float(d), h) for d, h in zip(np.abs(mean - np.array(s_ours)), how, strict=True)]
        p_lm = _softmax(mean)
        dps.append(float(np.abs(p_lm - np.array(p_ours)).max()))
        check = max(check, float(np.abs(_softmax(np.array(s_ours)) - np.array(p_ours)).max()))
        same += int(np.argmax(p_lm) == np.argmax(p_ours))
        acc_lm += int(np.argmax(p_lm) == q.answer)
        acc_sum += int(np.argmax(got) == q.answer)  # lm-eval's `acc`: summed log-prob
        acc_chars += int(np.argmax(np.array(got) / [len(c) for c in q.choices]) == q.answer)  # `acc_norm`
    if check > 1e-9:
        raise RuntimeError(f"our raw scores do not reproduce score_mcqs' probabilities (max |Δp| {check:.1e})")
    delta, dp = max(d for d, _ in deltas), max(dps)
    delta_alike = max((d for d, h in deltas if h == 2), default=0.0)  # like for like: the same ids, the same split
    same_ids, same_split = sum(h >= 1 for _, h in deltas), sum(h == 2 for _, h in deltas)
    acc_ours = float(np.mean(ours["correct"].astype(bool)))
    seam = (f"token ids: {same_ids}/{n_opt} options have the same context + continuation ids as lm-eval's "
            f"_encode_pair, {same_split}/{n_opt} also split at the same token")
    if same_split < n_opt:
        seam += (f"; the rest differ at the seam (lm-eval: whole[len(tok(context)):], ours: after the longest common "
                 f"prefix) or in special tokens, so their Δ compares different token ids; max |Δ| over the "
                 f"{same_split} alike: {delta_alike:.1e}")
    setup = (f"{n} facts-suite questions (city → country), {len(spec.demos)}-shot cloze as stage 01, {n_opt} options; "
             f"same model object and context/option strings; batch size {max_batch} both; inference_mode both")
    rows = [
        Row(LABEL, "questions/s: ours vs lm-eval HFLM.loglikelihood", n / t_ours, n / t_lm, "q/s",
            f"ratio = speed-up; {setup}"),
        Row(LABEL, "options/s: ours vs lm-eval", n_opt / t_ours, n_opt / t_lm, "options/s",
            "lm-eval: one right-padded row per option (context + option), whole sequence every time, except that "
            "options of one token after the same context share a row (its logits cache)"),
        Row(LABEL, "max |Δ mean log-prob| per option: ours vs lm-eval", delta, MAX_HARNESS_DELTA, "nats/token",
            f"lm-eval's sum ÷ its continuation tokens against ours (mean per token); ratio ≤ 1 required where both "
            f"tokenize alike; {seam}"),
        Row(LABEL, "max |Δp| of option probabilities (softmax of the means)", dp, None, ""),
        Row(LABEL, "same choice: ours vs lm-eval (same normalisation)", same / n, None, "share",
            f"{same}/{n} questions"),
        Row(LABEL, "accuracy: ours vs lm-eval (per-token mean)", acc_ours, acc_lm / n, ""),
        Row(LABEL, "accuracy under lm-eval's own metrics: acc (sum) vs acc_norm (per character)", acc_sum / n,
            acc_chars / n, "", "what an lm-eval multiple_choice task reports; ours normalises per token"),
    ]
    info = {"delta": delta, "delta_alike": delta_alike, "delta_p": dp, "same": same / n, "speedup": t_lm / t_ours,
            "alike": same_split, "options": n_opt}
    return rows, info

