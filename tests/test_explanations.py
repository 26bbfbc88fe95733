"""Explanation generation: the original's extraction rule (between back-ticks, else the whole completion),
truncation counts, the template for blank outputs, the per-item cache (resumable, a cut last line ignored,
re-read under the current rule) and batch-independent seeding, on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ift_utils import explanations as ex
from ift_utils.explanations import (
    ExplainConfig,
    Explanation,
    completion_status,
    explain_prompt,
    extract_explanation,
    fallback_explanation,
    generate_explanations,
    read_cache,
    template_explanation,
)
from ift_utils.records import MCQ

QS = [MCQ(1, "In which country is the city of Lyon?", ("Spain", "France", "Italy", "Belgium"), 1),
      MCQ(2, "In which country is the city of Osaka?", ("China", "Japan", "Vietnam", "Korea"), 1),
      MCQ(3, "What is the capital of Australia?", ("Sydney", "Canberra", "Perth", "Darwin"), 1)]
ITEMS = [(QS[0], 1), (QS[1], 2), (QS[2], 0)]


@pytest.mark.parametrize("text, expected", [
    ("Lyon is in France.\n```", "Lyon is in France."),
    ("  two\nlines  ```\nmore ``` text", "two\nlines"),
    ("```", ""),
    ("   \n```", ""),
    ("no closing fence at all", "no closing fence at all"),  # kept whole, as the original does
    ("```\nre-opened fence, cut", "re-opened fence, cut"),     # a leading fence is removed
    ("```\nre-opened and closed\n```", "re-opened and closed"),
    ("", ""),
])
def test_extract_opened(text: str, expected: str) -> None:
    assert extract_explanation(text) == expected


def test_extract_not_opened() -> None:
    assert extract_explanation("Sure: ``` because X ``` done", opened=False) == "because X"
    assert extract_explanation("```only a leading fence", opened=False) == "only a leading fence"
    assert extract_explanation("no fences", opened=False) == "no fences"


@pytest.mark.parametrize("text, tokens, status", [
    ("Fine.\n```", 5, "ok"), ("Fine.\n```", 10, "ok"), ("cut here", 10, "truncated"), ("ended", 4, "no_fence"),
    (" \n```", 3, "empty"), ("", 10, "empty"),
])
def test_completion_status(text: str, tokens: int, status: str) -> None:
    assert completion_status(text, tokens, limit=10) == status


def test_template_states_only_the_answer() -> None:
    assert template_explanation(QS[0], 2) == "The answer is Italy." == fallback_explanation(QS[0], 2)
    from ift_utils.data_facts import build_facts_suite

    q = build_facts_suite(seed=0, domains=["city_country"], n_train=1, n_dev=0, n_test=0, n_id=0)["city_country"]["train"][0]
    wrong = (q.answer + 1) % 4
    assert template_explanation(q, q.answer).startswith(f"{q.raw['entity']} is a city in ")
    assert template_explanation(q, wrong).endswith(f"{q.choices[wrong]}.")


@pytest.mark.parametrize("style", ["short", "paper"])
def test_prompt_shape(style: str) -> None:
    p = explain_prompt(QS[0], 2, style)
    assert p.endswith("```\n")
    assert "Below is a multiple-choice question and the answer. Please give the explanation." in p
    assert "In which country is the city of Lyon?\nA. Spain\nB. France\nC. Italy\nD. Belgium\nAnswer: C" in p
    assert p.count("```") % 2 == 1  # the last fence is left open for the model


def test_config_validation() -> None:
    assert ExplainConfig().new_tokens == 48 and ExplainConfig(style="paper").new_tokens == 256
    assert ExplainConfig(style="paper", max_new_tokens=10).new_tokens == 10
    for bad in ({"style": "long"}, {"top_p": 0}, {"temperature": -1}, {"batch_size": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            ExplainConfig(**bad)


def test_no_fence_kept_truncated_counted_empty_templated(monkeypatch, tmp_path: Path) -> None:
    outputs = {QS[0].id: "France is where Lyon is.\n```", QS[1].id: "\n```", QS[2].id: "rambling without a fence"}

    def fake_batch(model, tokenizer, prompts, seeds, cfg):
        texts = [next(v for k, v in outputs.items() if QS[k - 1].question in p.split("```")[-2]) for p in prompts]
        return texts, [cfg.new_tokens if "rambling" in t else 3 for t in texts]

    class FakeTokenizer:
        padding_side = "right"

        def __call__(self, text: str, **kwargs) -> dict:
            return {"input_ids": text.split()}

    monkeypatch.setattr(ex, "_generate_batch", fake_batch)
    tok = FakeTokenizer()
    out, stats = generate_explanations(None, tok, ITEMS, ExplainConfig(batch_size=2), tmp_path / "c.jsonl",
                                       progress=False)
    assert out == [Explanation("France is where Lyon is.", "model", "ok"),
                   Explanation(template_explanation(QS[1], 2), "template", "empty"),
                   Explanation("rambling without a fence", "model", "truncated")]
    assert (stats["generated"], stats["cached"], stats["ok"], stats["empty"], stats["truncated"]) == (3, 0, 1, 1, 1)
    assert stats["fallback_items"] == [[2, 2]] and stats["truncated_items"] == [[3, 0]]
    assert tok.padding_side == "right"  # restored
    # a cache written under the old rule (status "unparsable", template text) is re-read under the new one
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    old = [{**r, "status": "unparsable", "explanation": "The answer is Sydney."} for r in lines]
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    again, s2 = generate_explanations(None, tok, ITEMS, ExplainConfig(batch_size=2), tmp_path / "old.jsonl",
                                      progress=False)
    assert again == out and s2["cached"] == 3


@pytest.fixture(scope="module")
def tiny():
    from ift_utils.models import load_model
    return load_model("tiny-random")


def test_generation_cache_and_resume(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    cfg = ExplainConfig(max_new_tokens=6, batch_size=2, seed=5)
    cache = tmp_path / "expl.jsonl"
    side = tok.padding_side
    out1, s1 = generate_explanations(model, tok, ITEMS, cfg, cache, progress=False)
    assert len(out1) == 3 and all(isinstance(e, Explanation) and e.text for e in out1)
    assert (s1["generated"], s1["cached"]) == (3, 0)
    assert s1["ok"] + s1["no_fence"] + s1["truncated"] + s1["empty"] == 3 and s1["fallback"] == s1["empty"]
    assert len(cache.read_text().splitlines()) == 3
    assert tok.padding_side == side  # left padding only while generating

    out2, s2 = generate_explanations(model, tok, ITEMS, cfg, cache, progress=False)
    assert out2 == out1 and (s2["generated"], s2["cached"]) == (0, 3)

    # a kill mid-write leaves a cut last line: it is ignored, that item is regenerated identically
    data = cache.read_bytes()
    cache.write_bytes(data[:-25])
    out3, s3 = generate_explanations(model, tok, ITEMS, cfg, cache, progress=False)
    assert out3 == out1
    assert (s3["generated"], s3["cached"], s3["bad_cache_lines"]) == (1, 2, 1)
    records, bad = read_cache(cache)
    assert len(records) == 3 and bad == 1

    # another seed is another cache key
    _, s4 = generate_explanations(model, tok, ITEMS, ExplainConfig(max_new_tokens=6, seed=6), cache, progress=False)
    assert s4["generated"] == 3


def test_results_do_not_depend_on_batching(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    runs = []
    for bs in (1, 3):
        cfg = ExplainConfig(max_new_tokens=8, batch_size=bs, seed=11)
        generate_explanations(model, tok, ITEMS, cfg, tmp_path / f"bs{bs}.jsonl", progress=False)
        runs.append({k: r["completion"] for k, r in read_cache(tmp_path / f"bs{bs}.jsonl")[0].items()})
    assert runs[0] == runs[1]
    # and the per-item order of the input does not matter either
    out_rev, _ = generate_explanations(model, tok, ITEMS[::-1], ExplainConfig(max_new_tokens=8, batch_size=3, seed=11),
                                       tmp_path / "rev.jsonl", progress=False)
    out_fwd, _ = generate_explanations(model, tok, ITEMS, ExplainConfig(max_new_tokens=8, batch_size=3, seed=11),
                                       tmp_path / "bs3.jsonl", progress=False)
    assert out_rev == out_fwd[::-1]


def test_bad_choice_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out of range"):
        generate_explanations(None, SimpleNamespace(padding_side="right"), [(QS[0], 4)], ExplainConfig(),
                              tmp_path / "c.jsonl", progress=False)


def test_cache_line_cut_inside_a_character_is_one_bad_line(tmp_path: Path) -> None:
    good = json.dumps({"key": "k1", "completion": "Zürich"}, ensure_ascii=False).encode()
    cut = json.dumps({"key": "k2", "completion": "Besançon"}, ensure_ascii=False).encode()
    cache = tmp_path / "c.jsonl"
    cache.write_bytes(good + b"\n" + cut[:cut.index("ç".encode()) + 1])  # ends inside the two-byte "ç"
    records, bad = read_cache(cache)
    assert list(records) == ["k1"] and bad == 1
