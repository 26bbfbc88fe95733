"""Intervention groups: property-based checks over random probe frames (the invariants of
check_groups, exact ratio counts, harmonious size, byte-identical files per seed), plus the pieces
around them (pools, explanations, chat examples, general-data mixing, the card)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ift_utils.interventions import (
    attach_explanations,
    build_groups,
    card,
    check_groups,
    mix_general,
    needed_explanations,
    ratio_name,
    split_by_belief,
    to_chat_examples,
    write_groups,
)
from ift_utils.prompts import ift_response, vicuna
from ift_utils.records import MCQ

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
    heldout = [20_000 + i for i in range(draw(st.integers(0, 5)))]
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
    train_ids = [q.id for q in train]
    assert check_groups(groups, train_ids, heldout) == []
    explained = _explain(groups)
    assert check_groups(explained, train_ids, heldout) == []

    n = len(groups.incompatible)
    pools = split_by_belief(train, probe, threshold)
    assert n == (len(pools["incompatible_pool"]) if max_per_group is None
                 else min(max_per_group, len(pools["incompatible_pool"])))
    for r, examples in groups.ratios.items():
        assert sum(ex["version"] == "self" for ex in examples) == round(r * n)
        assert len(examples) == n
    if len(pools["harmonious_pool"]) >= n:
        assert len(groups.harmonious) == n and groups.report["harmonious_short"] == 0
    assert groups.ratios[0.0] == groups.incompatible and groups.ratios[1.0] == groups.self_aligning
    # nested ratio sets: the self questions of a smaller r are among those of a larger r
    selfs = [{ex["id"] for ex in groups.ratios[r] if ex["version"] == "self"} for r in sorted(groups.ratios)]
    assert all(a <= b for a, b in zip(selfs, selfs[1:], strict=False))
    # gold explanations keep the record's own text when it has one
    own = {q.id: q.explanation for q in train}
    for ex in explained.incompatible + explained.harmonious:
        assert ex["explanation"] == (own[ex["id"]] or f"gold {ex['id']}")
    assert all(ex["explanation"].startswith(f"self {ex['id']}") for ex in explained.self_aligning)
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
    ids = [q.id for q in train]
    assert check_groups(g, ids, []) == []
    leak = g.incompatible[0]["id"]
    assert any("held-out" in p for p in check_groups(g, [i for i in ids if i != leak], [leak]))
    g.ratios[0.5][0] = g.self_aligning[0] if g.ratios[0.5][0]["version"] == "gold" else g.incompatible[0]
    assert any("ratio_0.5" in p for p in check_groups(g, ids, []))
    g2 = build_groups(train, probe, ratios=[0.5], seed=0)
    g2.harmonious.append(g2.incompatible[0])
    assert any("share" in p for p in check_groups(g2, ids, []))
    g3 = build_groups(train, probe, ratios=[0.5], seed=0)
    g3.self_aligning[0] = {**g3.self_aligning[0], "target": g3.self_aligning[0]["answer"]}
    assert any("target == pred != answer" in p for p in check_groups(g3, ids, []))


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
    assert g.report["contextualized_without_context"] > 0
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
