"""Intervention groups: property-based checks over random probe frames (the invariants of
check_groups, exact ratio counts, harmonious size, byte-identical files per seed), plus the pieces
around them (pools, explanations, chat examples, general-data mixing, the card)."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ift_utils.config import load_params
from ift_utils.explanations import Explanation
from ift_utils.interventions import (
    answer_entropy,
    answer_index,
    answer_table,
    attach_explanations,
    build_groups,
    card,
    check_cells,
    check_groups,
    context_problem,
    explanation_table,
    fact_index,
    leaked_answers,
    leaked_facts,
    match_by_answer,
    mix_general,
    needed_explanations,
    ratio_name,
    replicate_seed,
    split_by_belief,
    to_chat_examples,
    trained_answers,
    tv_distance,
    write_groups,
)
from ift_utils.io import read_jsonl, write_jsonl
from ift_utils.paths import RunPaths
from ift_utils.prompts import ift_response, vicuna
from ift_utils.records import MCQ
from ift_utils.stages import grid, shared
from ift_utils.stages import interventions as interventions_stage

RATIOS = [0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1]


@st.composite
def probed_data(draw, max_n: int = 40):
    """Training questions, a consistent probe frame over them, and disjoint held-out ids."""
    ids = draw(st.lists(st.integers(0, 10_000), min_size=0, max_size=max_n, unique=True))
    train, rows = [], []
    for qid in ids:
        answer, pred = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        conf = draw(st.floats(0.25, 1.0))
        probs = [(1 - conf) / 3] * 4
        probs[pred] = conf
        context = draw(st.sampled_from(["", f"Fact {qid} holds."]))
        expl = draw(st.sampled_from(["", f"Because of fact {qid}."]))
        train.append(MCQ(qid, f"Question {qid}?", ("w", "x", "y", "z"), answer, explanation=expl,
                         domain="test", context=context))
        rows.append({"id": qid, "pred": pred, "correct": pred == answer, "confidence": conf, "probs": probs})
    probe = pd.DataFrame(rows, columns=["id", "pred", "correct", "confidence", "probs"])
    heldout = [MCQ(20_000 + i, f"Held-out question {i}?", ("w", "x", "y", "z"), 0, domain="test")
               for i in range(draw(st.integers(0, 5)))]
    return train, probe, heldout


def _explain(groups):
    need = needed_explanations(groups)
    return attach_explanations(groups, {q.id: f"gold {q.id}" for q, _ in need["gold"]},
                               {q.id: f"self {q.id} says {c}" for q, c in need["self"]})


def _files(groups, folder: Path) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in write_groups(groups, folder).items()}


params = dict(threshold=st.sampled_from([0.3, 0.5, 0.7]), seed=st.integers(0, 1000),
              max_per_group=st.one_of(st.none(), st.integers(1, 15)),
              ratios=st.lists(st.floats(0, 1), max_size=4).map(lambda extra: RATIOS + extra))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=probed_data(), **params)
def test_invariants_hold(data, threshold, seed, max_per_group, ratios) -> None:
    train, probe, heldout = data
    groups = build_groups(train, probe, threshold=threshold, ratios=ratios, seed=seed, max_per_group=max_per_group)
    assert check_groups(groups, train, heldout) == []
    explained = _explain(groups)
    assert check_groups(explained, train, heldout) == []

    n = len(groups.incompatible)
    pools = split_by_belief(train, probe, threshold)
    chosen = (len(pools["incompatible_pool"]) if max_per_group is None
              else min(max_per_group, len(pools["incompatible_pool"])))
    assert n == min(chosen, len(pools["harmonious_pool"]))  # compared groups cut to the smallest
    assert groups.report["cut_to_harmonious"] == chosen - n
    for r, examples in groups.ratios.items():
        assert sum(ex["version"] == "self" for ex in examples) == round(r * n)
        assert len(examples) == n
    assert len(groups.harmonious) == n == len(groups.contextualized) == len(groups.self_aligning)
    assert groups.report["harmonious_short"] == 0
    assert groups.ratios[0.0] == groups.incompatible and groups.ratios[1.0] == groups.self_aligning
    # nested ratio sets: the self questions of a smaller r are among those of a larger r
    selfs = [{ex["id"] for ex in groups.ratios[r] if ex["version"] == "self"} for r in sorted(groups.ratios)]
    assert all(a <= b for a, b in zip(selfs, selfs[1:], strict=False))
    # gold explanations keep the record's own text when it has one
    own = {q.id: q.explanation for q in train}
    for ex in explained.incompatible + explained.harmonious:
        assert ex["explanation"] == (own[ex["id"]] or f"gold {ex['id']}")
    assert all(ex["explanation"].startswith(f"self {ex['id']}") for ex in explained.self_aligning)
    assert all(ex["explanation_source"] == ("data" if own[ex["id"]] else "template")
               for ex in explained.incompatible + explained.harmonious)
    assert groups.report["contextualized_without_context"] == sum(not ex["with_context"]
                                                                  for ex in groups.contextualized)


@settings(max_examples=25, deadline=None)
@given(data=probed_data(max_n=30), seed=st.integers(0, 100))
def test_same_seed_same_bytes(data, seed) -> None:
    train, probe, _ = data
    a = _explain(build_groups(train, probe, ratios=RATIOS, seed=seed))
    b = _explain(build_groups(train, probe.sample(frac=1, random_state=seed), ratios=RATIOS[::-1], seed=seed))
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        assert _files(a, Path(d1)) == _files(b, Path(d2))


def _big(n: int = 120) -> tuple[list[MCQ], pd.DataFrame]:
    train = [MCQ(i, f"Q{i}?", ("a", "b", "c", "d"), i % 4, context=f"C{i}." if i % 5 else "") for i in range(n)]
    preds = [(i % 4) if i % 3 else (i + 1) % 4 for i in range(n)]
    probe = pd.DataFrame({"id": range(n), "pred": preds, "correct": [p == q.answer for p, q in zip(preds, train, strict=True)],
                          "confidence": [0.9 if i % 7 else 0.4 for i in range(n)]})
    return train, probe


def test_different_seed_differs(tmp_path: Path) -> None:
    train, probe = _big()
    f0 = _files(_explain(build_groups(train, probe, ratios=RATIOS, seed=0)), tmp_path / "s0")
    f1 = _files(_explain(build_groups(train, probe, ratios=RATIOS, seed=1)), tmp_path / "s1")
    assert set(f0) == {"incompatible", "self_aligning", "harmonious", "contextualized",
                       *(ratio_name(r) for r in RATIOS)}
    assert (tmp_path / "s0" / "ratio_0.2.jsonl").exists() and (tmp_path / "s0" / "ratio_1.jsonl").exists()
    assert f0["incompatible"] == f1["incompatible"]          # all of the pool either way
    assert f0["ratio_0.4"] != f1["ratio_0.4"]                # another subset swapped
    assert f0["harmonious"] != f1["harmonious"]              # pool larger than n: another sub-sample


def test_split_by_belief_and_errors() -> None:
    train, probe = _big(28)
    pools = split_by_belief(train, probe, threshold=0.5)
    assert all(p == q.answer for q, p in pools["harmonious_pool"])
    assert all(p != q.answer for q, p in pools["incompatible_pool"])
    assert pools["unconfident"] == [0, 7, 14, 21]
    assert len(pools["harmonious_pool"]) + len(pools["incompatible_pool"]) + 4 == 28
    partial = split_by_belief(train + [MCQ(99, "Q?", ("a", "b"), 0)], probe)
    assert partial["missing"] == [99]
    with pytest.raises(ValueError, match="confidence"):
        split_by_belief(train, probe.drop(columns="confidence"))
    with pytest.raises(ValueError, match="duplicate"):
        split_by_belief(train, pd.concat([probe, probe.head(1)]))
    bad = probe.copy()
    bad.loc[1, "correct"] = not bad.loc[1, "correct"]
    with pytest.raises(ValueError, match="disagree"):
        split_by_belief(train, bad)
    with pytest.raises(ValueError, match="ratios"):
        build_groups(train, probe, ratios=[1.5])


def test_check_groups_catches_problems() -> None:
    train, probe = _big(60)
    g = build_groups(train, probe, ratios=[0.5], seed=0)
    assert check_groups(g, train, []) == []
    leak = next(q for q in train if q.id == g.incompatible[0]["id"])
    assert any("held-out" in p for p in check_groups(g, [q for q in train if q != leak], [leak]))
    g.ratios[0.5][0] = g.self_aligning[0] if g.ratios[0.5][0]["version"] == "gold" else g.incompatible[0]
    assert any("ratio_0.5" in p for p in check_groups(g, train, []))
    g2 = build_groups(train, probe, ratios=[0.5], seed=0)
    g2.harmonious.append(g2.incompatible[0])
    assert any("share" in p for p in check_groups(g2, train, []))
    g3 = build_groups(train, probe, ratios=[0.5], seed=0)
    g3.self_aligning[0] = {**g3.self_aligning[0], "target": g3.self_aligning[0]["answer"]}
    assert any("target == pred != answer" in p for p in check_groups(g3, train, []))
    g4 = build_groups(train, probe, ratios=[0.5], seed=0)
    g4.harmonious.pop()
    assert any("same size" in p for p in check_groups(g4, train, []))


def _two_domains() -> tuple[list[MCQ], list[MCQ], pd.DataFrame]:
    """Training questions of "medicine" and held-out ones of "history" whose ids overlap (as XieZhi's and
    MedMCQA's do), plus a probe in which every training question is believed confidently wrong or right."""
    train = [MCQ(640 + i, f"Medicine question {i}?", ("a", "b", "c", "d"), i % 4, domain="medicine",
                 subject="medicine") for i in range(12)]
    held = [MCQ(640 + i, f"History question {i}?", ("e", "f", "g", "h"), 0, domain="history", subject="history")
            for i in range(12)]
    preds = [q.answer if i % 2 else (q.answer + 1) % 4 for i, q in enumerate(train)]
    probe = pd.DataFrame({"id": [q.id for q in train], "pred": preds,
                          "correct": [p == q.answer for p, q in zip(preds, train, strict=True)], "confidence": 0.9})
    return train, held, probe


def test_leak_check_knows_questions_not_bare_ids() -> None:
    train, held, probe = _two_domains()
    g = build_groups(train, probe, ratios=[0, 1], seed=0)
    assert {ex["id"] for ex in g.incompatible} & {q.id for q in held}  # equal ids of another source...
    assert check_groups(g, train, held) == []                           # ...are not a leak
    inc = g.incompatible[0]
    same_source = [MCQ(inc["id"], "Another text?", ("p", "q", "r", "s"), 0, domain="medicine", subject="medicine")]
    assert check_groups(g, train, same_source) == []  # same id, another question (ids are per file): no leak
    # the same question (options reordered, case and spacing changed) under another id of another domain
    copy = MCQ(99_999, "  MEDICINE   question " + inc["question"].split()[-1], tuple(reversed(inc["choices"])), 0,
               domain="history", subject="history")
    problems = check_groups(g, train, held + [copy])
    assert any("by text and options" in p and "history/99999" in p for p in problems)
    # a training question not in the training split, identified by source: same id, other domain
    other = [MCQ(q.id, q.question, q.choices, q.answer, domain="law", subject="law") for q in train]
    assert any("not in the training split" in p for p in check_groups(g, other, []))


def test_compared_groups_cut_to_the_smallest() -> None:
    train, _, probe = _two_domains()
    probe.loc[probe.index[1:6:2], "confidence"] = 0.3  # 3 of the 6 confidently right become unconfident
    g = build_groups(train, probe, ratios=[0, 0.5, 1], seed=0)
    assert len(g.harmonious) == 3 and g.report["incompatible_pool"] == 6
    assert {len(e) for _, e in g.items()} == {3}
    assert g.report["cut_to_harmonious"] == 3 and g.report["harmonious_short"] == 0
    assert check_groups(g, train, []) == []
    uncut = build_groups(train, probe, ratios=[0, 0.5, 1], seed=0, match_harmonious=False)
    assert len(uncut.incompatible) == 6 and len(uncut.harmonious) == 3 and check_groups(uncut, train, []) == []


def test_contextualized_without_contexts_is_refused() -> None:
    train, _, probe = _two_domains()
    g = build_groups(train, probe, ratios=[0], seed=0)
    problem = context_problem(g)
    assert problem is not None and "extra_groups" in problem and "context" in problem
    with_ctx = [MCQ(q.id, q.question, q.choices, q.answer, domain=q.domain, subject=q.subject,
                    context="A fact." if q.id % 3 else "") for q in train]
    assert context_problem(build_groups(with_ctx, probe, ratios=[0], seed=0)) is None


def test_replicate_seeds_differ_and_draw_other_facts() -> None:
    seeds = {replicate_seed(d, s) for d in range(3) for s in range(50)}
    assert len(seeds) == 150 and replicate_seed(0, 1) == replicate_seed(0, 1)
    train, probe = _big(400)
    a, b = (build_groups(train, probe, ratios=[0, 1], seed=replicate_seed(0, s), max_per_group=20) for s in (0, 1))
    ids = [{ex["id"] for ex in g.incompatible} for g in (a, b)]
    assert ids[0] != ids[1] and len(ids[0]) == len(ids[1]) == 20


def test_contextualized_chat_examples_and_card() -> None:
    train, probe = _big(60)
    g = _explain(build_groups(train, probe, ratios=[0, 0.5, 1], seed=3))
    ctx = to_chat_examples(g.contextualized, mode="letter", template="vicuna")
    plain = to_chat_examples(g.incompatible, mode="letter", template="vicuna")
    for ex, c, p in zip(g.contextualized, ctx, plain, strict=True):
        q_block = f"{ex['question']}\nA. a\nB. b\nC. c\nD. d\nAnswer:"
        assert p["prompt"] == vicuna(q_block)
        assert c["prompt"] == vicuna(f"{ex['context']}\n{q_block}" if ex["context"] else q_block)
        assert c["response"] == p["response"] and p["response"].startswith(f"{'ABCD'[ex['answer']]}. ")
    selfs = to_chat_examples(g.self_aligning, mode="cloze", template="none")
    assert all(s["response"].startswith("Answer: " + ex["choices"][ex["pred"]] + "\n") for s, ex in zip(selfs, g.self_aligning, strict=True))
    assert g.report["contextualized_without_context"] > 0 and context_problem(g) is None
    frame = card(g)
    assert list(frame["group"]) == ["incompatible", "self_aligning", "harmonious", "contextualized",
                                    "ratio_0", "ratio_0.5", "ratio_1"]
    row = frame.set_index("group").loc["ratio_0.5"]
    assert row["n"] == len(g.incompatible) and row["n_self"] == round(0.5 * len(g.incompatible))
    from ift_utils.interventions import example_mcq
    lengths = [len(ift_response(example_mcq(e), e["target"], e["explanation"], "letter")) for e in g.harmonious]
    assert frame.set_index("group").loc["harmonious", "mean_response_chars"] == pytest.approx(sum(lengths) / len(lengths))


def test_mix_general() -> None:
    domain = [{"prompt": f"d{i}", "response": "x"} for i in range(10)]
    general = [{"prompt": f"g{i}", "response": "y"} for i in range(30)]
    mixed = mix_general(domain, general, ratio=1.0, seed=0)
    assert len(mixed) == 20 and sum(m["prompt"].startswith("g") for m in mixed) == 10
    assert all(d in mixed for d in domain)
    assert mixed == mix_general(domain, general, ratio=1.0, seed=0)
    assert mixed != mix_general(domain, general, ratio=1.0, seed=1)
    assert len(mix_general(domain, general, ratio=0.25)) == 10 + round(2.5)
    assert mix_general(domain, general, ratio=0) != [] and len(mix_general(domain, general, ratio=0)) == 10
    with pytest.raises(ValueError, match="general examples"):
        mix_general(domain, general[:5], ratio=1.0)


def test_attach_keeps_data_explanations_and_records_sources() -> None:
    train, probe = _big(60)
    train = [MCQ(q.id, q.question, q.choices, q.answer, explanation="Own." if q.id % 2 else "", context=q.context)
             for q in train]
    g = build_groups(train, probe, ratios=[0, 1], seed=0)
    need = needed_explanations(g)
    assert all(not q.explanation for q, _ in need["gold"])  # the data's own explanations are not regenerated
    done = attach_explanations(g, {q.id: Explanation(f"m{q.id}", "model", "truncated") for q, _ in need["gold"]},
                               {q.id: Explanation(f"s{q.id}", "model", "ok") for q, _ in need["self"]})
    for ex in done.incompatible + done.harmonious:
        want = ("Own.", "data", "data") if ex["id"] % 2 else (f"m{ex['id']}", "model", "truncated")
        assert (ex["explanation"], ex["explanation_source"], ex["explanation_status"]) == want
    assert all(ex["explanation_source"] == "model" for ex in done.self_aligning)
    table = explanation_table(done, []).set_index("group")
    assert table.loc["incompatible", "truncated"] == sum(ex["id"] % 2 == 0 for ex in done.incompatible)
    assert table.loc["self_aligning", "model"] == len(done.self_aligning) and table["leaking"].sum() == 0
    with pytest.raises(ValueError, match="no explanation"):
        attach_explanations(g, {}, {})


def test_leaked_answers_whole_words_folded_and_not_own_answer() -> None:
    index = answer_index(["Kigali", "New Delhi", "US", "a", "Nairobi", "Rwanda"])
    ex = {"question": "In which country is the city of Musanze?", "choices": ["Rwanda", "Kenya", "Nairobi", "Uganda"],
          "target": 0}
    assert leaked_answers({**ex, "explanation": "Musanze is a city in Rwanda, whose capital is KIGALI."}, index) \
        == ["Kigali"]
    assert leaked_answers({**ex, "explanation": "Not Kigalian, not newdelhi; near new  delhi."}, index) == ["New Delhi"]
    assert leaked_answers({**ex, "explanation": "Musanze is in Rwanda."}, index) == []  # its own answer
    assert leaked_answers({**ex, "explanation": "Nairobi is close."}, index) == ["Nairobi"]  # another option counts
    no_target = {k: v for k, v in ex.items() if k != "target"}
    assert leaked_answers({**no_target, "explanation": "Nairobi is close."}, index) == []  # old rule: any option
    assert leaked_answers({**ex, "explanation": "It is a city."}, index) == []      # one-letter answers ignored
    us = {"question": "In which US state is the city of Kapolei?", "choices": ["Hawaii", "Oregon", "Utah", "Idaho"]}
    assert leaked_answers({**us, "explanation": "Kapolei is a city in the US state of Hawaii."}, index) == []


def test_check_cells_equal_sizes_and_general_data() -> None:
    gen = [{"prompt": f"g{i}", "response": "y"} for i in range(6)]
    dom = [{"prompt": f"d{i}", "response": "x"} for i in range(3)]
    cells = {"ratio_0": dom + gen[:3], "harmonious": [{"prompt": "h", "response": "x"}] * 3 + gen[:3],
             "general_only": gen}
    assert check_cells(cells, gen[:3], 3) == []
    assert any("differ in size" in p for p in check_cells({**cells, "ratio_0": dom[:2] + gen[:3]}, gen[:3], 3))
    assert any("general data differ" in p for p in check_cells({**cells, "harmonious": dom + gen[3:]}, gen[:3], 3))
    assert any("general_only" in p for p in check_cells({**cells, "general_only": dom + gen[1:]}, gen[:3], 3))


# ---------------------------------------------------------------- stage 02 glue (study.py)

def test_conditions_add_general_only_not_no_ift() -> None:
    P = load_params(None, {"ratios": [0, 1], "extra_groups": ["harmonious"]})
    assert [c[0] for c in grid.conditions(P)] == ["ratio_0", "ratio_1", "harmonious", "general_only"]
    assert math.isnan(grid.conditions(P)[-1][2])
    assert "general_only" not in [c[0] for c in grid.conditions(load_params(None, {"controls": ["no_ift"]}))]
    cell = grid.Cell("city_country", "ratio_0", "incompatible", 0.0, 3)
    assert grid.cell_data(RunPaths(Path("/r")), cell) == Path("/r/groups/city_country/rep3/ratio_0.chat.jsonl")


def test_general_pool_is_seeded_per_replicate_and_prefix_stable(tmp_path: Path) -> None:
    P = load_params(None, {})
    a, rep = interventions_stage.general_pool(P, 12, seed=5)
    assert rep["seed"] == 5 and len(a) == 12 and interventions_stage.general_pool(P, 7, seed=5)[0] == a[:7]
    assert interventions_stage.general_pool(P, 12, seed=6)[0] != a
    f = tmp_path / "alpaca.json"
    f.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(5)]))
    Pa = load_params(None, {"general_data": str(f)})
    x, _ = interventions_stage.general_pool(Pa, 4, seed=1)
    assert len(x) == 4 and x != interventions_stage.general_pool(Pa, 4, seed=2)[0]
    with pytest.raises(ValueError, match="general_data"):
        interventions_stage.general_pool(Pa, 6, seed=1)


