"""The runner's terminal: stage lines, kernel bars redrawn as one live line (or sparse lines off a terminal),
the cell log and kernel output in run.log only, and a compact verdict at the end."""

import io
import logging
import math
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from ift_utils import run
from ift_utils.progress import Console, KernelOutputFilter, bar_finished, parse_stream

BAR_40 = "scoring city_country:  40%|####      | 40/100 [00:12<00:18,  3.25it/s]"
BAR_50 = "scoring city_country:  50%|#####     | 50/100 [00:15<00:15,  3.25it/s]"
BAR_DONE = "scoring city_country: 100%|##########| 100/100 [00:30<00:00,  3.25it/s]"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_parse_stream_takes_what_a_terminal_would_show():
    plain, bars = parse_stream(f"\r{BAR_40}\r{BAR_50}")
    assert plain == [] and bars == [(BAR_50, False)]
    plain, bars = parse_stream(f"UserWarning: something\n\r{BAR_DONE}\n")
    assert plain == ["UserWarning: something"] and bars == [(BAR_DONE, True)]
    # no total: tqdm writes a count and the elapsed time; a newline after it means tqdm closed it
    assert parse_stream("\rexplanations: 40it [00:12,  3.25it/s]\n")[1] == [("explanations: 40it [00:12,  3.25it/s]",
                                                                            True)]
    assert parse_stream("a line with | pipes | but no bar\n") == (["a line with | pipes | but no bar"], [])
    assert bar_finished(BAR_DONE) and not bar_finished(BAR_50)
    assert bar_finished("s: 99%|#########9| 1.23k/1.23k [00:12<00:00, 100it/s]")


def test_off_a_terminal_bars_become_sparse_plain_lines():
    clock, out = Clock(), io.StringIO()
    con = Console(out, tty=False, every=30.0, clock=clock)
    shown = []
    for t, text in [(0, BAR_40), (10, BAR_50), (31, BAR_50), (40, BAR_50)]:
        clock.t = t
        shown.append(con.bar(text, finished=False))
    clock.t = 45
    shown.append(con.bar(BAR_DONE, finished=True))
    shown.append(con.bar(BAR_DONE.replace("3.25it/s", "3.3it/s"), finished=True))  # tqdm's close repeats it
    assert shown == [False, False, True, False, True, False]
    assert out.getvalue() == f"    {BAR_50}\n    {BAR_DONE}\n"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_on_a_terminal_one_live_line_is_redrawn_and_lines_print_above_it():
    out = io.StringIO()
    con = Console(out, tty=True, width=200)
    con.say("01_probe  running ...")
    con.stage("01_probe", 12)
    con.cell(3)
    con.bar(BAR_40, finished=False)
    con.bar(BAR_50, finished=False)
    con.say("a permanent line")
    text = out.getvalue()
    assert text.count("\n") == 2  # only the permanent lines end a line; bars are redrawn in place
    assert text.endswith(f"\r  01_probe cell 3/12  {BAR_50}\x1b[K")  # the bar comes back below the line
    assert "\r\x1b[Ka permanent line\n" in text  # the live line was cleared first
    con.bar(BAR_DONE, finished=True)
    assert out.getvalue().endswith("\r  01_probe cell 3/12\x1b[K")  # a finished bar leaves the live line
    con.stage("", 0)
    assert out.getvalue().endswith("\r\x1b[K")


def test_long_bars_are_cut_to_the_terminal_width():
    out = io.StringIO()
    Console(out, tty=True, width=40).bar(BAR_40, finished=False)
    assert len(out.getvalue().removeprefix("\r").removesuffix("\x1b[K")) == 39


def _papermill_logger(console):
    """A logger like papermill's, with the runner's filter, whose records land in a list (the run.log)."""
    logger = logging.getLogger(f"test-papermill-{id(console)}")
    logger.propagate, logger.level = False, logging.INFO
    kept = []
    handler = logging.Handler()
    handler.emit = kept.append
    logger.addHandler(handler)
    bar_log = logging.getLogger(f"test-bars-{id(console)}")
    bar_log.propagate, bar_log.level = False, logging.INFO
    bar_log.addHandler(handler)
    logger.addFilter(KernelOutputFilter(console, bar_log))
    return logger, kept


def test_filter_keeps_the_cell_log_for_run_log_and_takes_bars_out():
    out = io.StringIO()
    con = Console(out, tty=True, width=200)
    con.stage("02_interventions", 9)
    logger, kept = _papermill_logger(con)
    logger.info("Executing Cell 4---------------------------------------")
    assert out.getvalue().endswith("\r  02_interventions cell 4/9\x1b[K")
    logger.warning(f"\r{BAR_40}")  # papermill logs kernel stderr as warnings
    logger.warning(f"UserWarning: careful\n\r{BAR_50}")
    logger.warning(f"\r{BAR_DONE}")
    logger.warning("\n")  # tqdm closing the bar
    logger.info("printed\n")
    messages = [r.getMessage() for r in kept]
    assert messages == ["Executing Cell 4---------------------------------------", "UserWarning: careful", BAR_DONE,
                        "printed"]
    assert kept[2].shown  # the bar's last state is in the log, and was already on the console
    assert "UserWarning" not in out.getvalue() and "Executing Cell" not in out.getvalue()


