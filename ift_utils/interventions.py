"""Knowledge-intervention groups built from the base model's probe (docs/design.md §1.2).

Why: the study compares IFT sets that agree or disagree with what the base model already believes.
From the probe of the training questions we build

- incompatible: confidently-wrong questions, response = gold answer (+ gold explanation);
- self_aligning: the same questions, response = the model's own answer (+ its own explanation);
- harmonious: confidently-correct questions, sub-sampled (seeded) to the incompatible size; when there are
  fewer of them, every compared group is cut (seeded) to the harmonious size instead, and the cut recorded.
  With `match_answers` (default) the draw matches the incompatible group's gold answers (`match_by_answer`:
  the same answer strings where the known pool has them, then answers of the nearest frequency), because in
  cloze mode the answers a group trains on shift the model's answer prior on every test question; the report
  gives the total-variation distance between the two groups' answers for the plain random draw and the matched one;
- contextualized: incompatible with the question's knowledge context prepended to the query;
- ratio r: a seeded round(r·n) of the incompatible questions replaced by their self-aligning version.
  One seeded permutation serves every r, so the self set of a smaller r is inside that of a larger r.

`round` is Python's (halves to even): round(0.5·5) = 2. Examples are dicts in the original record schema
(`MCQ.to_json()`) plus `target, pred, confidence, version, with_context`; `explanation` holds the
explanation *of the response* and is filled by `attach_explanations`, with `explanation_source` (data,
model or template) and `explanation_status` (see `explanations`).

Questions are identified within a split by source and id (`question_key`: domain, subject, id) and across
splits by their normalized text and options (`question_text_key`), so the leak check neither confuses equal
ids of two files nor misses one question stored under two ids. Replicates draw their own facts: `replicate_seed`.

Explanation leaks (`explanation_table`) are counted by two rules over the ID/OOD/XD test questions: the answer
rule (`leaked_answers`: the explanation names a test gold answer other than its own response's answer) and the
fact rule (`leaked_facts`: it names a test question's entity together with that question's gold answer). The
training answer itself is exempt from the first because answers repeat across entities (that is the answer
treatment, measured by `answer_table`), and counted by the second only when tied to a test entity.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ift_utils.explanations import Explanation
from ift_utils.io import write_jsonl
from ift_utils.prompts import chat, ift_query, ift_response
from ift_utils.records import LETTERS, MCQ

PROBE_COLUMNS = ("id", "pred", "correct", "confidence")
GROUP_NAMES = ("incompatible", "self_aligning", "harmonious", "contextualized")
Example = dict[str, Any]


@dataclass
class Groups:
    """The intervention groups (lists of example dicts) and a report of counts and shortfalls."""

    incompatible: list[Example]
    self_aligning: list[Example]
    harmonious: list[Example]
    contextualized: list[Example]
    ratios: dict[float, list[Example]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    explained: bool = False

    def items(self) -> Iterator[tuple[str, list[Example]]]:
        """(file stem, examples) for every group and ratio set, in a fixed order."""
        for name in GROUP_NAMES:
            yield name, getattr(self, name)
        for r in sorted(self.ratios):
            yield ratio_name(r), self.ratios[r]


def replicate_seed(data_seed: int, seed: int) -> int:
    """The data seed of replicate `seed` (a training seed of `P.seeds`): sha256 of "data{data_seed}/rep{seed}",
    so each replicate draws its own facts and general data, and no two (data_seed, seed) pairs collide."""
    return int.from_bytes(hashlib.sha256(f"data{data_seed}/rep{seed}".encode()).digest()[:8], "big") >> 1


def ratio_name(r: float) -> str:
    """File stem of a ratio set: 0.2 → "ratio_0.2", 1 → "ratio_1"."""
    return f"ratio_{r:g}"


def _probe_rows(probe: pd.DataFrame) -> dict[int, dict[str, Any]]:
    missing = [c for c in PROBE_COLUMNS if c not in probe.columns]
    if missing:
        raise ValueError(f"probe frame lacks column(s) {missing}; it needs {list(PROBE_COLUMNS)}")
    ids = probe["id"].tolist()
    dup = sorted({i for i, n in Counter(ids).items() if n > 1})
    if dup:
        raise ValueError(f"probe frame has duplicate ids, e.g. {dup[:5]}")
    return {int(r["id"]): r for r in probe.to_dict("records")}


def robust_label(variant_preds: Any, answer: int) -> str | None:
    """The multi-prompt belief rule (stage 01's `belief_prompts`), shared by the pools and the label tables:
    "known" when every prompt gave the gold answer, "wrong" when every prompt gave the same wrong answer, else
    "unstable"; None for a single prompt (the paper's rule) or a probe from before `belief_prompts`."""
    if not isinstance(variant_preds, list | tuple) or len(variant_preds) == 0:
        return None
    preds = {int(p) for p in variant_preds}
    if preds == {int(answer)}:
        return "known"
    return "wrong" if len(preds) == 1 else "unstable"


def _flips(variant_preds: Any, pred: int) -> bool:
    """True when a question probed under several prompts did not give `pred` under every one of them."""
    label = robust_label(variant_preds, pred)
    return label is not None and label != "known"


def split_by_belief(train: list[MCQ], probe: pd.DataFrame, threshold: float = 0.5) -> dict[str, Any]:
    """Confident beliefs (confidence > threshold) split into correct ("harmonious_pool") and wrong
    ("incompatible_pool") lists of (MCQ, pred), in training order; also "unconfident" and "missing" ids.
    When the probe holds `variant_preds` (the prediction under each of several prompts, stage 01's
    `belief_prompts`), a confident belief also needs the same answer under every prompt, else it is "unstable".

    Raises when a probe row's `correct` disagrees with pred == answer (a probe of other data)."""
    rows = _probe_rows(probe)
    pools: dict[str, Any] = {"harmonious_pool": [], "incompatible_pool": [], "unconfident": [], "unstable": [],
                             "missing": []}
    mismatched = []
    for q in train:
        row = rows.get(q.id)
        if row is None:
            pools["missing"].append(q.id)
            continue
        pred = int(row["pred"])
        if not 0 <= pred < len(q.choices):
            raise ValueError(f"probe pred {pred} out of range for question {q.id} ({len(q.choices)} options)")
        if bool(row["correct"]) != (pred == q.answer):
            mismatched.append(q.id)
            continue
        if not float(row["confidence"]) > threshold:
            pools["unconfident"].append(q.id)
        elif _flips(row.get("variant_preds"), pred):
            pools["unstable"].append(q.id)
        elif pred == q.answer:
            pools["harmonious_pool"].append((q, pred))
        else:
            pools["incompatible_pool"].append((q, pred))
    if mismatched:
        raise ValueError(f"{len(mismatched)} probe rows disagree with the questions' gold answers "
                         f"(correct != (pred == answer)), e.g. ids {mismatched[:5]}: was the probe run on this data?")
    return pools


def make_example(q: MCQ, pred: int, confidence: float, *, version: str, with_context: bool = False) -> Example:
    """One example dict: the record's original fields, with `target` = gold ("gold") or pred ("self")."""
    if version not in ("gold", "self"):
        raise ValueError(f"version must be 'gold' or 'self', got {version!r}")
    ex = q.to_json()
    own = q.explanation if version == "gold" else ""
    ex["explanation"] = own
    ex["explanation_source"] = ex["explanation_status"] = "data" if own else ""
    ex.update(target=q.answer if version == "gold" else pred, pred=pred, confidence=float(confidence),
              version=version, with_context=bool(with_context and q.context))
    return ex


def example_mcq(ex: Example) -> MCQ:
    """The MCQ an example was built from (used to format prompts and responses)."""
    return MCQ(id=ex["id"], question=ex["question"], choices=tuple(ex["choices"]), answer=ex["answer"],
               explanation=ex.get("explanation", ""), domain=ex.get("domain", ""), subject=ex.get("subject", ""),
               context=ex.get("context", ""), popularity=ex.get("popularity"), raw=ex.get("raw") or {})


def _sample(pool: list[Any], k: int, rng: random.Random) -> list[Any]:
    """A seeded sub-sample of `pool` of size min(k, len(pool)), kept in pool order."""
    picked = sorted(rng.sample(range(len(pool)), min(k, len(pool))))
    return [pool[i] for i in picked]


def gold_text(q: MCQ) -> str:
    """The gold answer's text, whitespace-collapsed (what a gold-version response says)."""
    return " ".join(q.choices[q.answer].split())


def target_text(ex: Example) -> str:
    """The answer text an example's response gives (gold, or the model's own for a self version)."""
    return " ".join(str(ex["choices"][ex["target"]]).split())


def answer_entropy(answers: Iterable[str]) -> float:
    """Shannon entropy (bits) of an answer mix: how spread a group's answers are (0 = one answer for all)."""
    counts = Counter(answers)
    n = sum(counts.values())
    return float(-sum(c / n * math.log2(c / n) for c in counts.values())) if n else math.nan


def tv_distance(a: Iterable[str], b: Iterable[str]) -> float:
    """Total-variation distance between two answer mixes (0 = same distribution, 1 = disjoint answers)."""
    ca, cb = Counter(a), Counter(b)
    na, nb = sum(ca.values()), sum(cb.values())
    if not na or not nb:
        return math.nan
    return float(0.5 * sum(abs(ca[k] / na - cb[k] / nb) for k in ca.keys() | cb.keys()))


def match_by_answer(pool: list[Any], targets: list[str], answer_of, rng: random.Random,
                    frequency: Counter | None = None) -> list[Any]:
    """A draw of len(targets) items from `pool` (kept in pool order) whose answers (`answer_of(item)`) match the
    multiset `targets`: first the same answer strings, as many as the pool has (seeded choice among them); each
    slot still open is filled with an answer whose `frequency` (default: in the pool) is nearest, on a log scale,
    to the missing answer's, ties broken at random. Returns fewer items only when the pool is smaller."""
    by_answer: dict[str, list[int]] = {}
    for i, item in enumerate(pool):
        by_answer.setdefault(answer_of(item), []).append(i)
    for idx in by_answer.values():
        rng.shuffle(idx)
    freq = frequency if frequency is not None else Counter({a: len(v) for a, v in by_answer.items()})
    picked: list[int] = []
    missing: list[str] = []  # one entry per open slot, most frequent target answers first
    for a, n in sorted(Counter(targets).items(), key=lambda kv: (-kv[1], kv[0])):
        have = by_answer.get(a, [])
        picked += have[:n]
        missing += [a] * max(0, n - len(have))
        del have[:n]
    ties = {a: rng.random() for a in by_answer}
    for a in missing:
        left = [b for b, idx in by_answer.items() if idx]
        if not left:
            break
        fa = math.log(max(freq.get(a, 0), 1))
        best = min(left, key=lambda b: (abs(math.log(max(freq.get(b, 0), 1)) - fa), ties[b]))
        picked.append(by_answer[best].pop(0))
    return [pool[i] for i in sorted(picked)]


def build_groups(train: list[MCQ], probe: pd.DataFrame, *, threshold: float = 0.5,
                 ratios: Iterable[float] = (0, .05, .1, .2, .4, .6, .8, 1), seed: int = 0,
                 max_per_group: int | None = None, match_harmonious: bool = True,
                 match_answers: bool = True) -> Groups:
    """All intervention groups from the probed training questions (explanations attached later).

    Every random choice uses its own RNG seeded from (seed, purpose), so changing the ratios does not
    change which harmonious questions are picked, and so on. With `match_harmonious` (harmonious is one of
    the compared groups) and fewer confidently-correct than chosen confidently-wrong questions, the chosen
    ones are cut (seeded) to the harmonious pool's size, so every compared group has the same size. With
    `match_answers`, harmonious facts are drawn to match the incompatible group's gold answers
    (`match_by_answer`, frequencies of answers among all training questions); `False` is the plain seeded draw.
    The report's `answer_tv_random` / `answer_tv_matched` give the TV distance between harmonious and
    incompatible gold answers for the plain draw and for the matched one (None when not drawn)."""
    ratios = sorted({float(r) for r in ratios})
    bad = [r for r in ratios if not 0 <= r <= 1]
    if bad:
        raise ValueError(f"ratios must lie in [0, 1], got {bad}")
    if max_per_group is not None and max_per_group < 1:
        raise ValueError(f"max_per_group must be >= 1 or None, got {max_per_group}")
    pools = split_by_belief(train, probe, threshold)
    conf = {int(i): float(c) for i, c in zip(probe["id"], probe["confidence"], strict=True)}
    incompatible_pool, harmonious_pool = pools["incompatible_pool"], pools["harmonious_pool"]

    chosen = incompatible_pool
    if max_per_group is not None:
        chosen = _sample(incompatible_pool, max_per_group, random.Random(f"{seed}:incompatible"))
    n_before_cut = len(chosen)
    if match_harmonious and len(harmonious_pool) < len(chosen):
        chosen = _sample(chosen, len(harmonious_pool), random.Random(f"{seed}:cut"))
    n = len(chosen)
    random_draw = _sample(harmonious_pool, n, random.Random(f"{seed}:harmonious"))
    inc_answers = [gold_text(q) for q, _ in chosen]
    matched = match_by_answer(harmonious_pool, inc_answers, lambda item: gold_text(item[0]),
                              random.Random(f"{seed}:harmonious-matched"), Counter(gold_text(q) for q in train))
    harmonious = matched if match_answers else random_draw

    gold = [make_example(q, p, conf[q.id], version="gold") for q, p in chosen]
    self_ = [make_example(q, p, conf[q.id], version="self") for q, p in chosen]
    ctx = [make_example(q, p, conf[q.id], version="gold", with_context=True) for q, p in chosen]
    order = list(range(n))
    random.Random(f"{seed}:ratio").shuffle(order)
    ratio_sets = {}
    for r in ratios:
        swap = set(order[:round(r * n)])
        ratio_sets[r] = [self_[i] if i in swap else gold[i] for i in range(n)]

    no_context = [q.id for q, _ in chosen if not q.context]
    report = {"threshold": threshold, "seed": seed, "max_per_group": max_per_group, "train": len(train),
              "probed": len(train) - len(pools["missing"]), "missing_from_probe": len(pools["missing"]),
              "unconfident": len(pools["unconfident"]), "unstable": len(pools["unstable"]), "harmonious_pool": len(harmonious_pool),
              "incompatible_pool": len(incompatible_pool), "n": n, "harmonious": len(harmonious),
              "harmonious_short": max(0, n - len(harmonious)), "match_harmonious": match_harmonious,
              "cut_to_harmonious": n_before_cut - n, "contextualized_without_context": len(no_context),
              "contextualized_without_context_ids": no_context[:20],
              "ratio_self_counts": {ratio_name(r): round(r * n) for r in ratios}, "match_answers": match_answers,
              "answer_tv_random": _tv_or_none([gold_text(q) for q, _ in random_draw], inc_answers),
              "answer_tv_matched": _tv_or_none([gold_text(q) for q, _ in matched], inc_answers),
              "answers_same": sum((Counter(gold_text(q) for q, _ in harmonious) & Counter(inc_answers)).values())}
    return Groups(incompatible=gold, self_aligning=self_,
                  harmonious=[make_example(q, p, conf[q.id], version="gold") for q, p in harmonious],
                  contextualized=ctx, ratios=ratio_sets, report=report)


def _tv_or_none(a: list[str], b: list[str]) -> float | None:
    tv = tv_distance(a, b)
    return None if math.isnan(tv) else round(tv, 6)


def answer_table(groups: Groups, homo_test: Iterable[MCQ] = ()) -> pd.DataFrame:
    """One row per group: n, distinct answers, answer entropy (bits), TV distance of its trained answers (the
    responses' answers: gold, or the model's own for self versions) to the incompatible group's and to the HOMO
    test set's gold-answer mix; the answer treatment each group gives beside its knowledge treatment."""
    inc = [target_text(ex) for ex in groups.incompatible]
    test = [gold_text(q) for q in homo_test]
    rows = []
    for name, examples in groups.items():
        answers = [target_text(ex) for ex in examples]
        rows.append({"group": name, "n": len(answers), "distinct_answers": len(set(answers)),
                     "entropy_bits": answer_entropy(answers), "tv_to_incompatible": tv_distance(answers, inc),
                     "tv_to_homo_test": tv_distance(answers, test),
                     "top_answers": ", ".join(f"{a} ({c})" for a, c in Counter(answers).most_common(3))})
    return pd.DataFrame(rows)


def trained_answers(examples: Iterable[Example]) -> set[str]:
    """The answer texts a training set's responses give, to split test accuracy by whether a test question's
    gold answer is among them (`gold_text(q) in trained_answers(group)`)."""
    return {target_text(ex) for ex in examples}


def context_problem(groups: Groups) -> str | None:
    """Why the contextualized group cannot be trained (no chosen question has a context), else None.
    Without contexts it would silently equal the incompatible group; the study refuses it."""
    if groups.incompatible and not any(ex["with_context"] for ex in groups.contextualized):
        return (f"the contextualized group has no knowledge context: none of its {len(groups.contextualized)} "
                "training questions has a `context` field, so it would equal the incompatible group; "
                "remove 'contextualized' from extra_groups, or give the questions a context")
    return None


def needed_explanations(groups: Groups) -> dict[str, list[tuple[MCQ, int]]]:
    """What `generate_explanations` must produce: "gold" items (gold-version questions without their own
    explanation) and "self" items (each self-aligning question with the model's answer), deduplicated."""
    gold: dict[int, tuple[MCQ, int]] = {}
    selfs: dict[int, tuple[MCQ, int]] = {}
    for _, examples in groups.items():
        for ex in examples:
            q = example_mcq(ex)
            if ex["version"] == "self":
                selfs.setdefault(q.id, (q, ex["pred"]))
            elif not ex["explanation"]:
                gold.setdefault(q.id, (q, q.answer))
    return {"gold": list(gold.values()), "self": list(selfs.values())}


def attach_explanations(groups: Groups, gold_expl: dict[int, Explanation | str],
                        self_expl: dict[int, Explanation | str]) -> Groups:
    """A copy of `groups` with every example's response explanation filled: gold versions keep the data's
    own explanation when the record has one, else take `gold_expl[id]`; self versions take `self_expl[id]`.
    A plain string counts as a template. Raises naming the ids that have no explanation."""
    missing: dict[str, list[int]] = {"gold": [], "self": []}

    def fill(ex: Example) -> Example:
        if ex["version"] == "gold" and ex.get("explanation_source") == "data":
            return dict(ex)
        found = (self_expl if ex["version"] == "self" else gold_expl).get(ex["id"])
        if isinstance(found, str):
            found = Explanation(found, "template", "template")
        if found is None or not found.text:
            missing[ex["version"]].append(ex["id"])
            return dict(ex)
        return {**ex, "explanation": found.text, "explanation_source": found.source,
                "explanation_status": found.status}

    new = {name: [fill(ex) for ex in getattr(groups, name)] for name in GROUP_NAMES}
    ratio_sets = {r: [fill(ex) for ex in exs] for r, exs in groups.ratios.items()}
    if missing["gold"] or missing["self"]:
        raise ValueError("no explanation for "
                         + "; ".join(f"{len(set(v))} {k} example id(s), e.g. {sorted(set(v))[:5]}"
                                     for k, v in missing.items() if v))
    return replace(groups, **new, ratios=ratio_sets, explained=True)


def to_chat_examples(examples: list[Example], *, mode: str, template: str,
                     tokenizer: Any = None) -> list[dict[str, str]]:
    """Training pairs: prompt = chat(ift_query(q, with_context)), response = ift_response(q, target, expl, mode)."""
    out = []
    for ex in examples:
        q = example_mcq(ex)
        out.append({"prompt": chat(ift_query(q, with_context=ex["with_context"], mode=mode), template, tokenizer),
                    "response": ift_response(q, ex["target"], ex["explanation"], mode)})
    return out


def mix_general(domain_examples: list[Any], general_examples: list[Any], ratio: float = 1.0,
                seed: int = 0) -> list[Any]:
    """Domain examples plus round(ratio · len(domain)) seeded general ones (without replacement), shuffled."""
    if ratio < 0:
        raise ValueError(f"general-data ratio must be >= 0, got {ratio}")
    k = round(ratio * len(domain_examples))
    if k > len(general_examples):
        raise ValueError(f"need {k} general examples (ratio {ratio} × {len(domain_examples)} domain examples), "
                         f"only {len(general_examples)} given")
    rng = random.Random(f"{seed}:mix")
    mixed = list(domain_examples) + _sample(list(general_examples), k, rng)
    rng.shuffle(mixed)
    return mixed


def _fold(text: str) -> str:
    """Accent- and case-folded text with whitespace collapsed."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold().split())


def question_key(q: MCQ) -> tuple[str, str, int]:
    """A question's identity by source and id: (domain, subject, id). Ids are unique within a source only."""
    return (q.domain or "", q.subject or "", int(q.id))


def question_text_key(q: MCQ) -> tuple[str, tuple[str, ...]]:
    """A question's identity by content: folded question text and its folded options (in any order)."""
    return _fold(q.question), tuple(sorted(_fold(c) for c in q.choices))


def check_groups(groups: Groups, train: Iterable[MCQ], heldout: Iterable[MCQ]) -> list[str]:
    """Problems with the groups (empty when all invariants hold); the caller decides to raise.

    A training example is a leak when it is a held-out question (dev/test/ID/OOD of any domain): the same
    normalized text and options, under any id. Ids are only unique within a file (XieZhi and MedMCQA ids
    overlap; a user's train.jsonl and test.jsonl may both count from 0), so an equal id is never a leak by
    itself; within the training split, a group question is found by its source and id (`question_key`)."""
    problems: list[str] = []
    train_keys = {question_key(q) for q in train}
    held = list(heldout)
    held_texts = {question_text_key(q): q for q in held}
    inc = groups.incompatible
    n = len(inc)
    inc_ids = [ex["id"] for ex in inc]
    for name, examples in groups.items():
        ids = [ex["id"] for ex in examples]
        qs = [example_mcq(ex) for ex in examples]
        copies = [(q.id, held_texts[question_text_key(q)]) for q in qs if question_text_key(q) in held_texts]
        if copies:
            problems.append(f"{name}: {len(copies)} training question(s) equal to a held-out question by text and "
                            "options, e.g. " + ", ".join(f"{i} = {h.domain or h.subject}/{h.id}" for i, h in copies[:5]))
        foreign = sorted({q.id for q in qs if question_key(q) not in train_keys})
        if foreign:
            problems.append(f"{name}: {len(foreign)} question(s) not in the training split, e.g. {foreign[:5]}")
        if len(set(ids)) != len(ids):
            problems.append(f"{name}: duplicate question ids")
        for ex in examples:
            if ex["version"] == "gold" and ex["target"] != ex["answer"]:
                problems.append(f"{name}: gold example {ex['id']} has target {ex['target']} != answer {ex['answer']}")
                break
            if ex["version"] == "self" and not ex["target"] == ex["pred"] != ex["answer"]:
                problems.append(f"{name}: self example {ex['id']} must have target == pred != answer")
                break
        if groups.explained and any(not ex["explanation"] or not ex["explanation_source"] for ex in examples):
            problems.append(f"{name}: examples without an explanation after attach_explanations")
    for ex in inc:
        if ex["version"] != "gold" or ex["pred"] == ex["answer"]:
            problems.append(f"incompatible: example {ex['id']} is not a gold answer to a wrongly-believed question")
            break
    harm_ids = {ex["id"] for ex in groups.harmonious}
    if harm_ids & set(inc_ids):
        problems.append(f"harmonious and incompatible share {len(harm_ids & set(inc_ids))} question(s)")
    if any(ex["pred"] != ex["answer"] or ex["version"] != "gold" for ex in groups.harmonious):
        problems.append("harmonious: an example whose prediction is not the gold answer")
    matched = groups.report.get("match_harmonious", True)
    expected_h = n if matched else min(n, groups.report.get("harmonious_pool", n))
    if len(groups.harmonious) != expected_h:
        problems.append(f"harmonious has {len(groups.harmonious)} examples, expected {expected_h}"
                        + (" (compared groups must have the same size)" if matched else ""))
    if [ex["id"] for ex in groups.self_aligning] != inc_ids:
        problems.append("self_aligning and incompatible do not hold the same questions in the same order")
    elif any(s["version"] != "self" for s in groups.self_aligning):
        problems.append("self_aligning holds a gold-version example")
    if [ex["id"] for ex in groups.contextualized] != inc_ids:
        problems.append("contextualized and incompatible do not hold the same questions in the same order")
    for ex in groups.contextualized:
        if ex["version"] != "gold" or ex["with_context"] != bool(ex.get("context")):
            problems.append(f"contextualized: example {ex['id']} has a wrong version or context flag")
            break
    for r, examples in groups.ratios.items():
        name = ratio_name(r)
        if [ex["id"] for ex in examples] != inc_ids:
            problems.append(f"{name}: not the incompatible questions in the same order")
        n_self = sum(ex["version"] == "self" for ex in examples)
        if n_self != round(r * n):
            problems.append(f"{name}: {n_self} self-aligning examples, expected round({r} × {n}) = {round(r * n)}")
    return problems


MIN_ANSWER_CHARS = 2  # shorter answers (a single letter or digit) cannot be told from ordinary words


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", _fold(text)))


def answer_index(answers: Iterable[str]) -> dict[int, dict[tuple[str, ...], str]]:
    """Answer texts by their folded words, grouped by word count, for whole-word look-ups; answers under
    MIN_ANSWER_CHARS characters (letters and digits) are left out."""
    index: dict[int, dict[tuple[str, ...], str]] = {}
    for a in answers:
        words = _words(a)
        if len("".join(words)) >= MIN_ANSWER_CHARS:
            index.setdefault(len(words), {}).setdefault(words, str(a))
    return index


def find_answers(text: str, index: dict[int, dict[tuple[str, ...], str]]) -> set[tuple[str, ...]]:
    """The indexed answers that occur in `text` as whole words (case- and accent-folded)."""
    words = _words(text)
    return {words[i:i + n] for n, table in index.items() for i in range(len(words) - n + 1)
            if words[i:i + n] in table}


def leaked_answers(ex: Example, index: dict[int, dict[tuple[str, ...], str]]) -> list[str]:
    """Answer rule: the test gold answers (`index`) that an example's explanation states, other than the answer
    its own response gives (`target`; without one, any of its options) and those its question text shows.

    Why this rule: a template states only the response's own answer, which is often also the gold of some test
    question about another entity (answers repeat: "France"); that is the answer treatment, not a leak, so the
    target is exempt. Any other test answer an explanation names (a capital, a currency, another option) is
    counted: it is knowledge the example did not need to state. An upper bound: a mention is not a fact."""
    found = find_answers(ex.get("explanation", ""), index)
    if not found:
        return []
    own = [ex["choices"][ex["target"]]] if ex.get("target") is not None else list(ex["choices"])
    shown = set().union(*(find_answers(t, index) for t in [ex["question"], *own]))
    return sorted(index[len(w)][w] for w in found - shown)


FactIndex = dict[tuple[str, ...], set[tuple[str, ...]]]


def fact_index(tests: Iterable[MCQ]) -> FactIndex:
    """Test facts by entity: folded entity words -> folded words of its test questions' gold answers (facts-suite
    questions, whose entity is known; others have none)."""
    from ift_utils.data_facts import entity_of

    facts: FactIndex = {}
    for q in tests:
        entity = entity_of(q)
        if entity and len("".join(_words(entity))) >= MIN_ANSWER_CHARS:
            facts.setdefault(_words(entity), set()).add(_words(q.choices[q.answer]))
    return facts


def _contains(words: tuple[str, ...], part: tuple[str, ...]) -> bool:
    n = len(part)
    return any(words[i:i + n] == part for i in range(len(words) - n + 1))


def leaked_facts(ex: Example, facts: FactIndex) -> list[str]:
    """Fact rule: the test facts an explanation states, i.e. it names a test question's entity (not the example's
    own) *and* that question's gold answer ("... near Lyon, in France" when Lyon's test question answers France),
    whatever the answer is, the training answer included. This is the check that can fire for any explanation
    source, templates too, and the one the stage must hold at 0 for templates. Returned as "entity → answer".

    A test entity whose name the example's own question already shows is exempt, as the answer rule exempts what
    the question shows: "Sayreville Junction is a city in New Jersey" restates its own question, it does not tell
    the test question about Sayreville anything the training example does not."""
    words = _words(ex.get("explanation", ""))
    if not words:
        return []
    own = _words((ex.get("raw") or {}).get("entity", "") or "")
    asked = _words(ex.get("question", ""))
    out = []
    for entity, answers in facts.items():
        if entity != own and not _contains(asked, entity) and _contains(words, entity):
            out += [f"{' '.join(entity)} → {' '.join(a)}" for a in answers if _contains(words, a)]
    return sorted(out)


def explanation_table(groups: Groups, tests: Iterable[MCQ | str]) -> pd.DataFrame:
    """One row per group: how its explanations were made (data / model / template), how many model ones
    were truncated, had no closing fence or came back empty, and how many leak test knowledge, by two rules:
    `leaking` (answer rule, `leaked_answers`: states the gold answer of an ID/OOD/XD test question other than
    its own response's answer) and `leaking_fact` (fact rule, `leaked_facts`: names a test question's entity
    together with its gold answer); `*_template`: of those, made by a template, which must be 0. `tests`: the
    test questions (MCQs: both rules) or their gold answer texts (strings: the answer rule only)."""
    tests = list(tests)
    index = answer_index(t if isinstance(t, str) else t.choices[t.answer] for t in tests)
    facts = fact_index(t for t in tests if isinstance(t, MCQ))
    rows = []
    for name, examples in groups.items():
        leaks = [leaked_answers(ex, index) for ex in examples]
        stated = [leaked_facts(ex, facts) for ex in examples]
        source = Counter(ex.get("explanation_source", "") for ex in examples)
        status = Counter(ex.get("explanation_status", "") for ex in examples)
        found = Counter(a for lk in leaks for a in lk)
        found_facts = Counter(a for lk in stated for a in lk)
        template = [ex.get("explanation_source") == "template" for ex in examples]
        rows.append({"group": name, "n": len(examples), "data": source["data"], "model": source["model"],
                     "template": source["template"], "truncated": status["truncated"],
                     "no_fence": status["no_fence"], "empty": status["empty"],
                     "leaking": sum(bool(lk) for lk in leaks),
                     "leaking_template": sum(bool(lk) and t for lk, t in zip(leaks, template, strict=True)),
                     "leaked_answers": ", ".join(a for a, _ in found.most_common(5)),
                     "leaking_fact": sum(bool(lk) for lk in stated),
                     "leaking_fact_template": sum(bool(lk) and t for lk, t in zip(stated, template, strict=True)),
                     "leaked_facts": ", ".join(a for a, _ in found_facts.most_common(5))})
    return pd.DataFrame(rows)


def check_cells(cells: dict[str, list[dict[str, str]]], general: list[dict[str, str]], n_domain: int,
                controls: Iterable[str] = ("general_only",)) -> list[str]:
    """Problems with one replicate's training sets: every cell must have the same size (n_domain + the
    general examples), the domain cells must hold exactly `general` as their general data, and a control
    cell (general only) must hold general examples only, starting with `general`."""
    problems = []
    sizes = {name: len(examples) for name, examples in cells.items()}
    if len(set(sizes.values())) > 1:
        problems.append(f"training sets differ in size: {sizes}")
    want = Counter(chat_key(e) for e in general)
    for name, examples in cells.items():
        keys = Counter(chat_key(e) for e in examples)
        if name in controls:
            if len(examples) != n_domain + len(general) or keys & want != want:
                problems.append(f"{name}: not the shared general data plus {n_domain} more general examples")
        elif keys & want != want or len(examples) - len(general) != n_domain:
            problems.append(f"{name}: its general data differ from the shared general data of this replicate")
    return problems


def chat_key(example: dict[str, str]) -> tuple[str, str]:
    """(prompt, response): how a chat training example is compared."""
    return example["prompt"], example["response"]


def write_groups(groups: Groups, out_dir: str | Path) -> dict[str, Path]:
    """One JSONL per group and ratio set (`incompatible.jsonl`, `ratio_0.2.jsonl`, ...), written atomically
    with a fixed key order, so the same inputs and seed give byte-identical files."""
    out_dir = Path(out_dir)
    return {name: write_jsonl(out_dir / f"{name}.jsonl", examples) for name, examples in groups.items()}


def card(groups: Groups, mode: str = "letter") -> pd.DataFrame:
    """One row per group: size, self-version count, target-letter counts and mean response length (chars)."""
    rows = []
    for name, examples in groups.items():
        letters = Counter(LETTERS[ex["target"]] for ex in examples)
        lengths = [len(ift_response(example_mcq(ex), ex["target"], ex["explanation"], mode)) for ex in examples]
        rows.append({"group": name, "n": len(examples), "n_self": sum(ex["version"] == "self" for ex in examples),
                     "with_context": sum(ex["with_context"] for ex in examples),
                     "target_letters": " ".join(f"{k}={letters[k]}" for k in sorted(letters)),
                     "mean_response_chars": sum(lengths) / len(lengths) if lengths else float("nan")})
    return pd.DataFrame(rows)
