"""Explanation generation: extraction between back-ticks, the fallback rule, the per-item cache
(resumable, a cut last line ignored) and batch-independent seeding, on the tiny random model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ift_utils import explanations as ex
from ift_utils.explanations import (
    ExplainConfig,
    explain_prompt,
    extract_explanation,
    fallback_explanation,
    generate_explanations,
    read_cache,
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
    ("no closing fence at all", None),
    ("", None),
])
def test_extract_opened(text: str, expected: str | None) -> None:
    assert extract_explanation(text) == expected


def test_extract_not_opened() -> None:
    assert extract_explanation("Sure: ``` because X ``` done", opened=False) == "because X"
    assert extract_explanation("only ``` one fence", opened=False) is None
    assert extract_explanation("no fences", opened=False) is None


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


def test_fallback_rule_counts_empty_and_unparsable(monkeypatch, tmp_path: Path) -> None:
    outputs = {QS[0].id: "France is where Lyon is.\n```", QS[1].id: "\n```", QS[2].id: "rambling without a fence"}

    def fake_batch(model, tokenizer, prompts, seeds, cfg):
        texts = [next(v for k, v in outputs.items() if QS[k - 1].question in p.split("```")[-2]) for p in prompts]
        return texts, [3] * len(texts)

    class FakeTokenizer:
        padding_side = "right"

        def __call__(self, text: str, **kwargs) -> dict:
            return {"input_ids": text.split()}

    monkeypatch.setattr(ex, "_generate_batch", fake_batch)
    tok = FakeTokenizer()
    out, stats = generate_explanations(None, tok, ITEMS, ExplainConfig(batch_size=2), tmp_path / "c.jsonl",
                                       progress=False)
    assert out == ["France is where Lyon is.", fallback_explanation(QS[1], 2), fallback_explanation(QS[2], 0)]
    assert out[2] == "The answer is Sydney."
    assert (stats["generated"], stats["cached"], stats["empty"], stats["unparsable"], stats["fallback"]) == (3, 0, 1, 1, 2)
    assert stats["fallback_items"] == [[2, 2], [3, 0]]
    assert tok.padding_side == "right"  # restored


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
    assert len(out1) == 3 and all(isinstance(e, str) and e for e in out1)
    assert (s1["generated"], s1["cached"]) == (3, 0)
    assert s1["fallback"] == s1["empty"] + s1["unparsable"]
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