def _run_folder(tmp_path: Path, **over):
    """A run folder with stage 01's outputs for two facts domains (a tiny suite, a made-up probe)."""
    from ift_utils.data_facts import build_facts_suite
    from ift_utils.io import write_jsonl

    P = load_params(None, {"output_root": str(tmp_path), "run_name": "t", "seeds": [0, 1], "max_per_group": 6,
                           "ratios": [0, 0.5, 1], "chat_template": "vicuna", "explanations": "template", **over})
    paths = RunPaths(P.run_dir())
    suite = build_facts_suite(seed=0, domains=P.domains, n_train=60, n_dev=2, n_test=10, n_id=10)
    rows = []
    for d in P.domains:
        other = [q for o in P.domains if o != d for q in suite[o]["test"]]
        for split, qs in {**suite[d], "ood_test": other}.items():
            write_jsonl(paths.data / d / f"{split}.jsonl", [q.to_json() for q in qs])
        for i, q in enumerate(suite[d]["train"]):
            pred = q.answer if i % 2 else (q.answer + 1) % 4
            rows.append({"probe_domain": d, "split": "train", "id": q.id, "pred": pred, "correct": pred == q.answer,
                         "confidence": 0.9})
    return P, paths, pd.DataFrame(rows)


def test_build_domain_groups_replicates_with_matched_groups(tmp_path: Path) -> None:
    P, paths, probe = _run_folder(tmp_path)
    res = {d: interventions_stage.build_domain_groups(P, paths, None, None, d, probe) for d in P.domains}
    for d, r in res.items():
        n = 6
        reps = r["replicates"]
        assert set(reps) == {0, 1} and reps[0]["data_seed"] != reps[1]["data_seed"]
        ids = [[ex["id"] for ex in reps[s]["groups"].incompatible] for s in (0, 1)]
        assert ids[0] != ids[1] and reps[1]["shared_with_first_rep"] < n  # other facts per replicate
        for s in (0, 1):
            assert set(reps[s]["train_sizes"].values()) == {2 * n}  # equal sizes, general_only included
            chats = {c: read_jsonl(grid.cell_data(paths, grid.Cell(d, c, g, ratio, s)))
                     for c, g, ratio in grid.conditions(P)}
            general = [{*map(tuple, (e.values() for e in v))} for v in chats.values()]
            shared = set.intersection(*general)
            assert len(shared) == n  # the same general data in every cell of the replicate
            assert (paths.groups / d / f"rep{s}" / "ratio_0.5.jsonl").exists()
        table = r["explanation_table"]
        assert set(table["rep"]) == {0, 1} and (table["template"] == table["n"]).all()
        assert table["leaking"].sum() == 0 and table["leaking_template"].sum() == 0
        assert {"domain", "rep", "group", "n"} <= set(r["card"].columns)


