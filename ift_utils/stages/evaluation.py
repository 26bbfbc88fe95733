"""Stage 04 (notebooks/04_evaluation.ipynb): score the no_ift control and every trained cell, at each kept
epoch, 0-shot on its domain's test sets and on its own training questions; tables of accuracy, knowledge
consistency against the base probe, every scored answer and each cell's fit."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ift_utils.io import read_json, read_jsonl
from ift_utils.paths import RunPaths, cached_frame
from ift_utils.probing import score_mcqs
from ift_utils.records import MCQ
from ift_utils.stages.grid import (
    FIT_SET,
    GENERAL_ONLY,
    NO_IFT,
    Cell,
    cell_dir,
    conditions,
    device_of,
    group_file,
    train_method,
)
from ift_utils.stages.shared import (
    ENCODER,
    fit_items,
    fit_items_of,
    ft_spec,
    load_study_base,
    read_probe,
    test_questions,
)

log = logging.getLogger(__name__)
CALIBRATION = "pmi summed, 3 content-free"  # in the cache key: scores calibrated another way are scored again


def question_key(q: MCQ) -> str:
    """A question's cluster for the verdict: facts questions about one entity share it wherever they are asked
    (HOMO and ID ask about the same city; a domain's XD set is another's HOMO; OOD is the same for every domain),
    so the bootstrap and the standard error resample them together; other questions are their own cluster."""
    from ift_utils.data_facts import entity_of

    entity = entity_of(q)
    return f"{q.domain}|{entity}" if entity else f"{q.domain}|{q.subject}|{q.id}"


def no_ift_scores(paths: RunPaths, domain: str) -> pd.DataFrame | None:
    """The no_ift control's scored answers of a domain (None before it is scored): the reference of consistency
    relative to the same 0-shot format, which measures what fine-tuning moved, not what the format moved."""
    from ift_utils.io import read_jsonl

    path = paths.eval / domain / f"{NO_IFT}.jsonl"
    return pd.DataFrame(read_jsonl(path)) if path.exists() else None


def consistency_against(reference: pd.DataFrame, ft: pd.DataFrame) -> dict[str, float]:
    """KL(reference ‖ fine-tuned) and the rank correlation, averaged over the questions both scored."""
    from ift_utils.metrics import consistency

    merged = reference.merge(ft, on=["domain", "id"], suffixes=("_ref", "_ft"), validate="one_to_one")
    return consistency(merged["probs_ref"].tolist(), merged["probs_ft"].tolist())


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
                         "correct_cal": merged["correct_cal"].astype(int).to_numpy() if "correct_cal" in merged
                         else np.nan,
                         "correct_loo": merged["correct_loo"].astype(int).to_numpy() if "correct_loo" in merged
                         else np.nan, "base_correct": merged["correct_base"].astype(int).to_numpy()})


class AdapterSwapper:
    """Keeps one base model in memory and swaps LoRA adapters on it (no reload per cell). An adapter of the same
    shape as the active one (rank, alpha, target modules: every cell of a run) is swapped by loading its weights
    into the active adapter's tensors; another shape is injected as a new adapter (~1 s on a 135M model)."""

    def __init__(self, base):
        # current: the adapter folder in use; active: peft's name of the adapter holding its weights
        self.base, self.model, self.current, self.active, self.shape = base, None, None, None, None

    @staticmethod
    def _shape(config) -> dict:
        keep = ("peft_type", "r", "lora_alpha", "target_modules", "modules_to_save", "use_rslora", "use_dora",
                "rank_pattern", "alpha_pattern", "layers_to_transform", "bias", "fan_in_fan_out")
        d = config.to_dict()
        return {k: (sorted(d[k]) if isinstance(d.get(k), (set, list)) else d.get(k)) for k in keep}

    def activate(self, adapter_dir: Path):
        from peft import PeftConfig, PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        key = str(adapter_dir)
        if key == self.current:
            return self.model
        name = "a" + str(abs(hash(key)))
        weights = Path(adapter_dir) / "adapter_model.safetensors"
        if self.model is None:
            self.model = PeftModel.from_pretrained(self.base, adapter_dir, adapter_name=name)
            self.active, self.shape = name, self._shape(self.model.peft_config[name])
        elif weights.exists() and self._shape(PeftConfig.from_pretrained(adapter_dir)) == self.shape:
            loaded = set_peft_model_state_dict(self.model, load_file(weights), adapter_name=self.active)
            if loaded.unexpected_keys:
                raise RuntimeError(f"{adapter_dir}: weights the active adapter does not have: "
                                   f"{loaded.unexpected_keys[:3]}")
        else:
            self.model.load_adapter(adapter_dir, adapter_name=name)
            self.model.set_adapter(name)
            self.model.delete_adapter(self.active)
            self.active, self.shape = name, self._shape(self.model.peft_config[name])
        self.current = key
        self.model.eval()
        return self.model


