"""The sentences notebooks print after their outputs: computed from the frames shown, robust to missing columns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from ift_utils import narration


def test_duration():
    assert narration.duration(12.3) == "12 s"
    assert narration.duration(754) == "12 min 34 s"
    assert narration.duration(4000) == "1 h 6 min 40 s"


def test_stage_times_reads_the_manifest(tmp_path):
    assert "outside the runner" in narration.stage_times(tmp_path, "03_training")
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {
        "01_probe": {"status": "done", "seconds": 134.0}, "02_interventions": {"status": "done", "seconds": 9.2},
        "03_training": {"status": "running", "start": "2026-12-06T22:00:00"}}}))
    text = narration.stage_times(tmp_path, "03_training")
    assert "01_probe 2 min 14 s" in text and "02_interventions 9 s" in text
    assert "running now (started 2026-12-06T22:00:00)" in text
    assert "took 2 min 14 s when it last finished" in narration.stage_times(tmp_path, "01_probe")
    assert "no recorded time" in narration.stage_times(tmp_path, "05_analysis")
    (tmp_path / "manifest.json").write_text("{broken")
    assert "unreadable" in narration.stage_times(tmp_path, "01_probe")


def test_fit_reading():
    curve = pd.DataFrame({"group": ["harmonious"] * 1 + ["incompatible"] * 3, "epoch": [1, 1, 2, 3],
                          "fit": [0.95, 0.3, 0.7, 0.92], "dev_acc": [0.5, 0.45, 0.5, 0.4]})
    text = narration.fit_reading(curve, 0.9)
    assert "harmonious reached 0.9 at epoch 1" in text
    assert "incompatible reached 0.9 at epoch 3 (fit 0.92 after 3 epoch(s), held-out accuracy best at epoch 2)" in text
    assert "stayed below 0.95" in narration.fit_reading(curve, 0.95)
    assert "nothing to read" in narration.fit_reading(pd.DataFrame(), 0.9)


def test_leak_reading():
    clean = pd.DataFrame({"n": [48, 48], "leaking": [0, 0], "leaking_fact": [0, 0], "leaking_template": [0, 0],
                          "leaking_fact_template": [0, 0]})
    assert "0 explanation(s)" in narration.leak_reading(clean) and "none, as it should be" in narration.leak_reading(clean)
    model = clean.assign(leaking=[2, 0])
    assert "model-written" in narration.leak_reading(model)
    assert "should have stopped" in narration.leak_reading(model.assign(leaking_template=[1, 0]))
    assert "nothing to read" in narration.leak_reading(pd.DataFrame({"n": [1]}))


def test_regression_reading_gives_a_slope_per_test_set():
    rng = np.random.default_rng(0)
    rows = []
    for ts, slope in (("HOMO", 0.004), ("ID", 0.001), ("OOD", -0.002)):
        x = rng.uniform(20, 80, 30)
        rows += [{"test_set": ts, "consistency": xi, "ft_acc": 0.3 + slope * xi} for xi in x]
    reg = smf.ols("ft_acc ~ consistency * C(test_set)", data=pd.DataFrame(rows)).fit()
    text = narration.regression_reading(reg)
    assert "HOMO +4.0" in text and "ID +1.0" in text and "OOD -2.0" in text


def test_consistency_dose_claim4_and_power_readings():
    cons = pd.DataFrame({"group": ["no_ift", "no_ift", "general_only", "harmonious"],
                         "test_set": ["HOMO", "ID", "HOMO", "HOMO"], "rank_corr": [0.6, 0.4, 0.45, 0.3]})
    text = narration.consistency_reading(cons)
    assert "no_ift 0.50" in text and "general_only 0.45" in text and "harmonious 0.30" in text
    dose = pd.DataFrame({"test_set": ["HOMO", "HOMO"], "term": ["known_fit", "unknown_fit"],
                         "reading": ["+2.1 points per 100 % fitted", "+4.1 points per 100 % fitted"]})
    assert "known_fit: +2.1" in narration.dose_reading(dose)
    c4 = pd.DataFrame({"test_set": ["HOMO"], "r": [0.9], "lo": [0.45], "hi": [0.99], "p": [0.012], "n": [12]})
    assert "HOMO r 0.90 [0.45, 0.99] (p 0.012, n 12)" in narration.claim4_reading(c4)
    few = c4.assign(r=np.nan, lo=np.nan, hi=np.nan, p=np.nan, n=2)
    assert "HOMO not testable (2 ratio cells" in narration.claim4_reading(few)
    plan = pd.DataFrame({"claim": ["H", "H"], "test_set": ["HOMO", "ID"], "mde_this_design": [11.8, 9.0]})
    assert "detects 11.8 points" in narration.power_reading(plan, "H", paper=11.27)
    assert "too small" in narration.power_reading(plan, "H", paper=11.27)
    assert "could detect" in narration.power_reading(plan, "H", test_set="ID", paper=11.27)
    assert "no MDE" in narration.power_reading(plan.assign(mde_this_design=np.nan), "H")


def test_power_designs_calls_the_predictor_per_design():
    seen = []

    def predict(comp, k, r, q, cluster_share=None):
        seen.append((k, r, q, cluster_share))
        return 100.0 / (k * r * q) ** 0.5

    out = narration.power_designs({"var_replicate": 0.0, "cluster_share": 0.05}, [[2, 4, 100], (3, 8, 200)], predict)
    assert seen == [(2, 4, 100, 0.05), (3, 8, 200, 0.05)]  # the run's answer unevenness is carried to every design
    assert list(out.columns) == ["domains", "replicates", "questions", "mde"]
    assert out["mde"].iloc[0] == 100.0 / 800 ** 0.5


def test_notebooks_are_stored_bare_with_literal_parameters_and_no_time_estimates():
    """Stored without outputs, every cell with an id, a `parameters` cell of literals, and no hard-coded time
    estimate in the narrative (times come from the manifest)."""
    import ast
    import re
    from pathlib import Path

    import nbformat

    books = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(books) == 5
    for path in books:
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert all("id" in c for c in raw["cells"]), path.name
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, path.name
        for node in ast.parse(params[0].source).body:
            assert isinstance(node, ast.Assign), (path.name, ast.dump(node))
            ast.literal_eval(node.value)  # literals only: papermill replaces them
        prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert not re.search(r"\b\d+(\s*[-–]\s*\d+)?\s*(minutes?|min|seconds?|hours?)\b", prose), path.name
        assert "narration.stage_times(paths.root" in "\n".join(c.source for c in code), path.name


def test_paper_test_reading_counts_readings_and_quotes_the_primary():
    h, s = "harmonious > incompatible", "self-aligning > incompatible"
    vs = pd.DataFrame({"claim": [h, h, s],
                       "test_set": ["HOMO", "ID", "HOMO"],
                       "reading_vs_paper": ["smaller than the paper's: +1.0 [-2.0, 4.0] ...",
                                            "inconclusive: -1.0 [-9.0, 12.0] ...",
                                            "smaller than the paper's: 0.5 [-1.0, 2.0] ..."]})
    text = narration.paper_test_reading(vs, h)
    assert text.startswith("Primary (harmonious > incompatible on HOMO): smaller than the paper's: +1.0 [-2.0, 4.0]")
    assert "3 claim rows read: 2 smaller than the paper's, 1 inconclusive." in text
    assert "nothing to read" in narration.paper_test_reading(pd.DataFrame(), h)
