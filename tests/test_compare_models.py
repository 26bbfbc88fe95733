"""The model comparison (benchmarks/compare_models.py): its analysis on hand-made frames, the chunked-GGUF
fallback, and a --quick run on the tiny model."""

import csv
import math

import pandas as pd
import pytest

from benchmarks import compare_models as cm


def _frame(domain: str, n: int) -> pd.DataFrame:
    """n training questions with popularity 0..n-1, right iff in the top 40 %; the wrong ones alternate
    between confident (0.9) and unsure (0.3); plus 10 HOMO questions, 7 right."""
    rows = [{"probe_domain": domain, "split": "train", "popularity": float(i), "correct": i >= 0.6 * n,
             "confidence": 0.9 if (i >= 0.6 * n or i % 2 == 0) else 0.3} for i in range(n)]
    rows += [{"probe_domain": domain, "split": "HOMO", "popularity": 1.0, "correct": i < 7, "confidence": 0.6}
             for i in range(10)]
    return pd.DataFrame(rows)


def test_knowledge_gradient_pool_and_homo():
    k = cm.knowledge(pd.concat([_frame("a", 50), _frame("b", 100)]), threshold=0.5).set_index("domain")
    assert list(k.index) == ["a", "b"]
    a = k.loc["a"]
    assert (a["train accuracy Q1"], a["train accuracy Q3"], a["train accuracy Q4"], a["train accuracy Q5"]) == (
        0, 0, 100, 100)
    assert a["Q5 - Q1"] == 100 and a["train accuracy"] == 40
    assert a["confidently wrong"] == 15 and a["confidently right"] == 20  # even popularities 0..28 are confident
    assert a["confidently wrong per 400"] == 120
    assert a["HOMO accuracy"] == 70 and a["n_homo"] == 10
    assert k.loc["b", "confidently wrong"] == 30
    assert math.isnan(a["logit slope"]) and "logit failed" in a["slope note"]  # perfectly separated


def test_knowledge_slope_is_positive_for_a_noisy_gradient():
    rows = [{"probe_domain": "d", "split": "train", "popularity": p / 10, "correct": (p * 7) % 10 < p / 10,
             "confidence": 0.7} for p in range(100)]
    k = cm.knowledge(pd.DataFrame(rows), threshold=0.5).iloc[0]
    assert k["logit slope"] > 0 and k["slope p"] < 0.05


def test_projection_scales_training_and_forward_stages_separately():
    stages = {"01_probe": 60.0, "02_interventions": 60.0, "03_training": 600.0, "04_evaluation": 120.0,
              "05_regression": 60.0}
    assert cm.projected_minutes(stages, 1.0, 1.0) == pytest.approx(15.0)
    assert cm.projected_minutes(stages, 1.0, 2.0) == pytest.approx(25.0)  # only stage 03 doubles
    assert cm.projected_minutes(stages, 2.0, 1.0) == pytest.approx(19.0)  # 01, 02, 04 double; 05 does not


def test_reference_stages_prefers_a_complete_manifest(tmp_path):
    assert cm.reference_stages(tmp_path)[0] == cm.REFERENCE_STAGES
    (tmp_path / "default").mkdir()
    stages = {k: {"seconds": 2 * v, "status": "done"} for k, v in cm.REFERENCE_STAGES.items()}
    (tmp_path / "default" / "manifest.json").write_text(pd.Series({"stages": stages}).to_json(), encoding="utf-8")
    got, source = cm.reference_stages(tmp_path)
    assert got == {k: 2 * v for k, v in cm.REFERENCE_STAGES.items()} and "manifest.json" in source


def test_default_training_steps_follow_the_params():
    from ift_utils.config import PROJECT_ROOT, load_params
    from ift_utils.stages.grid import grid

    P = load_params(PROJECT_ROOT / "params" / "default.yaml", {"max_per_group": 20, "batch_size": 8, "epochs": 2})
    cells, per_cell = cm.default_training_steps(P)
    assert cells == len(grid(P))
    assert per_cell == math.ceil(20 * (1 + P.general_ratio) / 8) * 2


def test_markdown_has_one_column_per_model():
    table = pd.DataFrame([
        {"model": "m1", "section": "cost", "measure": "x", "value": 0.0, "unit": "s", "note": "n|b"},
        {"model": "m2", "section": "cost", "measure": "x", "value": 2.5, "unit": "s", "note": "n|b"}])
    text = cm.markdown(table, {"quick": True, "date": "today"})
    assert "| Section | Measure | m1 | m2 | Unit |" in text
    assert "| cost | x | 0 | 2.5 | s |" in text
    assert "- x: n|b" in text and "not representative" in text


@pytest.mark.slow
def test_quick_run_on_tiny_model(tmp_path, tiny):
    """The comparison script end to end in --quick mode. ≈ 15 s: probing and training are measured in fresh
    worker processes (each imports torch and transformers), as in a real comparison; the tiny model's compute is
    negligible."""
    assert cm.main(["--quick", "--models", "tiny-random", "--out", str(tmp_path), "--runs-root", str(tmp_path)]) == 0
    with open(tmp_path / "compare_models.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by = {(r["section"], r["measure"]): r["value"] for r in rows}
    assert {r["model"] for r in rows} == {"tiny-random"}
    for d in ("city_country", "us_city_state"):
        assert by[(f"knowledge {d}", "n_train")] == "8"
        assert 0 <= int(by[(f"knowledge {d}", "confidently wrong")]) <= 8
    assert float(by[("cost", "probing seconds per question, fastest chunk")]) > 0
    assert float(by[("cost", "LoRA CPU seconds per step ÷ threads")]) > 0
    assert float(by[("cost", "probing cost vs tiny-random (fastest chunks)")]) == 1
    assert float(by[("machine", "torch fp32 matmul 1024³ (fastest repetition)")]) > 0
    assert "| Section | Measure | tiny-random | Unit |" in (tmp_path / "compare_models.md").read_text(encoding="utf-8")