def test_verdict_table_is_compact_plain_text():
    frame = pd.DataFrame({
        "claim": ["harmonious > incompatible", "consistency predicts post-IFT accuracy"],
        "test_set": ["HOMO", "pooled"], "ours": [3.14159, 0.4], "lo": [-1.5, math.nan], "hi": [7.25, math.nan],
        "n": [4, 40], "supported": [False, True],
        "reading": ["not supported (interval spans 0): +3.1 points [-1.5, 7.2] vs paper +11.27 (t interval over "
                    "4 (model, domain, seed) pairs)", "supported: r = 0.40"],
    })
    text = run.format_verdict(frame)
    lines = text.splitlines()
    assert lines[0].split() == ["claim", "test_set", "ours", "lo", "hi", "n", "supported"]
    assert "3.14" in lines[1] and "-1.50" in lines[1] and lines[1].rstrip().endswith("no")
    assert " - " in lines[2] and lines[2].rstrip().endswith("yes")
    assert "consistency predicts post-IFT accuracy" in lines[2]
    assert "interval spans 0" not in text and lines[-1] == "(longer text in column reading)"
    assert max(len(line) for line in lines) < 100
    long_claim = frame.assign(claim=["a claim that needs more than sixty characters to say what it claims"] * 2)
    assert run.format_verdict(long_claim).splitlines()[1].startswith("a claim that needs more than sixty ch...")


def test_what_a_stage_wrote_is_named_compactly():
    before = {"tables/a.csv": (1, 10), "probe/x.jsonl": (1, 5), "manifest.json": (1, 1)}
    after = {**before, "tables/a.csv": (2, 10), "tables/b.csv": (2, 3), "figures/f.png": (2, 9),
             "probe/x.jsonl": (2, 6), "probe/y.jsonl": (2, 6), "manifest.json": (2, 2), "run.log": (2, 9),
             "01_probe.ipynb": (2, 1), "01_probe.html": (2, 1), "stages/01_probe.json": (2, 1), "report.html": (2, 1)}
    assert run.describe_written(before, after, "01_probe") == \
        "tables a.csv, b.csv; figures f.png; report.html; probe/ 2 files"
    assert run.describe_written(before, before, "01_probe") == "no new files"


def test_why_a_stage_runs():
    inputs = {"notebook": "n", "code": "c", "params": "p", "prev": "x"}
    assert run.why_run({}, inputs, force=False) == "first run"
    assert run.why_run({"status": "done", "inputs": inputs}, inputs, force=True) == "--force"
    assert run.why_run({"status": "running"}, inputs, force=False) == "resuming: its last run did not finish"
    old = {**inputs, "params": "old", "code": "old"}
    assert run.why_run({"status": "done", "inputs": old}, inputs, force=False) == \
        "package code and parameters changed"
    assert run.why_run({"status": "done"}, inputs, force=False) == "its inputs changed"


def test_durations_read_like_a_person_would_say_them():
    assert [run.duration(s) for s in (12.34, 303, 3725)] == ["12.3 s", "5 min 03 s", "1 h 02 min"]


def test_child_process_output_goes_to_the_sink_not_the_terminal(capfd):
    lines = []
    with run.kernel_output_to(lines.append):
        subprocess.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], check=True)
    print("back on the terminal", file=sys.stderr)
    assert sorted(lines) == ["err", "out"]
    captured = capfd.readouterr()
    assert "back on the terminal" in captured.err and "err" not in captured.err.replace("back on the terminal", "")
    assert "out" not in captured.out


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('params_file = ""\noverrides = {}\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_a_run_shows_stages_and_bars_and_logs_the_rest(tmp_path, monkeypatch, capfd):
    """Two tiny notebooks: the first prints, shows a bar and writes a table; the second fails. The terminal
    gets the stage lines, the bar and the failure (with the log's path); run.log gets the cell log and prints."""
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "01_tiny.ipynb",
              "from pathlib import Path\nfrom ift_utils.progress import progress\n"
              "for _ in progress(range(3), desc='tiny'):\n    pass\nprint('hello from the kernel')\n"
              "Path(run_dir, 'tables').mkdir(exist_ok=True)\nPath(run_dir, 'tables', 't.csv').write_text('a\\n1\\n')")
    _notebook(books / "02_broken.ipynb", "raise ValueError('on purpose')")
    monkeypatch.setattr(run, "NOTEBOOKS", books)
    params = tmp_path / "mine.yaml"
    params.write_text("run_name: tiny\n")
    rc = run.main([str(params), "-p", f"output_root={tmp_path / 'out'}"])
    err = capfd.readouterr().err
    assert rc == 1
    lines = err.splitlines()
    assert any(line.startswith("01_tiny    running (first run)") for line in lines), err
    assert any(line.startswith("01_tiny    done in") and line.endswith("wrote tables t.csv") for line in lines), err
    assert any(line.strip().startswith("tiny: 100%|") for line in lines), err  # off a terminal: the last state
    assert "error: stage 02_broken failed in cell" in err and "ValueError: on purpose" in err
    log_file = tmp_path / "out" / "tiny" / "run.log"
    assert f"the log: {log_file}" in err
    for noise in ("Executing Cell", "papermill", "hello from the kernel", "Kernel is running over TCP"):
        assert noise not in err, noise
    logged = log_file.read_text()
    assert "Executing Cell 2" in logged and "hello from the kernel" in logged and "tiny: 100%|" in logged
    assert "ValueError" in logged

    rc = run.main([str(params), "-p", f"output_root={tmp_path / 'out'}", "--stages", "01", "-v"])
    err = capfd.readouterr().err
    assert rc == 0 and "01_tiny    up to date (skipped)" in err
    assert "no report yet" in err
