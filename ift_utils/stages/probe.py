"""Stage 01 (notebooks/01_probe.ipynb): probe the base model's beliefs on every domain's training questions
and HOMO/ID/OOD test sets, k-shot, under one or several prompts, and label each training fact known, confidently
wrong, unsure or unstable."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from ift_utils.data_sources import TEST_SET_FIELDS, DomainData
from ift_utils.interventions import robust_label
from ift_utils.io import write_jsonl
from ift_utils.paths import RunPaths, cached_frame
from ift_utils.probing import score_mcqs
from ift_utils.records import MCQ
from ift_utils.stages.shared import ENCODER, base_spec, precision_of


def save_questions(data: dict[str, DomainData], paths: RunPaths) -> pd.DataFrame:
    """Write every domain's splits in the original schema; return a size table."""
    rows = []
    for d, dd in data.items():
        parts = {"train": dd.train, "dev": dd.dev, **{TEST_SET_FIELDS[t]: qs for t, qs in dd.test_sets().items()}}
        for split, qs in parts.items():
            write_jsonl(paths.data / d / f"{split}.jsonl", [q.to_json() for q in qs])
            rows.append({"domain": d, "split": split, "n": len(qs)})
        for split in set(TEST_SET_FIELDS.values()) - set(parts):  # a test set this run no longer has (XD with
            (paths.data / d / f"{split}.jsonl").unlink(missing_ok=True)  # one domain) must not be read as current
    return pd.DataFrame(rows).pivot(index="domain", columns="split", values="n")[list(parts)]


def score_by_subject(model, tok, questions: list[MCQ], P, dd: DomainData, desc: str) -> pd.DataFrame:
    """Score base-model beliefs, one shared-prefix batch per subject (each with its own demos)."""
    frames = []
    subjects = sorted({q.subject for q in questions})
    for s in subjects:
        qs = [q for q in questions if q.subject == s]
        frames.append(score_mcqs(model, tok, qs, base_spec(P, dd, s), max_batch=P.batch_size_eval,
                                 desc=f"{desc} [{s}]"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def probe_domain(model, tok, dd: DomainData, P, paths: RunPaths) -> pd.DataFrame:
    """Probe the base model on a domain's train split and its test sets (HOMO/ID/OOD/XD; cached per domain)."""
    parts = {"train": dd.train, **dd.test_sets()}
    key = {"model": P.model, "scoring": P.scoring, "k_shot": P.k_shot, "style": P.prompt_style,
           "belief_prompts": P.belief_prompts, "precision": precision_of(P), "encoder": ENCODER,
           "questions": {s: [q.to_json() for q in qs] for s, qs in parts.items()},
           "demos": {s: [q.to_json() for q in v] for s, v in sorted(dd.demos.items())},
           "variant_demos": [q.to_json() for q in dd.dev], "variants": "reworded demos and question, shuffled options"}
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
    variants with other demos (the next k dev questions), the question and demos in another wording (facts-suite
    relations have several; it is what varies the prompt in cloze mode, where options are not shown) and a seeded
    option order (it matters in letter mode)."""
    from dataclasses import replace

    from ift_utils.data_facts import reworded

    k = P.k_shot
    preds = [[int(p)] for p in main["pred"]]
    for v in range(1, P.belief_prompts):
        demos = tuple(reworded(d, v) for d in dd.dev[v * k:(v + 1) * k])
        if k and len(demos) < k:
            raise ValueError(f"belief_prompts={P.belief_prompts} needs {k * P.belief_prompts} dev questions in "
                             f"domain {dd.name!r} ({k} demos per prompt), it has {len(dd.dev)}; lower belief_prompts")
        shuffled = [permuted(reworded(q, v), f"belief:{P.data_seed}:{v}:{q.id}") for q in questions]
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

