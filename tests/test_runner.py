"""End to end: the runner executes the smoke study through every notebook, writes a complete manifest and
report, and a second run skips every unchanged stage. A failing stage names its cell and resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import FAULTS, guarded_env, run_study

from ift_utils.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_every_stage_ran_and_manifest_is_complete(smoke):
    run_dir, *_ = smoke
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
    run_dir, *_ = smoke
    table = pd.read_csv(run_dir / "tables" / "eval_table.csv")
    assert set(table["test_set"]) == {"HOMO", "ID", "OOD", "XD"}  # XD: cross-domain; OOD: another relation
    assert table["ft_acc"].between(0, 1).all() and (table["kl"] >= 0).all()
    assert set(table["group"]) == {"incompatible", "mixture", "self_aligning", "harmonious", "contextualized",
                                   "no_ift", "general_only"}
    no_ift = table[table["group"] == "no_ift"]
    assert (no_ift["seed"] == -1).all() and len(no_ift) == 2 * 4  # one per domain and test set, nothing trained
    assert {"kl_no_ift", "rank_corr_no_ift", "early_stop", "final"} <= set(table.columns)
    early_only = table[table["early_stop"] & ~table["final"]]  # smoke.yaml: early_stop_sets [HOMO]
    assert len(early_only) and set(early_only["test_set"]) == {"HOMO"}
    answers = pd.read_csv(run_dir / "tables" / "answers.csv")
    assert len(answers) == table["n"].sum() and set(answers["correct"]) <= {0, 1}
    assert set(answers["correct_cal"]) <= {0, 1} and answers["qkey"].notna().all()
    # an entity asked in HOMO and ID is one question cluster for the verdict
    assert answers.groupby("qkey")["test_set"].nunique().max() > 1
    fit = pd.read_csv(run_dir / "tables" / "train_fit.csv")
    assert {"fit", "gold", "own"} <= set(fit.columns) and fit["fit"].between(0, 1).all()
    assert "general_only" not in set(fit["group"])  # no domain facts to fit
    baseline = pd.read_csv(run_dir / "tables" / "fit_baseline.csv")
    assert {"fit", "fit_no_ift", "fit_general_only"} <= set(baseline.columns) and baseline["fit_no_ift"].notna().all()
    curve = pd.read_csv(run_dir / "tables" / "fit_curve_shard0.csv")
    assert {"epoch", "fit", "dev_acc"} <= set(curve.columns) and curve["epoch"].max() <= 2
    verdict = pd.read_csv(run_dir / "tables" / "verdict.csv")
    assert {"claim", "ours", "lo", "hi", "mde", "paper", "supported"} <= set(verdict.columns)
    assert "general_only − no_ift" in set(verdict["claim"])
    assert {"p_adj", "decision", "reading"} <= set(verdict.columns)
    for extra in ("verdict_calibrated", "verdict_checkpoints", "group_answers", "accuracy_by_trained_answer"):
        assert (run_dir / "tables" / f"{extra}.csv").exists(), extra
    for fig in ("probe_popularity", "probe_calibration", "training_loss", "accuracy_vs_ratio",
                "consistency_vs_accuracy", "group_comparison"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    html = (run_dir / "report.html").read_text()
    assert "Verdict" in html and "figures/accuracy_vs_ratio.png" in html


def test_terminal_shows_stages_report_and_verdict_and_nothing_of_the_kernel(smoke):
    run_dir, r, _ = smoke
    assert r.stderr.count(" running (first run) ...") == 5 and r.stderr.count(" done in ") == 5
    assert f"report: {run_dir / 'report.html'}" in r.stderr
    verdict = r.stderr.split("verdict (", 1)[1]
    assert "claim" in verdict and "harmonious > incompatible" in verdict
    for noise in ("Kernel is running over TCP", "papermill", "Executing Cell"):
        assert noise not in r.stderr, noise
    assert "Kernel is running over TCP" in (run_dir / "run.log").read_text()


def test_second_run_skips_everything(smoke):
    run_dir, *_ = smoke
    r = run_study("params/smoke.yaml", "-p", f"output_root={run_dir.parent}", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("up to date (skipped)") == 5


def test_failed_stage_names_its_cell_and_keeps_the_others(finished_copy, tmp_path):
    """Stage 05 cannot run (the eval table it reads is gone): the runner names the stage, the cell and the error,
    saves the failed notebook, and keeps 01-04 done. (That the next run resumes and removes the failed notebook is
    checked after a full disk, below.)"""
    (finished_copy / "tables" / "eval_table.csv").unlink()
    r = run_study("params/smoke.yaml", "-p", f"output_root={tmp_path}", "--stages", "05", "--force", "--quiet")
    assert r.returncode == 1
    assert "stage 05_analysis failed in cell" in r.stderr and "FileNotFoundError" in r.stderr
    assert (finished_copy / "05_analysis.failed.ipynb").exists()
    m = json.loads((finished_copy / "manifest.json").read_text())
    assert m["stages"]["05_analysis"]["status"] == "failed"
    assert m["stages"]["04_evaluation"]["status"] == "done"


def _hashes(folder, names=("*.jsonl",)):
    """sha256 of every file under `folder` whose name matches one of `names` (caches left out)."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for pattern in names for p in sorted(folder.rglob(pattern)) if "cache" not in p.name}


