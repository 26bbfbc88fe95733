"""Evaluation of fine-tuned cells as stage 04 runs it: two-level cloze scoring against one row per option,
interleaved cell by cell on the same cells and questions."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    Row,
    Sizes,
    token_counts,
)
from ift_utils.records import MCQ

MAX_EVAL_DELTA_P = 1e-5  # evaluation, ours vs the previous method (issue 15)


TARGET_EVAL_SPEEDUP = 2.0


def eval_questions(n: int) -> list[MCQ]:
    """Held-out questions of the default study's facts suite (city → country), as stage 04 scores them."""
    from ift_utils.data_facts import build_facts_suite

    suite = build_facts_suite(seed=0, domains=["city_country"], n_train=1, n_dev=1, n_test=n, n_id=1)
    return suite["city_country"]["test"][:n]


def random_adapters(model_name: str, n: int, folder: Path, r: int = 16, alpha: int = 32) -> list[Path]:
    """`n` LoRA adapters (all linear layers, as the default study trains) with random non-zero B matrices."""
    from peft import LoraConfig, get_peft_model

    from ift_utils.models import load_model

    base, _ = load_model(model_name, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear"))
    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        dirs.append(folder / f"cell{i}")
        model.save_pretrained(dirs[-1])
    return dirs


def bench_eval(model_name: str, questions: list[MCQ], sizes: Sizes, max_batch: int) -> tuple[list[Row], dict]:
    """Stage 04's scoring of fine-tuned cells, ours (two levels) against the previous method, cell by cell."""
    from ift_utils.models import load_model
    from ift_utils.probing import PromptSpec, score_mcqs
    from ift_utils.stages.evaluation import AdapterSwapper

    base, tok = load_model(model_name, dtype=torch.float32)  # its own copy: peft injects layers into it
    rows: list[Row] = []
    info: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = random_adapters(model_name, sizes.eval_cells, Path(tmp))
        swapper = AdapterSwapper(base)
        specs = {mode: PromptSpec(mode=mode, template="model") for mode in ("cloze", "letter")}
        seconds = {(mode, tl): 0.0 for mode in specs for tl in (False, True)}
        probs: dict[tuple[str, bool], list[float]] = {key: [] for key in seconds}
        for i, d in enumerate(dirs):
            model = swapper.activate(d)  # each cell once: the swapper cannot re-activate the current adapter
            for mode, spec in specs.items():
                for two_level in (False, True):
                    if i == 0:  # warm-up
                        score_mcqs(model, tok, questions[:2], spec, max_batch=max_batch, show_progress=False,
                                   two_level=two_level)
                    t0 = time.perf_counter()
                    f = score_mcqs(model, tok, questions, spec, max_batch=max_batch, show_progress=False,
                                   two_level=two_level)
                    seconds[mode, two_level] += time.perf_counter() - t0
                    probs[mode, two_level] += [p for ps in f.probs for p in ps]
        n_opt = sum(len(q.choices) for q in questions) * len(dirs)
        for mode, spec in specs.items():
            new, old = seconds[mode, True], seconds[mode, False]
            delta = float(np.abs(np.array(probs[mode, True]) - np.array(probs[mode, False])).max())
            full, ours, _ = token_counts(tok, questions, spec, two_level=True)
            _, before, _ = token_counts(tok, questions, spec, two_level=False)
            label = f"evaluation ({mode}, fine-tuned 0-shot)"
            rows += [
                Row(label, "scored options/s: ours vs previous method", n_opt / new, n_opt / old, "options/s",
                    f"ratio = speed-up (target ≥ {TARGET_EVAL_SPEEDUP:g}× in cloze mode); {len(questions)} "
                    f"questions × {len(dirs)} cells, chat template 'model', max_batch {max_batch}"),
                Row(label, "seconds per cell: ours vs previous method", new / len(dirs), old / len(dirs), "s"),
                Row(label, "max |Δp| ours vs previous method", delta, MAX_EVAL_DELTA_P, "",
                    "ratio ≤ 1 required (limit 1e-5, fp32)"),
                Row(label, "tokens processed per question: ours vs previous method", ours / len(questions),
                    before / len(questions), "tokens",
                    f"full prompts: {full / len(questions):.0f} tokens per question "
                    f"({'one row per question' if mode == 'letter' else 'one row per option'})"),
            ]
            info[f"{mode}_speedup"] = old / new
            info[f"{mode}_delta"] = delta
    return rows, info