def test_stage_fails_when_a_template_states_a_test_answer(tmp_path: Path, monkeypatch) -> None:
    from ift_utils import explanations

    P, paths, probe = _run_folder(tmp_path, seeds=[0])
    capitals = [q.choices[q.answer] for q in shared.read_questions(paths, "city_country", "id_test")]
    monkeypatch.setattr(explanations, "template_explanation", lambda q, c: f"Its capital is {capitals[0]}.")
    with pytest.raises(AssertionError, match="template explanations state test knowledge"):
        interventions_stage.build_domain_groups(P, paths, None, None, "city_country", probe)


def test_contextualized_refused_in_the_stage(tmp_path: Path) -> None:
    P, paths, probe = _run_folder(tmp_path, seeds=[0])
    train = read_jsonl(paths.data / "city_country" / "train.jsonl")
    write_jsonl(paths.data / "city_country" / "train.jsonl", [{**r, "context": ""} for r in train])
    with pytest.raises(ValueError, match="extra_groups"):
        interventions_stage.build_domain_groups(P, paths, None, None, "city_country", probe)
    P2 = load_params(None, {**P.model_dump(), "extra_groups": ["harmonious"]})
    assert interventions_stage.build_domain_groups(P2, paths, None, None, "city_country", probe)["replicates"]