def test_same_seed_same_data_other_seed_differs():
    """Stage 01's questions are a function of the seed: the same seed gives the same files' content, another seed
    other questions. (That a whole resumed run reproduces every probe, group and table byte for byte is checked by
    the kill-and-resume test below, on the shared smoke run, so this test runs no study of its own.)"""
    from ift_utils.config import load_params
    from ift_utils.data_sources import load_study_data

    def questions(seed: int) -> list[dict]:
        P = load_params(PROJECT_ROOT / "params" / "smoke.yaml", {"data_seed": seed})
        return [q.to_json() for dd in load_study_data(P).values() for q in dd.all_questions()]

    assert questions(0) == questions(0)
    assert questions(0) != questions(1)


def test_smoke_run_opened_no_outside_connection(smoke, tmp_path):
    """The smoke study ran with HF_*_OFFLINE unset and every outside connection refused and logged: none was
    tried. The guard itself is checked on a process that does try."""
    _, _, netlog = smoke
    assert not netlog.exists() or netlog.read_text() == "", netlog.read_text()
    probe_log = tmp_path / "attempts.log"
    r = subprocess.run([sys.executable, "-c", "import urllib.request; urllib.request.urlopen('http://example.org')"],
                       env=guarded_env(probe_log), capture_output=True, text=True)
    assert r.returncode != 0 and "getaddrinfo example.org" in probe_log.read_text()


