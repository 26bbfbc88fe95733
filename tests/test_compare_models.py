"""The model comparison (benchmarks/compare_models.py): its analysis on hand-made frames, the chunked-GGUF
fallback, and a --quick run on the tiny model."""

import csv
import math
import sys

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
    from ift_utils.study import grid

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


@pytest.fixture
def fake_chunked(tmp_path, monkeypatch):
    """A registry entry whose package ships its GGUF in chunks with an `assemble` function (bytes given)."""
    from ift_utils import models

    pkg = tmp_path / "pkgs" / "fake_chunked_gguf"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "def assemble(output_path=None, overwrite=False):\n"
        "    Path(output_path).write_bytes(b'not a gguf')\n"
        "    return Path(output_path)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setitem(models.REGISTRY, "fake-chunked", models.PackagedModel(
        ("fake-chunked-gguf",), ".gguf", "0" * 64, base=True))
    monkeypatch.setenv("IFT_CACHE", str(tmp_path / "cache"))
    yield "fake-chunked"
    sys.modules.pop("fake_chunked_gguf", None)


def test_model_path_assembles_chunks_and_checks_their_sha256(fake_chunked, tmp_path):
    from ift_utils.models import ModelError

    assert cm._chunk_assembler(fake_chunked) is not None
    with pytest.raises(ModelError, match="sha256"):
        cm.model_path(fake_chunked)
    assert not (tmp_path / "cache" / "assembled" / fake_chunked / "DONE").exists()


def test_model_path_reraises_without_an_assembler(tmp_path, monkeypatch):
    from ift_utils import models

    monkeypatch.setitem(models.REGISTRY, "no-such", models.PackagedModel(("no-such-pkg-xyz",), ".gguf", "0" * 64,
                                                                         base=True))
    monkeypatch.setenv("IFT_CACHE", str(tmp_path))
    with pytest.raises(models.ModelError, match="not installed"):
        cm.model_path("no-such")


@pytest.mark.slow
def test_quick_run_on_tiny_model(tmp_path, tiny):
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