def test_build_domain_groups_model_explanations(tmp_path: Path, tiny) -> None:
    model, tok = tiny
    P, paths, probe = _run_folder(tmp_path, seeds=[0], max_per_group=2, explanations="model",
                                  explanation_max_new_tokens=4, domains=["city_country"])
    r = interventions_stage.build_domain_groups(P, paths, model, tok, "city_country", probe)
    g = r["replicates"][0]["groups"]
    sources = {ex["explanation_source"] for _, exs in g.items() for ex in exs}
    assert sources <= {"model", "template"} and "model" in sources  # template only for an empty output
    assert r["explanations"]["gold"]["items"] == 4 and r["explanations"]["self"]["items"] == 2
    table = r["explanation_table"].set_index("group")
    assert table.loc["incompatible", "model"] + table.loc["incompatible", "empty"] == 2


def test_beliefs_that_flip_with_the_prompt_enter_no_pool():
    import pandas as pd

    from ift_utils.interventions import split_by_belief
    from ift_utils.records import MCQ

    qs = [MCQ(id=i, question=f"q{i}?", choices=("a", "b", "c", "d"), answer=0) for i in range(4)]
    probe = pd.DataFrame({"id": [0, 1, 2, 3], "pred": [0, 1, 0, 1], "correct": [True, False, True, False],
                          "confidence": [.9, .9, .9, .9],
                          "variant_preds": [[0, 0, 0], [1, 1, 1], [0, 2, 0], [1, 1, 3]]})
    pools = split_by_belief(qs, probe, 0.5)
    assert [q.id for q, _ in pools["harmonious_pool"]] == [0]
    assert [q.id for q, _ in pools["incompatible_pool"]] == [1]
    assert pools["unstable"] == [2, 3]
    one = split_by_belief(qs, probe.drop(columns="variant_preds"), 0.5)  # the paper's single-prompt rule
    assert len(one["harmonious_pool"]) == 2 and len(one["incompatible_pool"]) == 2 and one["unstable"] == []