def eval_targets(P, paths: RunPaths, cell: Cell) -> list[tuple[float, Path, bool, bool]]:
    """(epoch, weights folder, early_stop, final) for each checkpoint of a finished cell to evaluate: the epochs
    `eval_epochs` kept, the early-stopping checkpoint (best held-out accuracy; Gekhman et al.'s EARLY_STOP), then
    the final weights (the epoch the cell reached: CONVERGENCE when it trained to fit). Without an early-stopping
    checkpoint (a fixed dose, or early stop at the last epoch) the final weights serve both readings."""
    from ift_utils.stages.training import early_stop_of

    out = cell_dir(paths, cell)
    name = "model" if train_method(P) == "full" else "adapter"
    result = out / "train_result.json"
    last = float(read_json(result).get("epochs_completed", P.epochs)) if result.exists() else float(P.epochs)
    early = early_stop_of(P, paths, cell)
    has_early = math.isfinite(early) and early < last
    earlier = sorted({*P.eval_epochs, *([int(early)] if has_early else [])})
    targets = [(float(e), out / "epochs" / f"epoch{e}" / name, has_early and e == early, False)
               for e in earlier if e < last]
    return [*targets, (last, out / name, not has_early, True)]


def checkpoint_tests(P, tests: dict[str, list[MCQ]], early: bool, final: bool) -> dict[str, list[MCQ]]:
    """The test sets one checkpoint is scored on: every set at convergence (the final weights, also when they serve
    as the early-stop reading) and at an `eval_epochs` checkpoint; the early-stop checkpoint on `early_stop_sets`
    ("all", or a stated subset: what the decision needs). Its own facts are scored at every checkpoint, and the
    calibrated scores come from the same pass as the raw ones."""
    chosen = P.early_stop_sets
    if final or not early or chosen == "all":
        return tests
    return {t: qs for t, qs in tests.items() if t in chosen}


def fit_sets(P, paths: RunPaths, cell: Cell) -> dict[tuple[str, int], list[dict]]:
    """{(condition, replicate): items} whose fit this model is scored on: a trained cell its own training facts; a
    control (no_ift: every replicate, general_only: its own) the facts of every trained condition, so each cell's
    fit has its baseline, the same facts answered with the same targets by a model that never trained on them."""
    if cell.group not in (NO_IFT, GENERAL_ONLY):
        items = fit_items(paths, cell)
        return {(cell.condition, cell.seed): items} if items else {}
    seeds = P.seeds if cell.group == NO_IFT else [cell.seed]
    out = {}
    for name, group, ratio in conditions(P):
        if group == GENERAL_ONLY:
            continue
        for s in seeds:
            path = group_file(paths, Cell(cell.domain, name, group, ratio, s))
            if path.exists():
                out[(name, s)] = fit_items_of(path)
    return out


def trained_answer_texts(paths: RunPaths, cell: Cell) -> set[str] | None:
    """The answers a cell's domain examples train on (None for the controls, which train on none)."""
    from ift_utils.interventions import target_text

    path = group_file(paths, cell)
    if cell.group in (NO_IFT, GENERAL_ONLY) or not path.exists():
        return None
    return {target_text(ex) for ex in read_jsonl(path)}


