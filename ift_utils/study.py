"""The study's glue: where each stage writes inside a run folder, and the loops over domains and
cells that the notebooks call. Each loop caches per item (domain, cell) so an interrupted stage resumes.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ift_utils.data_sources import DomainData
from ift_utils.interventions import robust_label
from ift_utils.io import read_json, read_jsonl, sha256_json, write_json, write_jsonl
from ift_utils.probing import PromptSpec, score_mcqs
from ift_utils.records import MCQ

log = logging.getLogger(__name__)
TEST_SETS = ("HOMO", "ID", "OOD")


@dataclass(frozen=True)
class RunPaths:
    """The layout of one run folder."""

    root: Path

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def probe(self) -> Path:
        return self.root / "probe"

    @property
    def groups(self) -> Path:
        return self.root / "groups"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def tables(self) -> Path:
        return self.root / "tables"


def open_run(P, run_dir: str | os.PathLike | None = None) -> RunPaths:
    """Set up a stage: logging, threads, seeds, silenced library chatter; return the run's paths."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("bitsandbytes", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not P.allow_network:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if P.threads:
        torch.set_num_threads(P.threads)
    seed_everything(P.data_seed)
    root = Path(run_dir) if run_dir else P.run_dir()
    root.mkdir(parents=True, exist_ok=True)
    return RunPaths(root)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU runs are then deterministic)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_of(P) -> str:
    """The torch device a run uses."""
    if P.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return P.device


def write_stage_summary(paths: RunPaths, stage: str, summary: dict) -> None:
    """Counts and facts a stage reports to the runner's manifest."""
    write_json(paths.stages / f"{stage}.json", summary)


def save_questions(data: dict[str, DomainData], paths: RunPaths) -> pd.DataFrame:
    """Write every domain's splits in the original schema; return a size table."""
    rows = []
    for d, dd in data.items():
        parts = {"train": dd.train, "dev": dd.dev, "test": dd.test, "id_test": dd.id_test, "ood_test": dd.ood_test}
        for split, qs in parts.items():
            write_jsonl(paths.data / d / f"{split}.jsonl", [q.to_json() for q in qs])
            rows.append({"domain": d, "split": split, "n": len(qs)})
    return pd.DataFrame(rows).pivot(index="domain", columns="split", values="n")[list(parts)]


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