def test_train_and_test_files_that_both_count_from_zero_are_no_leak():
    import pandas as pd

    from ift_utils.interventions import build_groups, check_groups
    from ift_utils.records import MCQ

    def mcq(i: int, text: str) -> MCQ:
        return MCQ(id=i, question=text, choices=("a", "b", "c", "d"), answer=0, domain="medicine", subject="medicine")

    train = [mcq(i, f"Train question {i}?") for i in range(10)]
    test = [mcq(i, f"Test question {i}?") for i in range(3)]  # same ids, other questions: not a leak
    probe = pd.DataFrame([{"id": q.id, "pred": 1, "correct": False, "confidence": .9} for q in train])
    groups = build_groups(train, probe, ratios=[0, 1], match_harmonious=False)
    assert check_groups(groups, train, test) == []
    copy = [mcq(1003, "Train question 4?")]  # a training question stored again under another id: a leak
    assert any("by text and options" in p for p in check_groups(groups, train, copy))


def test_entropy_and_tv_by_hand() -> None:
    assert answer_entropy(["a", "b", "a", "b"]) == pytest.approx(1.0)
    assert answer_entropy(["a"] * 3) == 0 and math.isnan(answer_entropy([]))
    assert answer_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert tv_distance(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.25)
    assert tv_distance(["a"], ["b"]) == 1 and tv_distance(["a", "b"], ["b", "a"]) == 0
    assert math.isnan(tv_distance([], ["a"]))