def with_loo(scored: pd.DataFrame, questions: list[MCQ]) -> pd.DataFrame:
    """`scored` (one test set of one model) with `correct_loo`: each answer calibrated by the leave-one-out answer
    prior (each answer string's mean probability over the other questions of the set that offer it), a prior
    independent of the content-free prompts, as a sensitivity reading of the calibrated verdict."""
    from ift_utils.probing import loo_calibrated

    if scored.empty:
        return scored.assign(correct_loo=pd.Series(dtype=bool))
    by_id = {str(q.id): q for q in questions}
    qs = [by_id[str(i)] for i in scored["id"]]
    cal = loo_calibrated(scored["probs"].tolist(), [q.choices for q in qs])
    return scored.assign(correct_loo=[int(np.argmax(c)) == q.answer for c, q in zip(cal, qs, strict=True)])


def score_cell(scorer_model, tok, cell: Cell, P, paths: RunPaths, tests: dict[str, list[MCQ]], base: pd.DataFrame,
               epoch: float, key_extra: dict, tag: str = "") -> tuple[list[dict], pd.DataFrame, list[dict]]:
    """Score one model (a cell at one checkpoint, or a control) on its domain's test sets, raw and calibrated, and
    on the training facts of `fit_sets` (cached per cell and checkpoint); return its evaluation rows, its
    answers and its fit rows. `tag` names an earlier checkpoint in the cache file's name."""
    from ift_utils.interventions import gold_text

    name = NO_IFT if cell.group == NO_IFT else f"{cell.condition}/seed{cell.seed}{tag}"
    out = paths.eval / cell.domain / f"{name}.jsonl"
    fsets = fit_sets(P, paths, cell)
    fit_qs = list({it["mcq"].id: it["mcq"] for items in fsets.values() for it in items}.values())
    sets = {**tests, FIT_SET: fit_qs}
    key = {"cell": cell.key, "epoch": epoch, "spec": [P.scoring, P.chat_template, P.prompt_style], "encoder": ENCODER,
           "calibrate": True, "calibration": CALIBRATION, "passes": "one per spec", **key_extra,
           "questions": {t: [q.to_json() for q in qs] for t, qs in sets.items()}}

    def compute() -> pd.DataFrame:
        # one scoring pass per prompt spec (the facts suite: one for every set), calibrated (unused for FIT_SET):
        # fewer, fuller batches than a pass per test set, the shared prefix encoded once
        by_spec: dict = {}
        for t, qs in sets.items():
            if qs:
                by_spec.setdefault(ft_spec(P, t), []).append((t, qs))
        frames = []
        for spec, parts in by_spec.items():
            f = score_mcqs(scorer_model, tok, [q for _, qs in parts for q in qs], spec, max_batch=P.batch_size_eval,
                           desc=f"eval {cell.key} e{epoch:g}", calibrate=True)
            frames.append(f.assign(test_set=[t for t, qs in parts for _ in qs]))
        return pd.concat(frames, ignore_index=True)

    scored = cached_frame(out, key, compute)
    trained = trained_answer_texts(paths, cell)
    reference = scored if cell.group == NO_IFT else no_ift_scores(paths, cell.domain)
    rows, answers = [], []
    cols = ["domain", "id", "probs", "correct"]
    for t, qs in tests.items():
        ft = with_loo(scored[scored["test_set"] == t], qs)[[*cols, "correct_cal", "correct_loo"]]
        b = base[(base["probe_domain"] == cell.domain) & (base["split"] == t)][cols]
        if len(ft):
            rows.append(base_ft_rows(cell, t, b, ft.drop(columns=["correct_cal", "correct_loo"]), P.model, epoch))
            if reference is not None:
                ref = reference[reference["test_set"] == t][cols]
                cons = consistency_against(ref, ft.drop(columns=["correct_cal", "correct_loo"]))
                rows[-1].update({"kl_no_ift": cons["kl"], "rank_corr_no_ift": cons["rank_corr"]})
            a = answer_rows(cell, t, b, ft, P.model, epoch)
            in_training = {q.id: (gold_text(q) in trained) if trained is not None else np.nan for q in qs}
            keys = {q.id: question_key(q) for q in qs}
            golds = {q.id: gold_text(q) for q in qs}  # the verdict joins questions that share a gold answer
            answers.append(a.assign(answer_trained=a["id"].map(in_training), qkey=a["id"].map(keys),
                                    gold=a["id"].map(golds)))
    fits = []
    pred = dict(zip(scored.loc[scored["test_set"] == FIT_SET, "id"], scored.loc[scored["test_set"] == FIT_SET, "pred"],
                    strict=True))
    for (condition, seed), items in fsets.items():
        preds = [pred[it["mcq"].id] for it in items]
        fits.append({"model": P.model, "domain": cell.domain, "condition": cell.condition, "group": cell.group,
                     "ratio": cell.ratio, "seed": cell.seed, "epoch": epoch, "facts_of": condition,
                     "facts_seed": seed, "n": len(items),
                     "fit": float(np.mean([p == it["target"] for p, it in zip(preds, items, strict=True)])),
                     "gold": float(np.mean([p == it["mcq"].answer for p, it in zip(preds, items, strict=True)])),
                     "own": float(np.mean([p == it["own"] for p, it in zip(preds, items, strict=True)]))})
    return rows, (pd.concat(answers, ignore_index=True) if answers else pd.DataFrame()), fits


