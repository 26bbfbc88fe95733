"""What several stages share: the base network loaded exactly as training uses it, the prompt specs of the
k-shot base probe and the 0-shot fine-tuned scoring, and readers of the files stage 01 writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ift_utils.data_sources import TEST_SET_FIELDS, DomainData
from ift_utils.io import read_jsonl
from ift_utils.paths import RunPaths
from ift_utils.probing import PromptSpec
from ift_utils.records import MCQ
from ift_utils.stages.grid import GENERAL_ONLY, NO_IFT, Cell, device_of, group_file, train_method


def base_spec(P, dd: DomainData, subject: str) -> PromptSpec:
    """The base model's k-shot prompt for questions of one subject (demos from the pool)."""
    demos = tuple(dd.demos.get(subject, []))[: P.k_shot]
    from_mmlu = any("topic" in d.raw for d in demos) or P.data_source == "mmlu"
    paper = P.prompt_style == "paper"
    return PromptSpec(mode=P.scoring, demos=demos, subject=subject, template="none", mmlu_quirk=paper and from_mmlu,
                      bos=not (paper and from_mmlu))


ENCODER = 2  # version of the prompt encoding (ift_utils.encoding); part of every scoring cache key


def bos_for(P, test_set: str) -> bool:
    """Whether prompts of a test set start with the tokenizer's special prefix (BOS): always, as the tokenizer
    does by default, except in paper mode on MMLU questions, where the original adds none."""
    mmlu = P.data_source == "mmlu" or (P.id_ood_source == "mmlu" and test_set in ("ID", "OOD"))
    return not (P.prompt_style == "paper" and mmlu)


def probe_frame(probe: pd.DataFrame, domain: str, split: str) -> pd.DataFrame:
    """The probe rows of one domain's split (one row per question)."""
    return probe[(probe["probe_domain"] == domain) & (probe["split"] == split)].reset_index(drop=True)


def read_probe(paths: RunPaths, domains: list[str]) -> pd.DataFrame:
    """Stage 01's per-question beliefs; a clear error when stage 01 has not run for a domain."""
    frames = []
    for d in domains:
        p = paths.probe / f"{d}.jsonl"
        if not p.exists():
            raise FileNotFoundError(f"no probe results for domain {d!r} at {p}: run stage 01 first")
        frames.append(pd.DataFrame(read_jsonl(p)))
    return pd.concat(frames, ignore_index=True)


def read_questions(paths: RunPaths, domain: str, split: str) -> list[MCQ]:
    """Questions stage 01 wrote for a domain's split."""
    return read_mcq_file(paths.data / domain / f"{split}.jsonl")


def read_mcq_file(path: Path) -> list[MCQ]:
    """MCQs from a JSONL file in the original schema, as the stages write them."""
    return [MCQ(**{**r, "choices": tuple(r["choices"])}) for r in read_jsonl(path)]


def ft_spec(P, test_set: str = "HOMO") -> PromptSpec:
    """Fine-tuned models are scored 0-shot in the chat template they were trained with, encoded as in training."""
    return PromptSpec(mode=P.scoring, template=P.chat_template, bos=bos_for(P, test_set))


def load_study_base(P):
    """(model, tokenizer, precision) of the base network exactly as the fine-tuned cells use it (NF4 for QLoRA,
    bf16 where training is bf16, else fp32), in eval mode: stage 01 probes it, stage 04 scores the controls on it,
    so consistency compares one network with and without an adapter."""
    from ift_utils.models import load_tokenizer, resolve_model
    from ift_utils.training import load_base

    method, device = train_method(P), device_of(P)
    path = resolve_model(P.model, allow_network=P.allow_network, allow_pickle=P.allow_pickle)
    tok = load_tokenizer(P.model, allow_network=P.allow_network, trust_remote_code=P.trust_remote_code,
                         allow_pickle=P.allow_pickle)
    model = load_base(path, method, bf16=device == "cuda", device=device)
    model.config.use_cache = True  # load_base turns the cache off for training; scoring and generation need it
    model.eval()
    # Scoring stays eager whatever `compile` says: it runs on a shared-prefix key/value cache, which a compiled
    # layer takes per layer index (one graph per layer, past torch's recompile limit): see ift_utils/probing.py.
    return model, tok, precision_of(P)


def precision_of(P) -> str:
    """The base weights' precision as training uses them (recorded in the manifest by stages 01 and 04)."""
    method, cuda = train_method(P), device_of(P) == "cuda"
    if method == "qlora":
        return f"nf4 + double quantization, {'bf16' if cuda else 'fp32'} compute"
    return "bf16" if cuda and method == "lora" else "fp32"


def test_questions(paths: RunPaths, domain: str) -> dict[str, list[MCQ]]:
    """A domain's test sets as stage 01 wrote them: HOMO, ID, OOD and, where the run has one, XD (cross-domain)."""
    out = {}
    for t, f in TEST_SET_FIELDS.items():
        if t in ("HOMO", "ID", "OOD") or (paths.data / domain / f"{f}.jsonl").exists():
            out[t] = read_questions(paths, domain, f)
    return out


def fit_items(paths: RunPaths, cell: Cell) -> list[dict]:
    """The cell's own training questions with their targets (empty for general_only and no_ift)."""
    path = group_file(paths, cell)
    if cell.group in (NO_IFT, GENERAL_ONLY) or not path.exists():
        return []
    return fit_items_of(path)


def fit_items_of(path: Path) -> list[dict]:
    from ift_utils.interventions import example_mcq

    return [{"mcq": example_mcq(ex), "target": int(ex["target"]), "own": int(ex["pred"])} for ex in read_jsonl(path)]