def test_match_by_answer_same_answers_then_nearest_frequency() -> None:
    import random
    from collections import Counter

    pool = [("China", i) for i in range(10)] + [("Peru", i) for i in range(2)] + [("Chile", i) for i in range(3)] \
        + [("Fiji", 0), ("Laos", 0)]
    targets = ["Peru"] * 3 + ["Fiji"] + ["Togo"] * 2
    freq = Counter({"Peru": 4, "Togo": 3, "Chile": 3, "China": 40, "Fiji": 1, "Laos": 1})
    got = match_by_answer(pool, targets, lambda it: it[0], random.Random(0), freq)
    answers = Counter(a for a, _ in got)
    assert len(got) == 6 and answers["Peru"] == 2 and answers["Fiji"] == 1  # every same answer the pool has
    assert answers["Chile"] == 3 and "China" not in answers  # open slots: the nearest frequency (Chile: 3)
    assert got == sorted(got, key=pool.index)  # pool order kept
    assert match_by_answer(pool, targets, lambda it: it[0], random.Random(0), freq) == got  # seeded
    assert len(match_by_answer(pool[:2], targets, lambda it: it[0], random.Random(0))) == 2


def _answer_data(n: int = 400, seed: int = 0):
    """Training questions with a skewed gold-answer mix, and a probe in which the model knows the popular answers
    (the pattern of the real probe: harmonious facts have popular answers, incompatible facts others)."""
    import random

    rng = random.Random(seed)
    names = [f"Land{i}" for i in range(30)]
    weights = [1 / (i + 1) for i in range(30)]
    train, rows = [], []
    for qid in range(n):
        gold = rng.choices(names, weights)[0]
        others = rng.sample([x for x in names if x != gold], 3)
        pos = qid % 4
        choices = tuple(others[:pos] + [gold] + others[pos:])
        train.append(MCQ(qid, f"Where is town {qid}?", choices, pos, domain="d"))
        known = rng.random() < (0.95 if names.index(gold) < 5 else 0.6)
        pred = pos if known else (pos + 1) % 4
        rows.append({"id": qid, "pred": pred, "correct": pred == pos, "confidence": 0.9})
    return train, pd.DataFrame(rows)