@dataclass
class Evaluation:
    """Stage 04's tables: one row per cell × checkpoint × test set, every scored answer, each cell's fit on its own
    training questions, and the controls' fit on the same facts."""

    table: pd.DataFrame
    answers: pd.DataFrame
    fit: pd.DataFrame
    precision: str
    missing: list[str]
    fit_controls: pd.DataFrame  # the controls' answers to every trained cell's facts: each fit's baseline


def _load_full(folder: Path, device: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).to(device)
    model.eval()
    return model


def evaluate_all(P, paths: RunPaths, cells: list[Cell]) -> Evaluation:
    """Score the no_ift control and every finished cell (at each kept epoch) on its domain's HOMO/ID/OOD/XD sets
    (the early-stop checkpoint on `early_stop_sets` only: `checkpoint_tests`) and on its own training questions.

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
            r, a, f = score_cell(base_model, tok, Cell(d, NO_IFT, NO_IFT, math.nan, -1), P, paths, tests[d],
                                 base_probe, 0.0, {"precision": precision})
            marks = {"early_stop": True, "final": True}  # the control counts in both readings
            rows += [{**row, **marks} for row in r]
            answers.append(a.assign(**marks))
            fits += [{**row, **marks} for row in f]
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
        for epoch, folder, early, final in eval_targets(P, paths, cell):
            if not folder.exists():
                log.warning("%s: no checkpoint for epoch %g at %s (trained before eval_epochs asked for it?)",
                            cell.key, epoch, folder)
                continue
            model = _load_full(folder, device_of(P)) if swapper is None else swapper.activate(folder)
            r, a, f = score_cell(model, tok, cell, P, paths, checkpoint_tests(P, tests[cell.domain], early, final),
                                 base_probe, epoch, {"trained": trained}, "" if final else f".epoch{epoch:g}")
            marks = {"early_stop": early, "final": final}
            rows += [{**row, **marks} for row in r]
            answers.append(a.assign(**marks))
            fits += [{**row, **marks} for row in f]
    if missing:
        log.warning("%d cell(s) not trained yet (other shards?): %s", len(missing), ", ".join(missing[:10]))
    answers = [a for a in answers if len(a)]
    fits = pd.DataFrame(fits)
    control = fits["group"].isin([NO_IFT, GENERAL_ONLY]) if len(fits) else pd.Series(dtype=bool)
    return Evaluation(pd.DataFrame(rows), pd.concat(answers, ignore_index=True) if answers else pd.DataFrame(),
                      fits[~control].reset_index(drop=True) if len(fits) else fits, precision, missing,
                      fits[control].reset_index(drop=True) if len(fits) else fits)


def final_only(P, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the final models and the no_ift control (drops earlier checkpoints)."""
    if "final" in frame:
        return frame[frame["final"].astype(bool)].reset_index(drop=True)
    if "epoch" not in frame:
        return frame
    return frame[(frame["epoch"] == float(P.epochs)) | (frame["group"] == NO_IFT)].reset_index(drop=True)


