"""The benchmark suite runs end to end on the tiny model (figures meaningless) and writes its report."""

import csv

import pytest

from benchmarks import common, evaluation, probing, run_all, train_worker


def test_row_ratio_and_format():
    assert common.Row("s", "m", 6.0, 2.0).ratio == 3.0
    assert common.Row("s", "m", "not run").ratio is None
    assert common.Row("s", "m", 1.0, None).ratio is None
    assert common.fmt(4.7e-6) == "4.7e-06"
    assert common.fmt(1234.5) == "1,234"
    assert common.fmt(None) == ""


def test_markdown_escapes_pipes():
    text = common.markdown([common.Row("probing", "max |Δp|", 1e-6, 1e-4)], {"quick": True}, ["PASS: x"])
    assert "max \\|Δp\\|" in text
    assert "not representative" in text


@pytest.mark.slow
def test_quick_run_on_tiny_model(tmp_path, tiny):
    rc = run_all.main(["--quick", "--model", "tiny-random", "--out", str(tmp_path),
                       "--only", "probing,cloze,explain,training,eval,flops,e2e", "--runs-root", str(tmp_path / "runs")])
    assert rc == 0
    with open(tmp_path / "bench.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    delta = next(r for r in rows if r["measure"].startswith("max |Δp|"))
    assert float(delta["value"]) <= probing.MAX_DELTA_P
    evals = [r for r in rows if r["section"].startswith("evaluation")]
    assert {r["section"] for r in evals} == {"evaluation (cloze, fine-tuned 0-shot)",
                                             "evaluation (letter, fine-tuned 0-shot)"}
    speed = next(r for r in evals if r["measure"].startswith("scored options/s"))
    assert float(speed["value"]) > 0 and float(speed["reference"]) > 0
    assert all(float(r["value"]) <= evaluation.MAX_EVAL_DELTA_P for r in evals if r["measure"].startswith("max |Δp|"))
    assert any(r["section"] == "end to end" and r["value"] == "not run" for r in rows)
    assert any(r["section"].startswith("training") for r in rows)
    assert "torch threads" in (tmp_path / "bench.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_train_worker_times_steps_after_the_first(tmp_path, tiny):
    import json

    _, tok = tiny
    examples = common.chat_examples(tok, common.fact_questions(4))
    ex_file = tmp_path / "examples.json"
    ex_file.write_text(json.dumps(examples), encoding="utf-8")
    out = train_worker.run({"model": "tiny-random", "examples_file": str(ex_file), "out_dir": str(tmp_path / "cell"),
                            "threads": 0, "config": {"method": "lora", "epochs": 1, "batch_size": 2,
                                                     "max_length": 160, "lora_r": 4, "lora_alpha": 8}})
    assert out["steps"] == 2 and out["timed_steps"] == 1 and out["warm_up_excluded"]
    assert out["tokens_per_s"] > 0 and out["peak_rss_mb"] > 0


@pytest.mark.slow
def test_harness_section_against_lm_eval(tmp_path):
    """Quick harness run on the tiny model: lm-eval scores the same token ids as ours, to fp32 noise."""
    pytest.importorskip("lm_eval")
    from benchmarks import harness

    rc = run_all.main(["--quick", "--model", "tiny-random", "--out", str(tmp_path), "--only", "harness"])
    assert rc == 0
    with open(tmp_path / "bench.csv", encoding="utf-8") as f:
        rows = {r["measure"]: r for r in csv.DictReader(f) if r["section"] == harness.LABEL}
    speed = rows["questions/s: ours vs lm-eval HFLM.loglikelihood"]
    assert float(speed["value"]) > 0 and float(speed["reference"]) > 0
    assert float(rows["max |Δ mean log-prob| per option: ours vs lm-eval"]["value"]) <= harness.MAX_HARNESS_DELTA
    assert float(rows["same choice: ours vs lm-eval (same normalisation)"]["value"]) == 1.0


@pytest.mark.slow
def test_harness_section_without_lm_eval_says_make_bench(tmp_path, monkeypatch):
    """Without lm_eval the harness section fails with the `make bench` hint and the other sections still run."""
    import sys

    for name in ("lm_eval", "lm_eval.api.instance", "lm_eval.models.huggingface"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    rc = run_all.main(["--quick", "--model", "tiny-random", "--out", str(tmp_path), "--only", "harness,e2e",
                       "--runs-root", str(tmp_path / "runs")])
    assert rc == 1
    text = (tmp_path / "bench.md").read_text(encoding="utf-8")
    assert "FAIL: harness section not run" in text and "make bench" in text
    assert "end to end" in text
