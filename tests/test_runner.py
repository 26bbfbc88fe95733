"""End to end: the runner executes the smoke study through every notebook, writes a complete manifest and
report, and a second run skips every unchanged stage. A failing stage names its cell and resumes."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from ift_utils.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def run(*args, cwd=PROJECT_ROOT):
    return subprocess.run([sys.executable, "-m", "ift_utils.run", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = run("params/smoke.yaml", "-p", f"output_root={root}", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "smoke", r


def test_every_stage_ran_and_manifest_is_complete(smoke):
    run_dir, _ = smoke
    m = json.loads((run_dir / "manifest.json").read_text())
    stages = [p.stem for p in sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    assert list(m["stages"]) == stages
    for s in stages:
        rec = m["stages"][s]
        assert rec["status"] == "done" and rec["seconds"] > 0 and rec["start"] and rec["end"]
        assert (run_dir / f"{s}.ipynb").exists() and (run_dir / f"{s}.html").exists()
    assert m["params"]["run_name"] == "smoke"
    assert m["versions"]["torch"].startswith("2.13")
    assert m["git_commit"]
    probe = m["stages"]["01_probe"]["summary"]
    assert probe["model"]["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert all(r["read"] >= r["kept"] for r in probe["rows"].values())


def test_tables_figures_and_report(smoke):
    run_dir, _ = smoke
    table = pd.read_csv(run_dir / "tables" / "eval_table.csv")
    assert set(table["test_set"]) == {"HOMO", "ID", "OOD"}
    assert table["ft_acc"].between(0, 1).all() and (table["kl"] >= 0).all()
    assert set(table["group"]) == {"incompatible", "mixture", "self_aligning", "harmonious", "contextualized"}
    verdict = pd.read_csv(run_dir / "tables" / "verdict.csv")
    assert {"claim", "ours", "lo", "hi", "paper", "supported"} <= set(verdict.columns)
    for fig in ("probe_popularity", "probe_calibration", "training_loss", "accuracy_vs_ratio",
                "consistency_vs_accuracy", "group_comparison"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    html = (run_dir / "report.html").read_text()
    assert "Verdict" in html and "figures/accuracy_vs_ratio.png" in html


def test_second_run_skips_everything(smoke):
    run_dir, _ = smoke
    r = run("params/smoke.yaml", "-p", f"output_root={run_dir.parent}", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("up to date (skipped)") == 5


def test_failed_stage_names_cell_and_resumes(smoke, tmp_path):
    run_dir, _ = smoke
    # an analysis that cannot run: stage 05 reads eval_table.csv; hide it
    table = run_dir / "tables" / "eval_table.csv"
    saved = table.read_bytes()
    table.unlink()
    r = run("params/smoke.yaml", "-p", f"output_root={run_dir.parent}", "--stages", "05", "--force", "--quiet")
    assert r.returncode == 1
    assert "stage 05_analysis failed in cell" in r.stderr and "FileNotFoundError" in r.stderr
    assert (run_dir / "05_analysis.failed.ipynb").exists()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["stages"]["05_analysis"]["status"] == "failed"
    assert m["stages"]["04_evaluation"]["status"] == "done"
    table.write_bytes(saved)
    r = run("params/smoke.yaml", "-p", f"output_root={run_dir.parent}", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("up to date (skipped)") == 4
    assert not (run_dir / "05_analysis.failed.ipynb").exists()


def _hashes(folder):
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.jsonl")) if "cache" not in p.name}


def test_same_seed_same_bytes_other_seed_differs(smoke, tmp_path):
    run_dir, _ = smoke
    r = run("params/smoke.yaml", "-p", f"output_root={tmp_path}", "--stages", "01,02", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    again = tmp_path / "smoke"
    for part in ("data", "probe", "groups"):
        assert _hashes(run_dir / part) == _hashes(again / part), part
    r = run("params/smoke.yaml", "-p", f"output_root={tmp_path}", "-p", "run_name=other", "-p", "data_seed=1",
            "--stages", "01", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _hashes(run_dir / "data") != _hashes(tmp_path / "other" / "data")


def test_sigkill_during_training_then_resume_gives_identical_tables(smoke, tmp_path):
    """Kill the runner (SIGKILL, whole process group) once a training cell has finished, run again:
    the run completes and its final tables equal the uninterrupted run's byte for byte."""
    import os
    import signal
    import time

    run_dir, _ = smoke
    cmd = [sys.executable, "-m", "ift_utils.run", "params/smoke.yaml", "-p", f"output_root={tmp_path}", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed_run = tmp_path / "smoke"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed_run / "train").rglob("DONE"))) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    m = json.loads((killed_run / "manifest.json").read_text())
    assert m["stages"]["03_training"]["status"] == "running"
    assert not (killed_run / "03_training.ipynb").exists()  # never taken for a finished stage
    r = run("params/smoke.yaml", "-p", f"output_root={tmp_path}", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("up to date (skipped)") == 2  # 01 and 02 were finished before the kill
    for table in ("eval_table.csv", "verdict.csv", "probe_accuracy.csv"):
        assert (killed_run / "tables" / table).read_bytes() == (run_dir / "tables" / table).read_bytes(), table