def test_build_groups_matches_harmonious_answers_to_incompatible() -> None:
    train, probe = _answer_data()
    g = build_groups(train, probe, seed=3, ratios=[0, 1], max_per_group=48)
    plain = build_groups(train, probe, seed=3, ratios=[0, 1], max_per_group=48, match_answers=False)
    r = g.report
    assert r["match_answers"] and r["answer_tv_matched"] < r["answer_tv_random"] / 2
    assert plain.report["answer_tv_random"] == r["answer_tv_random"]  # the old draw is still reachable
    assert tv_distance([ex["choices"][ex["answer"]] for ex in plain.harmonious],
                       [ex["choices"][ex["answer"]] for ex in g.incompatible]) == pytest.approx(r["answer_tv_random"])
    assert tv_distance([ex["choices"][ex["answer"]] for ex in g.harmonious],
                       [ex["choices"][ex["answer"]] for ex in g.incompatible]) == pytest.approx(r["answer_tv_matched"])
    assert len(g.harmonious) == len(g.incompatible) and not check_groups(g, train, [])
    assert build_groups(train, probe, seed=3, ratios=[0, 1], max_per_group=48).harmonious == g.harmonious
    table = answer_table(g, train[:100]).set_index("group")
    assert table.loc["incompatible", "tv_to_incompatible"] == 0
    assert table.loc["harmonious", "tv_to_incompatible"] == pytest.approx(r["answer_tv_matched"])
    assert table.loc["harmonious", "entropy_bits"] > answer_entropy(
        [ex["choices"][ex["answer"]] for ex in plain.harmonious])  # matched harmonious answers are spread
    assert set(table.columns) >= {"n", "distinct_answers", "entropy_bits", "tv_to_homo_test"}
    assert trained_answers(g.self_aligning) == {ex["choices"][ex["pred"]] for ex in g.self_aligning}