def fit_with_baseline(fit: pd.DataFrame, fit_controls: pd.DataFrame) -> pd.DataFrame:
    """Per trained cell and checkpoint: its fit on its own training facts beside the fit of the no_ift and
    general_only controls on the same facts and targets (how often the target was given without training on it)."""
    if fit.empty or "facts_of" not in fit:
        return pd.DataFrame()
    keys = ["domain", "facts_of", "facts_seed"]
    out = fit[["domain", "condition", "group", "seed", "epoch", "early_stop", "final", "facts_of", "facts_seed", "n",
               "fit"]]
    for control in (NO_IFT, GENERAL_ONLY):
        c = fit_controls[fit_controls["group"] == control] if len(fit_controls) else fit_controls
        c = c[[*keys, "fit"]].rename(columns={"fit": f"fit_{control}"}) if len(c) else pd.DataFrame(
            columns=[*keys, f"fit_{control}"])
        out = out.merge(c.drop_duplicates(keys), on=keys, how="left")
    return out.drop(columns=["facts_of", "facts_seed"]).reset_index(drop=True)


def accuracy_by_answer(answers: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (raw, calibrated, leave-one-out prior removed) per group and test set, split by whether the
    test question's gold answer is among the answers the cell trained on, beside `no_ift` on the same questions of
    the same split (the untrained reference), and the difference in differences: (group − no_ift on trained
    answers) − (group − no_ift on the others). A group that mainly moved the answer prior gains on trained answers
    beyond what the untrained model already had there. Read at each cell's final weights when the answers mark them."""
    if "final" in answers:  # each cell's final weights (convergence), as the verdict reads by default
        answers = answers[answers["final"].astype(bool)]
    a = answers[answers["answer_trained"].notna()] if "answer_trained" in answers else answers.iloc[:0]
    if a.empty:
        return pd.DataFrame()
    a = a.assign(answer_trained=a["answer_trained"].astype(bool))
    scores = {"accuracy": "correct", "accuracy_cal": "correct_cal", "accuracy_loo": "correct_loo"}
    scores = {k: v for k, v in scores.items() if v in a}
    keys = ["group", "test_set", "answer_trained"]
    out = a.groupby(keys).agg(n=("correct", "size"), **{k: (v, "mean") for k, v in scores.items()}).reset_index()
    ref = answers[answers["group"] == NO_IFT] if "group" in answers else answers.iloc[:0]
    if ref.empty:
        return out
    # no_ift's accuracy on the very answers each group's split holds (same domain, test set and question)
    split = a[["group", "domain", "test_set", "id", "answer_trained"]].drop_duplicates()
    base = split.merge(ref[["domain", "test_set", "id", *scores.values()]].drop_duplicates(["domain", "test_set",
                                                                                           "id"]),
                       on=["domain", "test_set", "id"], how="inner")
    base = base.groupby(keys).agg(**{f"no_ift_{k}": (v, "mean") for k, v in scores.items()}).reset_index()
    out = out.merge(base, on=keys, how="left")
    for k in scores:
        gain = out[k] - out[f"no_ift_{k}"]
        wide = out.assign(gain=gain).pivot_table(index=["group", "test_set"], columns="answer_trained",
                                                 values="gain")
        did = (wide.get(True) - wide.get(False)) if {True, False} <= set(wide.columns) else None
        out[f"did_{k}"] = (out.set_index(["group", "test_set"]).index.map(did) if did is not None else np.nan)
    return out