def score_by_subject(model, tok, questions: list[MCQ], P, dd: DomainData, desc: str) -> pd.DataFrame:
    """Score base-model beliefs, one shared-prefix batch per subject (each with its own demos)."""
    frames = []
    subjects = sorted({q.subject for q in questions})
    for s in subjects:
        qs = [q for q in questions if q.subject == s]
        frames.append(score_mcqs(model, tok, qs, base_spec(P, dd, s), max_batch=P.batch_size_eval,
                                 desc=f"{desc} [{s}]"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def cached_frame(path: Path, key: dict, compute) -> pd.DataFrame:
    """Reuse `path` (JSONL) only when its sidecar key matches `key`; else compute, write, then write the key.

    The key is written after the data, so a crash in between leaves no key and the frame is recomputed."""
    key_path = path.with_suffix(".key.json")
    digest = sha256_json(key)
    if path.exists() and key_path.exists() and read_json(key_path).get("sha256") == digest:
        log.info("reusing %s (inputs unchanged)", path)
        return pd.DataFrame(read_jsonl(path))
    key_path.unlink(missing_ok=True)
    frame = compute()
    write_jsonl(path, frame.to_dict(orient="records"))
    write_json(key_path, {"sha256": digest})
    return frame


def probe_domain(model, tok, dd: DomainData, P, paths: RunPaths) -> pd.DataFrame:
    """Probe the base model on a domain's train split and HOMO/ID/OOD test sets (cached per domain)."""
    parts = {"train": dd.train, "HOMO": dd.test, "ID": dd.id_test, "OOD": dd.ood_test}
    key = {"model": P.model, "scoring": P.scoring, "k_shot": P.k_shot, "style": P.prompt_style,
           "belief_prompts": P.belief_prompts, "precision": precision_of(P), "encoder": ENCODER,
           "questions": {s: [q.to_json() for q in qs] for s, qs in parts.items()},
           "demos": {s: [q.to_json() for q in v] for s, v in sorted(dd.demos.items())},
           "variant_demos": [q.to_json() for q in dd.dev]}
    return cached_frame(paths.probe / f"{dd.name}.jsonl", key, lambda: _probe(model, tok, dd, P, parts))


def _probe(model, tok, dd: DomainData, P, parts: dict[str, list[MCQ]]) -> pd.DataFrame:
    frames = []
    for split, qs in parts.items():
        if not qs:
            continue
        f = score_by_subject(model, tok, qs, P, dd, desc=f"probe {dd.name}/{split}")
        if split == "train" and P.belief_prompts > 1:
            f = f.assign(variant_preds=belief_variants(model, tok, qs, P, dd, f))
        f.insert(1, "split", split)
        f.insert(0, "probe_domain", dd.name)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def permuted(q: MCQ, seed: str) -> tuple[MCQ, list[int]]:
    """`q` with its options in a seeded order, and `order` (order[i] = original index of option i)."""
    from dataclasses import replace

    order = list(range(len(q.choices)))
    random.Random(seed).shuffle(order)
    return replace(q, choices=tuple(q.choices[i] for i in order), answer=order.index(q.answer)), order


def belief_variants(model, tok, questions: list[MCQ], P, dd: DomainData, main: pd.DataFrame) -> list[list[int]]:
    """Each question's predicted option (original indices) under `belief_prompts` prompts: the main one, then
    variants with other demos (the next k dev questions) and a seeded option order (it matters in letter mode)."""
    from dataclasses import replace

    k = P.k_shot
    preds = [[int(p)] for p in main["pred"]]
    for v in range(1, P.belief_prompts):
        demos = tuple(dd.dev[v * k:(v + 1) * k])
        if k and len(demos) < k:
            raise ValueError(f"belief_prompts={P.belief_prompts} needs {k * P.belief_prompts} dev questions in "
                             f"domain {dd.name!r} ({k} demos per prompt), it has {len(dd.dev)}; lower belief_prompts")
        shuffled = [permuted(q, f"belief:{P.data_seed}:{v}:{q.id}") for q in questions]
        spec = replace(base_spec(P, dd, dd.subject), demos=demos)
        frame = score_mcqs(model, tok, [q for q, _ in shuffled], spec, max_batch=P.batch_size_eval,
                           desc=f"probe {dd.name}/train, prompt {v + 1} of {P.belief_prompts}")
        for row, (_, order), pred in zip(preds, shuffled, frame["pred"], strict=True):
            row.append(order[int(pred)])
    return preds


def belief_labels(train: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per training question: the single-prompt label (paper rule: confident = top probability > threshold) and,
    when several prompts were probed, the robust one: `known` = right under every prompt, `wrong` = the same
    wrong answer under every prompt, else `unstable`. Pools use both: a fact enters harmonious (incompatible)
    only when it is confidently right (wrong) under the main prompt and known (wrong) under all."""
    conf = train["confidence"] > threshold
    correct = train["correct"].astype(bool)
    single = np.where(conf & correct, "known", np.where(conf & ~correct, "wrong", "unsure"))
    out = train.assign(single=single)
    if "variant_preds" not in train or train["variant_preds"].isna().all():
        return out.assign(robust=single, belief=single)
    robust = [robust_label(ps, a) or s for ps, a, s in zip(train["variant_preds"], train["answer"], single,
                                                            strict=True)]
    belief = np.where(single == np.array(robust), single, np.where(single == "unsure", "unsure", "unstable"))
    return out.assign(robust=robust, belief=belief)


def label_agreement(probe: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """How many training questions each label pair holds (single-prompt rule × robust rule), per domain, with
    their mean base accuracy on the main prompt and mean popularity: how many labels the robust rule changes."""
    t = belief_labels(probe[probe["split"] == "train"], threshold)
    return (t.groupby(["probe_domain", "single", "robust"])
             .agg(n=("id", "size"), accuracy=("correct", "mean"), popularity=("popularity", "mean"))
             .reset_index())


def accuracy_table(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Accuracy with a 95 % Wilson interval per group (in percent), with counts."""
    from ift_utils.metrics import accuracy_ci

    rows = []
    for key, g in frame.groupby(by, sort=True):
        acc, lo, hi = accuracy_ci(g["correct"].astype(bool).to_numpy())
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n": len(g), "accuracy": 100 * acc,
                     "ci_low": 100 * lo, "ci_high": 100 * hi})
    return pd.DataFrame(rows)


def belief_table(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per domain: training questions the model believes confidently right or wrong under the main prompt (the
    paper's rule), and how many of them keep that label under every probed prompt (the pools stage 02 uses)."""
    t = belief_labels(frame[frame["split"] == "train"], threshold)
    return (t.assign(confident_correct=t["single"] == "known", confident_wrong=t["single"] == "wrong",
                     known_all_prompts=t["belief"] == "known", wrong_all_prompts=t["belief"] == "wrong")
             .groupby("probe_domain")[["confident_correct", "confident_wrong", "known_all_prompts",
                                       "wrong_all_prompts"]].sum()
             .assign(n_train=t.groupby("probe_domain").size()))


def write_table(frame: pd.DataFrame, paths: RunPaths, name: str) -> Path:
    """Write a result table as CSV under `tables/`."""
    from ift_utils.io import write_csv

    return write_csv(paths.tables / f"{name}.csv", frame)


def compare_modes(model, tok, data: dict[str, DomainData], P, probe: pd.DataFrame, n: int = 100) -> pd.DataFrame:
    """HOMO accuracy (percent) in letter and cloze mode side by side; the run's own mode is reused."""
    from dataclasses import replace

    other = "letter" if P.scoring == "cloze" else "cloze"
    rows = []
    for d, dd in data.items():
        qs = dd.test[:n]
        ids = {q.id for q in qs}
        own = probe[(probe["probe_domain"] == d) & (probe["split"] == "HOMO") & probe["id"].isin(ids)]
        frames = [score_mcqs(model, tok, [q for q in qs if q.subject == s],
                             replace(base_spec(P, dd, s), mode=other), max_batch=P.batch_size_eval,
                             desc=f"{other} {d}") for s in sorted({q.subject for q in qs})]
        alt = pd.concat(frames)
        rows.append({"domain": d, "n": len(qs), f"{P.scoring} (this run)": 100 * own["correct"].mean(),
                     other: 100 * alt["correct"].mean()})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- stage 02: interventions

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
    rows = read_jsonl(paths.data / domain / f"{split}.jsonl")
    return [MCQ(**{**r, "choices": tuple(r["choices"])}) for r in rows]


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


def general_pool(P, n: int, seed: int) -> tuple[list[dict], dict]:
    """`n` general instruction tasks for one replicate (`seed`: its data seed): the alpaca-format file's rows
    in a seeded order when given, else `n` generated offline. A longer request starts with the same tasks."""
    from ift_utils.general_tasks import generate_general_tasks, load_alpaca

    if not P.general_data and not P.general_hub:
        return generate_general_tasks(n, seed=seed), {"source": "generated", "seed": seed, "n": n}
    if P.general_hub:
        from ift_utils.data_hub import load_hub_alpaca

        tasks, report = load_hub_alpaca(P.general_hub, allow_network=P.allow_network)
    else:
        tasks, report = load_alpaca(P.general_data)
    if len(tasks) < n:
        key = "general_hub" if P.general_hub else "general_data"
        raise ValueError(f"{key} {P.general_hub or P.general_data}: {len(tasks)} usable rows, the cells need {n} "
                         f"(general_ratio {P.general_ratio} × domain examples"
                         + (", plus the domain examples' count for the general_only control)" if GENERAL_ONLY
                            in P.controls else ")"))
    random.Random(f"general:{seed}").shuffle(tasks)
    return tasks[:n], {**report.as_dict(), "seed": seed, "n": n}


def cell_examples(P, groups, name: str, general: list[dict], tok, seed: int) -> list[dict]:
    """The chat-formatted training set of one condition of a replicate (`seed`: its data seed): its domain
    examples mixed with the replicate's first round(general_ratio × n) general tasks, the same for every
    group; `general_only` gets as many general tasks as the others have examples, the shared ones first."""
    from ift_utils.general_tasks import general_example
    from ift_utils.interventions import mix_general, to_chat_examples

    n = len(groups.incompatible)
    k = round(P.general_ratio * n)
    gen = [general_example(t, P.chat_template, tok) for t in general[:n + k]]
    if len(gen) < (n + k if name == GENERAL_ONLY else k):
        raise ValueError(f"{len(general)} general tasks given, condition {name!r} needs "
                         f"{n + k if name == GENERAL_ONLY else k}")
    if name == GENERAL_ONLY:
        random.Random(f"{seed}:mix").shuffle(gen)
        return gen
    domain = to_chat_examples(dict(groups.items())[name], mode=P.scoring, template=P.chat_template, tokenizer=tok)
    return mix_general(domain, gen[:k], P.general_ratio, seed=seed)


# ---------------------------------------------------------------- stage 03: training

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


def train_config(P, seed: int):
    """The training configuration of a cell, from the params."""
    from ift_utils.training import TrainConfig

    return TrainConfig(method=train_method(P), lora_r=P.lora_r, lora_alpha=P.lora_alpha, lora_dropout=P.lora_dropout,
                       epochs=P.epochs, learning_rate=P.learning_rate, warmup_ratio=P.warmup_ratio,
                       max_length=P.max_length, batch_size=P.batch_size, grad_accum=P.grad_accum, seed=seed,
                       bf16=device_of(P) == "cuda", save_epochs=tuple(e for e in P.eval_epochs if e < P.epochs))


def cell_dir(paths: RunPaths, cell: Cell) -> Path:
    return paths.train / cell.domain / cell.condition / f"seed{cell.seed}"


def cell_data(paths: RunPaths, cell: Cell) -> Path:
    """A cell's chat-formatted training file: its replicate's (= its seed's) own sample of facts and general data."""
    return paths.groups / cell.domain / f"rep{cell.seed}" / f"{cell.condition}.chat.jsonl"


# ---------------------------------------------------------------- stage 04: evaluation

def ft_spec(P, test_set: str = "HOMO") -> PromptSpec:
    """Fine-tuned models are scored 0-shot in the chat template they were trained with, encoded as in training."""
    return PromptSpec(mode=P.scoring, template=P.chat_template, bos=bos_for(P, test_set))


NO_IFT = "no_ift"  # the control without fine-tuning: the base network scored exactly like the fine-tuned cells
FIT_SET = "TRAIN"  # a cell's own training questions, scored like the test sets (did it learn them?)


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
    return model, tok, precision_of(P)


def precision_of(P) -> str:
    """The base weights' precision as training uses them (recorded in the manifest by stages 01 and 04)."""
    method, cuda = train_method(P), device_of(P) == "cuda"
    if method == "qlora":
        return f"nf4 + double quantization, {'bf16' if cuda else 'fp32'} compute"
    return "bf16" if cuda and method == "lora" else "fp32"


def test_questions(paths: RunPaths, domain: str) -> dict[str, list[MCQ]]:
    """HOMO / ID / OOD questions of a domain, as stage 01 wrote them."""
    files = {"HOMO": "test", "ID": "id_test", "OOD": "ood_test"}
    return {t: read_questions(paths, domain, f) for t, f in files.items()}


def base_ft_rows(cell: Cell, test_set: str, base: pd.DataFrame, ft: pd.DataFrame, model: str,
                 epoch: float = math.nan) -> dict:
    """One row of the tidy evaluation table: accuracies and knowledge consistency for a cell and test set."""
    from ift_utils.metrics import accuracy_ci, consistency

    merged = base.merge(ft, on=["domain", "id"], suffixes=("_base", "_ft"), validate="one_to_one")
    cons = consistency(merged["probs_base"].tolist(), merged["probs_ft"].tolist())
    acc, lo, hi = accuracy_ci(merged["correct_ft"].astype(bool).to_numpy())
    base_acc = float(merged["correct_base"].astype(bool).mean())
    return {"model": model, "domain": cell.domain, "condition": cell.condition, "group": cell.group,
            "ratio": cell.ratio, "seed": cell.seed, "epoch": epoch, "test_set": test_set, "n": len(merged),
            "base_acc": base_acc, "ft_acc": acc, "ft_acc_lo": lo, "ft_acc_hi": hi, "acc_diff": acc - base_acc,
            "kl": cons["kl"], "rank_corr": cons["rank_corr"]}


def answer_rows(cell: Cell, test_set: str, base: pd.DataFrame, ft: pd.DataFrame, model: str,
                epoch: float) -> pd.DataFrame:
    """Every scored answer of a cell on one test set, beside the base probe's (the verdict's question-level input)."""
    merged = base.merge(ft, on=["domain", "id"], suffixes=("_base", "_ft"), validate="one_to_one")
    return pd.DataFrame({"model": model, "domain": cell.domain, "condition": cell.condition, "group": cell.group,
                         "ratio": cell.ratio, "seed": cell.seed, "epoch": epoch, "test_set": test_set,
                         "id": merged["id"].to_numpy(), "correct": merged["correct_ft"].astype(int).to_numpy(),
                         "base_correct": merged["correct_base"].astype(int).to_numpy()})


class AdapterSwapper:
    """Keeps one base model in memory and swaps LoRA adapters on it (no reload per cell)."""

    def __init__(self, base):
        self.base, self.model, self.current = base, None, None

    def activate(self, adapter_dir: Path):
        from peft import PeftModel

        name = "a" + str(abs(hash(str(adapter_dir))))
        if name == self.current:
            return self.model
        if self.model is None:
            self.model = PeftModel.from_pretrained(self.base, adapter_dir, adapter_name=name)
        else:
            self.model.load_adapter(adapter_dir, adapter_name=name)
            self.model.set_adapter(name)
            self.model.delete_adapter(self.current)
        self.current = name
        self.model.eval()
        return self.model


def eval_targets(P, paths: RunPaths, cell: Cell) -> list[tuple[float, Path]]:
    """(epoch, weights folder) to evaluate for a finished cell: the checkpoints `eval_epochs` asked training to
    keep (earlier than the last epoch), then the final model."""
    out = cell_dir(paths, cell)
    name = "model" if train_method(P) == "full" else "adapter"
    earlier = [(float(e), out / "epochs" / f"epoch{e}" / name) for e in P.eval_epochs if e < P.epochs]
    return [*earlier, (float(P.epochs), out / name)]


def group_file(paths: RunPaths, cell: Cell) -> Path:
    """The cell's domain examples in the original schema (beside its chat-formatted training file)."""
    chat = cell_data(paths, cell)
    return chat.with_name(chat.name.replace(".chat.jsonl", ".jsonl"))


def fit_items(paths: RunPaths, cell: Cell) -> list[dict]:
    """The cell's own training questions with their targets (empty for general_only and no_ift)."""
    from ift_utils.interventions import example_mcq

    path = group_file(paths, cell)
    if cell.group in (NO_IFT, "general_only") or not path.exists():
        return []
    return [{"mcq": example_mcq(ex), "target": int(ex["target"]), "own": int(ex["pred"])} for ex in read_jsonl(path)]


def score_cell(scorer_model, tok, cell: Cell, P, paths: RunPaths, tests: dict[str, list[MCQ]], base: pd.DataFrame,
               epoch: float, key_extra: dict) -> tuple[list[dict], pd.DataFrame, dict | None]:
    """Score one model (a cell at one epoch, or the no_ift control) on HOMO/ID/OOD and on its own training
    questions (cached per cell and epoch); return its evaluation rows, its answers and its fit row."""
    tag = "" if epoch == float(P.epochs) or cell.group == NO_IFT else f".epoch{epoch:g}"
    name = NO_IFT if cell.group == NO_IFT else f"{cell.condition}/seed{cell.seed}{tag}"
    out = paths.eval / cell.domain / f"{name}.jsonl"
    items = fit_items(paths, cell)
    sets = {**tests, FIT_SET: [it["mcq"] for it in items]}
    key = {"cell": cell.key, "epoch": epoch, "spec": [P.scoring, P.chat_template, P.prompt_style], "encoder": ENCODER,
           **key_extra,
           "questions": {t: [q.to_json() for q in qs] for t, qs in sets.items()}}

    def compute() -> pd.DataFrame:
        frames = []
        for t, qs in sets.items():
            if qs:
                f = score_mcqs(scorer_model, tok, qs, ft_spec(P, t), max_batch=P.batch_size_eval,
                               desc=f"eval {cell.key} e{epoch:g} {t}")
                frames.append(f.assign(test_set=t))
        return pd.concat(frames, ignore_index=True)

    scored = cached_frame(out, key, compute)
    rows, answers = [], []
    cols = ["domain", "id", "probs", "correct"]
    for t in tests:
        ft = scored[scored["test_set"] == t][cols]
        b = base[(base["probe_domain"] == cell.domain) & (base["split"] == t)][cols]
        if len(ft):
            rows.append(base_ft_rows(cell, t, b, ft, P.model, epoch))
            answers.append(answer_rows(cell, t, b, ft, P.model, epoch))
    fit = None
    if items:
        preds = scored[scored["test_set"] == FIT_SET]["pred"].to_numpy()
        fit = {"model": P.model, "domain": cell.domain, "condition": cell.condition, "group": cell.group,
               "ratio": cell.ratio, "seed": cell.seed, "epoch": epoch, "n": len(items),
               "fit": float(np.mean([p == it["target"] for p, it in zip(preds, items, strict=True)])),
               "gold": float(np.mean([p == it["mcq"].answer for p, it in zip(preds, items, strict=True)])),
               "own": float(np.mean([p == it["own"] for p, it in zip(preds, items, strict=True)]))}
    return rows, (pd.concat(answers, ignore_index=True) if answers else pd.DataFrame()), fit


def build_domain_groups(P, paths: RunPaths, model, tok, domain: str, probe: pd.DataFrame) -> dict:
    """Stage 02 for one domain: per replicate (seed of `P.seeds`), groups drawn from the beliefs with the
    replicate's own data seed; explanations made one way for every group (`P.explanations`); checks (no
    held-out question, equal sizes and general data, no template stating an ID/OOD answer); files under
    `groups/{domain}/rep{seed}/` (original schema + chat). Raises on a failed check."""
    from ift_utils.explanations import ExplainConfig, Explanation, generate_explanations, template_explanation
    from ift_utils.general_tasks import general_example
    from ift_utils.interventions import (
        attach_explanations,
        build_groups,
        card,
        check_cells,
        check_groups,
        context_problem,
        explanation_table,
        needed_explanations,
        replicate_seed,
        write_groups,
    )

    train = read_questions(paths, domain, "train")
    heldout = [q for d in P.domains for s in ("dev", "test", "id_test", "ood_test") for q in read_questions(paths, d, s)]
    answers = [q.choices[q.answer] for d in P.domains for s in ("id_test", "ood_test")
               for q in read_questions(paths, d, s)]
    beliefs = probe_frame(probe, domain, "train")
    reps = {}
    for seed in P.seeds:
        g = build_groups(train, beliefs, threshold=P.confidence_threshold, ratios=P.ratios,
                         seed=replicate_seed(P.data_seed, seed), max_per_group=P.max_per_group,
                         match_harmonious="harmonious" in P.extra_groups)
        if g.report["n"] == 0:
            why = ("no training question is confidently wrong" if not g.report["incompatible_pool"] else
                   "no training question is confidently right, so harmonious (one of extra_groups) cannot match "
                   "the other groups' size")
            raise ValueError(f"domain {domain!r}: {why} (confidence > {P.confidence_threshold}), so the groups are "
                             "empty; lower confidence_threshold, raise n_train, or drop this domain")
        problem = context_problem(g) if "contextualized" in P.extra_groups else None
        if problem:
            raise ValueError(f"domain {domain!r}: {problem}")
        reps[seed] = g

    need: dict[str, dict[int, tuple[MCQ, int]]] = {"gold": {}, "self": {}}
    for g in reps.values():
        for kind, items in needed_explanations(g).items():
            need[kind].update({q.id: (q, c) for q, c in items})
    expl: dict[str, dict[int, Explanation]] = {}
    stats: dict[str, dict] = {}
    cfg = ExplainConfig(style=P.explanation_style, temperature=P.explanation_temperature, top_p=P.explanation_top_p,
                        max_new_tokens=P.explanation_max_new_tokens, batch_size=P.batch_size_eval, seed=P.data_seed)
    for kind in ("gold", "self"):
        items = list(need[kind].values())
        if P.explanations == "model":  # one cache per domain: a question drawn by two replicates shares its text
            made, stats[kind] = generate_explanations(model, tok, items, cfg,
                                                      paths.groups / domain / "explanations.cache.jsonl")
        else:
            made = [Explanation(template_explanation(q, c), "template", "template") for q, c in items]
            stats[kind] = {"items": len(items), "template": len(items)}
        expl[kind] = {q.id: e for (q, _), e in zip(items, made, strict=True)}

    out: dict[int, dict] = {}
    cards, tables = [], []
    first = {ex["id"] for ex in reps[P.seeds[0]].incompatible}
    for seed, g in reps.items():
        g = attach_explanations(g, expl["gold"], expl["self"])
        where = f"domain {domain!r}, replicate {seed}"
        problems = check_groups(g, train, heldout)
        if problems:
            raise AssertionError(f"{where}: group checks failed:\n  " + "\n  ".join(problems))
        table = explanation_table(g, answers)
        bad = table[table["leaking_template"] > 0]
        if len(bad):
            raise AssertionError(f"{where}: template explanations state the gold answer of an ID/OOD test question "
                                 f"(the template must state only the answer's own relation): "
                                 + "; ".join(f"{r.group}: {r.leaking_template} ({r.leaked_answers})"
                                             for r in bad.itertuples()))
        data_seed = replicate_seed(P.data_seed, seed)
        n = len(g.incompatible)
        k = round(P.general_ratio * n)
        general, general_report = general_pool(P, n + k if GENERAL_ONLY in P.controls else k, data_seed)
        cells = {name: cell_examples(P, g, name, general, tok, data_seed) for name, _, _ in conditions(P)}
        problems = check_cells(cells, [general_example(t, P.chat_template, tok) for t in general[:k]], n)
        if problems:
            raise AssertionError(f"{where}: training-set checks failed:\n  " + "\n  ".join(problems))
        folder = paths.groups / domain / f"rep{seed}"
        write_groups(g, folder)
        for name, examples in cells.items():
            write_jsonl(folder / f"{name}.chat.jsonl", examples)
        reps_row = {"domain": domain, "rep": seed}
        cards.append(card(g, mode=P.scoring).assign(**reps_row))
        tables.append(table.assign(**reps_row))
        out[seed] = {"groups": g, "report": g.report, "data_seed": data_seed, "general": general_report,
                     "train_sizes": {name: len(v) for name, v in cells.items()},
                     "shared_with_first_rep": len(first & {ex["id"] for ex in g.incompatible})}

    def keyed(frames: list[pd.DataFrame]) -> pd.DataFrame:
        f = pd.concat(frames, ignore_index=True)
        return f[["domain", "rep", *(c for c in f if c not in ("domain", "rep"))]]

    return {"replicates": out, "explanations": stats, "card": keyed(cards), "explanation_table": keyed(tables)}


def train_cell(P, paths: RunPaths, cell: Cell, model_path: str) -> dict:
    """Train one cell (skipped when finished with the same data and config; a stale result is redone)."""
    from ift_utils.training import TrainResult, train_adapter

    examples = read_jsonl(cell_data(paths, cell))
    cfg = train_config(P, cell.seed)
    res: TrainResult = train_adapter(model_path, examples, cfg, cell_dir(paths, cell))
    return {"cell": cell.key, "domain": cell.domain, "condition": cell.condition, "group": cell.group,
            "ratio": cell.ratio, "seed": cell.seed, "method": cfg.method, "examples": res.n_examples,
            "steps": res.steps, "train_tokens": res.train_tokens, "seconds": round(res.seconds, 1),
            "tokens_per_s": round(res.train_tokens / res.seconds, 1) if res.seconds else math.nan,
            "peak_rss_mb": round(res.peak_rss_mb), "peak_gpu_mb": res.peak_gpu_mb,
            "first_loss": res.losses[0] if res.losses else math.nan,
            "last_loss": res.losses[-1] if res.losses else math.nan}


def loss_curves(paths: RunPaths, cells: list[Cell]) -> pd.DataFrame:
    """Every finished cell's loss per step, in one long table."""
    frames = []
    for c in cells:
        p = cell_dir(paths, c) / "loss.csv"
        if p.exists():
            frames.append(pd.read_csv(p).assign(domain=c.domain, condition=c.condition, seed=c.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@dataclass
class Evaluation:
    """Stage 04's tables: one row per cell × epoch × test set, every scored answer, and each cell's fit on its
    own training questions."""

    table: pd.DataFrame
    answers: pd.DataFrame
    fit: pd.DataFrame
    precision: str
    missing: list[str]


def _load_full(folder: Path, device: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).to(device)
    model.eval()
    return model


def evaluate_all(P, paths: RunPaths, cells: list[Cell]) -> Evaluation:
    """Score the no_ift control and every finished cell (at each kept epoch) on its domain's HOMO/ID/OOD sets
    and on its own training questions.

    The base network is loaded once as training used it; LoRA/QLoRA adapters are swapped on it, full fine-tunes
    are loaded one by one. The no_ift control is that same network with no adapter, scored first."""
    from ift_utils.training import is_done

    method = train_method(P)
    base_probe = read_probe(paths, P.domains)
    base_model, tok, precision = load_study_base(P)
    tests = {d: test_questions(paths, d) for d in P.domains}
    rows, answers, fits, missing = [], [], [], []
    if NO_IFT in P.controls:
        for d in P.domains:
            r, a, _ = score_cell(base_model, tok, Cell(d, NO_IFT, NO_IFT, math.nan, -1), P, paths, tests[d],
                                 base_probe, 0.0, {"precision": precision})
            rows += r
            answers.append(a)
    swapper = None
    if method != "full":
        swapper = AdapterSwapper(base_model)
    else:
        del base_model
    for cell in cells:
        out = cell_dir(paths, cell)
        if not is_done(out):
            missing.append(cell.key)
            continue
        trained = read_json(out / "train_result.json")
        for epoch, folder in eval_targets(P, paths, cell):
            if not folder.exists():
                log.warning("%s: no checkpoint for epoch %g at %s (trained before eval_epochs asked for it?)",
                            cell.key, epoch, folder)
                continue
            model = _load_full(folder, device_of(P)) if swapper is None else swapper.activate(folder)
            r, a, f = score_cell(model, tok, cell, P, paths, tests[cell.domain], base_probe, epoch,
                                 {"trained": trained})
            rows += r
            answers.append(a)
            if f is not None:
                fits.append(f)
    if missing:
        log.warning("%d cell(s) not trained yet (other shards?): %s", len(missing), ", ".join(missing[:10]))
    answers = [a for a in answers if len(a)]
    return Evaluation(pd.DataFrame(rows), pd.concat(answers, ignore_index=True) if answers else pd.DataFrame(),
                      pd.DataFrame(fits), precision, missing)


def final_only(P, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the final models and the no_ift control (drops earlier `eval_epochs` checkpoints)."""
    if "epoch" not in frame:
        return frame
    return frame[(frame["epoch"] == float(P.epochs)) | (frame["group"] == NO_IFT)].reset_index(drop=True)


def headline(verdict: pd.DataFrame, table: pd.DataFrame) -> str:
    """One plain sentence summarizing which of the paper's claims this run supports (computed, not written)."""
    n_seeds, n_dom = table["seed"].nunique(), table["domain"].nunique()
    claims = verdict.groupby("claim")["supported"].agg(lambda s: int((s == True).sum()))  # noqa: E712
    totals = verdict.groupby("claim")["supported"].size()
    parts = [f"{c}: supported in {claims[c]} of {totals[c]} comparisons" for c in claims.index]
    return (f"With {_models(table)}, {n_dom} domain(s) and {n_seeds} seed(s): " + "; ".join(parts) + ". "
            "A claim counts as supported only where its 95 % interval excludes zero (or, for the correlation, p < 0.05).")


def _models(table: pd.DataFrame) -> str:
    return ", ".join(sorted(map(str, table["model"].unique())))