def _start(output_root):
    cmd = [sys.executable, "-m", "ift_utils.run", "params/smoke.yaml", "-p", f"output_root={output_root}", "--quiet"]
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill_when(proc, ready, timeout=600):
    """SIGKILL the runner and its kernel (the whole process group) as soon as `ready()` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_probing_explanations_and_training_then_resume_gives_identical_tables(smoke, tmp_path):
    """Kill the runner (SIGKILL, whole process group) while it probes the second domain, again while it
    generates explanations, again in the middle of a training cell (after an epoch's checkpoint) once a cell
    finished; a fourth run finishes training, and its probes, groups, losses, fit logs and adapter weights equal
    the uninterrupted run's byte for byte. A killed stage is never taken for finished.

    Kept short (it ran 7 minutes): the cells no killed run started are copied from the uninterrupted run (training
    them again checks only determinism, which the cells trained here check too), and the resume stops after stage
    03 (stages 04-05 are pure functions of the adapters' bytes compared here)."""
    run_dir, *_ = smoke
    killed = tmp_path / "smoke"

    def status():
        return {k: v["status"] for k, v in json.loads((killed / "manifest.json").read_text())["stages"].items()}

    _kill_when(_start(tmp_path), lambda: (killed / "probe" / "city_country.jsonl").exists())
    assert status() == {"01_probe": "running"}
    assert not (killed / "probe" / "us_city_state.jsonl").exists()

    caches = lambda: [p for p in (killed / "groups").rglob("explanations.cache.jsonl") if p.stat().st_size]  # noqa: E731
    _kill_when(_start(tmp_path), lambda: bool(caches()))
    assert status() == {"01_probe": "done", "02_interventions": "running"}

    def mid_cell() -> list:  # cells killed after an epoch's checkpoint, before their DONE marker
        return [c for c in (killed / "train").glob("*/*/seed*") if not (c / "DONE").exists()
                and list((c / "checkpoints").glob("step-*"))]

    _kill_when(_start(tmp_path), lambda: bool(list((killed / "train").rglob("DONE"))) and bool(mid_cell()))
    assert status() == {"01_probe": "done", "02_interventions": "done", "03_training": "running"}
    for stage in ("02_interventions", "03_training"):
        assert (killed / f"{stage}.ipynb").exists() == (stage == "02_interventions")
    resumed = mid_cell()
    # cells the killed runs never started would only repeat what the uninterrupted run did: take its files
    started = {c.relative_to(killed) for c in (killed / "train").glob("*/*/seed*")}
    for cell in (run_dir / "train").glob("*/*/seed*"):
        if cell.relative_to(run_dir) not in started:
            shutil.copytree(cell, killed / cell.relative_to(run_dir))

    r = run_study("params/smoke.yaml", "-p", f"output_root={tmp_path}", "--stages", "01,02,03", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("up to date (skipped)") == 2  # 01 and 02 were finished before the last kill
    assert status() == {"01_probe": "done", "02_interventions": "done", "03_training": "done"}
    for part in ("probe", "groups"):
        assert _hashes(run_dir / part) == _hashes(killed / part), part
    trained = _hashes(run_dir / "train", ("adapter_model.safetensors", "loss.csv", "fit_log.json"))
    assert trained and _hashes(killed / "train", ("adapter_model.safetensors", "loss.csv", "fit_log.json")) == trained
    assert sum(name.endswith(".safetensors") for name in trained) >= 12  # every cell's final weights, and more
    assert all((c / "DONE").exists() and not list((c / "checkpoints").glob("step-*")) for c in resumed)
    probe_table = ("tables", "probe_accuracy.csv")
    assert killed.joinpath(*probe_table).read_bytes() == run_dir.joinpath(*probe_table).read_bytes()


@pytest.mark.parametrize("fault, cause", [("disk_full", "out of disk space"),
                                          ("oom", "out-of-memory killer")])
def test_out_of_disk_or_memory_keeps_finished_stages_and_says_how_to_resume(finished_copy, tmp_path, fault, cause):
    """Stage 05 runs into a full disk (every write under the run folder fails with ENOSPC) or is killed as by
    the out-of-memory killer; the runner names the stage and the cause, keeps 01-04 and every table, and after a
    full disk the next run resumes (after SIGKILL, the kill-and-resume test resumes)."""
    ipython = tmp_path / "ipython" / "profile_default" / "startup"
    ipython.mkdir(parents=True)
    shutil.copy(FAULTS / f"{fault}.py", ipython / f"00_{fault}.py")
    before = {p: p.read_bytes() for p in (finished_copy / "tables").iterdir()}
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython"), "IFT_FAULT_DIR": str(finished_copy)}
    args = ("params/smoke.yaml", "-p", f"output_root={tmp_path}", "--stages", "05", "--force", "--quiet")
    r = run_study(*args, env=env)
    assert r.returncode == 1
    assert "stage 05_analysis failed in cell" in r.stderr and "likely cause:" in r.stderr, r.stderr[-2000:]
    assert cause in r.stderr
    assert "run the same command again to resume" in r.stderr
    m = json.loads((finished_copy / "manifest.json").read_text())
    assert m["stages"]["05_analysis"]["status"] == "failed" and cause in m["stages"]["05_analysis"]["cause"]
    assert all(m["stages"][s]["status"] == "done" for s in ("01_probe", "02_interventions", "03_training",
                                                            "04_evaluation"))
    assert {p: p.read_bytes() for p in (finished_copy / "tables").iterdir()} == before  # nothing lost or torn
    assert not list(finished_copy.rglob("*.tmp"))
    if fault == "oom":
        return  # a SIGKILLed stage resumes as in the kill-and-resume test; a full disk may leave other debris
    assert (finished_copy / "05_analysis.failed.ipynb").exists()
    r = run_study(*args[:3], "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("up to date (skipped)") == 4
    assert not (finished_copy / "05_analysis.failed.ipynb").exists()


def test_a_live_lock_stops_a_second_run_and_a_dead_holder_does_not(finished_copy, tmp_path):
    from filelock import FileLock

    args = ("params/smoke.yaml", "-p", f"output_root={tmp_path}", "--quiet")
    with FileLock(str(finished_copy / ".lock")):
        r = run_study(*args)
    assert r.returncode == 3 and "another run is writing" in r.stderr
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"FileLock({str(finished_copy / '.lock')!r}).acquire(); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    r = run_study(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("up to date (skipped)") == 5