def test_fact_rule_fires_on_a_planted_leak_not_on_clean_templates() -> None:
    from ift_utils.data_facts import build_facts_suite
    from ift_utils.explanations import template_explanation

    suite = build_facts_suite(seed=0, n_train=60, n_test=30, n_id=30, n_ood=30)
    tests = [q for sp in suite.values() for s in ("test", "id_test", "ood_test") for q in sp[s]]
    facts = fact_index(tests)
    for d, sp in suite.items():
        probe = pd.DataFrame([{"id": q.id, "pred": (q.answer + (q.id % 2)) % 4, "correct": q.id % 2 == 0,
                               "confidence": 0.9} for q in sp["train"]])
        g = build_groups(sp["train"], probe, seed=0, ratios=[0.5])
        need = needed_explanations(g)
        g = attach_explanations(g, {q.id: template_explanation(q, c) for q, c in need["gold"]},
                                {q.id: template_explanation(q, c) for q, c in need["self"]})
        table = explanation_table(g, tests)
        assert table["leaking"].sum() == 0 and table["leaking_fact"].sum() == 0, d  # clean templates
        # planted: a template that also states a test fact about another entity (whose answer is the training one)
        test_q = next(q for q in sp["test"] if q.choices[q.answer] in {ex["choices"][ex["target"]]
                                                                       for ex in g.incompatible})
        answer = test_q.choices[test_q.answer]
        planted = {**g.incompatible[0]}
        for ex in g.incompatible:
            if ex["choices"][ex["target"]] == answer:
                planted = {**ex}
                break
        planted["explanation"] += f" So is {test_q.raw['entity']}, also in {answer}."
        assert leaked_answers(planted, answer_index([answer])) == []  # the answer rule cannot see it
        assert leaked_facts(planted, facts) == [f"{' '.join(_w(test_q.raw['entity']))} → {' '.join(_w(answer))}"]
        leaky = replace(g, incompatible=[planted, *g.incompatible[1:]])
        row = explanation_table(leaky, tests).set_index("group").loc["incompatible"]
        assert row["leaking_fact"] == 1 and row["leaking_fact_template"] == 1 and row["leaking"] == 0
    ood_q = tests[-1]  # an OOD fact (a country's currency) stated by a model explanation
    ex = {**g.incompatible[0], "explanation": f"Unlike {ood_q.raw['entity']}, which pays in "
                                              f"{ood_q.choices[ood_q.answer]}.", "explanation_source": "model"}
    assert leaked_facts(ex, facts) and leaked_answers(ex, answer_index([ood_q.choices[ood_q.answer]]))
    assert explanation_table(replace(g, incompatible=[ex]), [ood_q.choices[ood_q.answer]])["leaking_fact"].sum() == 0


def test_fact_rule_exempts_a_test_entity_the_examples_own_question_names() -> None:
    """By hand, the case the powered design met: a training fact about "Sayreville Junction" (New Jersey) and a
    test question about "Sayreville" (New Jersey). The template restates its own question, so it is no leak; the
    same test fact stated about another city's example still is."""
    from ift_utils.data_facts import SOURCE
    from ift_utils.records import MCQ

    test_q = MCQ(id=1, question="In which US state is the city of Sayreville?", answer=1, domain="us_city_state",
                 choices=("New York", "New Jersey", "Maryland", "Ohio"), subject="US geography",
                 raw={"entity": "Sayreville", "gold": "New Jersey", "source": SOURCE})
    facts = fact_index([test_q])
    assert facts == {("sayreville",): {("new", "jersey")}}
    own = {"question": "In which US state is the city of Sayreville Junction?", "target": 1,
           "choices": ["New York", "New Jersey", "Maryland", "Ohio"], "raw": {"entity": "Sayreville Junction"},
           "explanation": "Sayreville Junction is a city in New Jersey."}
    assert leaked_facts(own, facts) == []
    other = {**own, "question": "In which US state is the city of Hoboken?", "raw": {"entity": "Hoboken"},
             "explanation": "Hoboken is a city in New Jersey, as is Sayreville."}
    assert leaked_facts(other, facts) == ["sayreville → new jersey"]


def _w(text: str) -> tuple[str, ...]:
    from ift_utils.interventions import _words

    return _words(text)
