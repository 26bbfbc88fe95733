"""Progress bars: made inside notebook kernels (`progress`), and redrawn on the runner's terminal (`Console`).

In JupyterLab `progress` gives widget bars. The runner sets IFT_HEADLESS=1 for papermill runs, where widget
bars would only show "0%" in the saved notebook; there a plain tqdm bar goes to the kernel's stderr at most
every IFT_PROGRESS_INTERVAL seconds (default 15). Papermill hands that stderr to the runner as log records;
`KernelOutputFilter` picks the bar states out of them and `Console` shows them as one live line on a terminal,
or as an occasional plain line where stderr is not a terminal (CI logs), while the rest goes to run.log.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_INTERVAL = 15.0
# A tqdm bar as `format_meter` writes it: "desc:  40%|####      | 40/100 [00:12<00:18, ...]" or, without a
# total, "desc: 40it [00:12, 3.25it/s]".
BAR = re.compile(r"\d+%\||\[(?:\d+:)?\d+:\d\d[<,\]]")
_PERCENT = re.compile(r"(\d+)%\|")
_COUNT = re.compile(r"\|\s*(\S+)/(\S+) \[")
_CELL = re.compile(r"Executing Cell (\d+)-")


def _interval() -> float:
    text = os.environ.get("IFT_PROGRESS_INTERVAL", "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(f"IFT_PROGRESS_INTERVAL must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"IFT_PROGRESS_INTERVAL must be > 0 seconds, got {text!r}")
    return value


def progress(iterable: Any = None, **kwargs: Any):
    """A tqdm bar: `tqdm.auto` interactively, a plain stderr bar (IFT_PROGRESS_INTERVAL apart) when headless."""
    if os.environ.get("IFT_HEADLESS"):
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", _interval())
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("ascii", True)
        return tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


# ------------------------------------------------------------------------------------------ runner side
def bar_finished(text: str) -> bool:
    """Whether a tqdm bar line shows its last state (100 %, or n equal to the total)."""
    pct = _PERCENT.search(text)
    if pct and int(pct[1]) >= 100:
        return True
    count = _COUNT.search(text)
    return bool(count and count[1] == count[2])


def parse_stream(text: str) -> tuple[list[str], list[tuple[str, bool]]]:
    """Split a chunk of kernel stderr into plain lines and bar states `(line, finished)`.

    Each line is taken as a terminal would show it: the text after its last carriage return. A bar followed
    by a newline was closed by tqdm, so it counts as finished whatever its count.
    """
    plain: list[str] = []
    bars: list[tuple[str, bool]] = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        shown = [s for s in line.split("\r") if s.strip()]
        if not shown:
            continue
        last = shown[-1].rstrip()
        if BAR.search(last):
            bars.append((last.strip(), i < len(lines) - 1 or bar_finished(last)))
        else:
            plain.append(last)
    return plain, bars


class Console:
    """What a person sees while a study runs: permanent lines (stage started, done, skipped), one live line with
    the running stage, its cell and its current bar (on a terminal), or sparse bar lines (not a terminal)."""

    def __init__(self, stream: TextIO, tty: bool | None = None, verbose: bool = False, every: float = 60.0,
                 width: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.verbose, self.every, self.clock = stream, verbose, every, clock
        self.tty = stream.isatty() if tty is None else tty
        self.width = width or shutil.get_terminal_size(fallback=(100, 24)).columns
        self._lock = threading.RLock()
        self._status = ""
        self._bar: str | None = None
        self._live = False
        self._stage, self._cells = "", 0
        self._last: dict[str, float] = {}
        self._closed: dict[str, str] = {}

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe (e.g. `| head`) must not stop the study
            pass

    def _draw(self) -> None:
        if not self.tty:
            return
        line = "  ".join(t for t in (self._status, self._bar) if t)
        if line or self._live:
            self._write("\r" + line[: max(self.width - 1, 10)] + "\x1b[K")
            self._live = bool(line)

    def _erase(self) -> None:
        if self.tty and self._live:
            self._write("\r\x1b[K")
            self._live = False

    def say(self, text: str) -> None:
        """A permanent line (the live line is redrawn below it)."""
        with self._lock:
            self._erase()
            self._write(text + "\n")
            self._draw()

    def detail(self, text: str) -> None:
        """A line shown only with --verbose (cell log, kernel messages)."""
        if self.verbose:
            self.say(text)

    def stage(self, name: str, cells: int) -> None:
        """A stage starts: the live line names it; '' ends it and clears the live line."""
        with self._lock:
            self._stage, self._cells, self._bar, self._last, self._closed = name, cells, None, {}, {}
            self._status = f"  {name}" if name else ""
            self._erase()
            self._draw()

    def cell(self, index: int) -> None:
        """Papermill started cell `index` (1-based); a bar of the previous cell is over."""
        with self._lock:
            self._bar = None
            self._status = f"  {self._stage} cell {index}/{self._cells}"
            self._draw()

    def bar(self, text: str, finished: bool) -> bool:
        """Show a bar state; return whether it is worth a line in a log (its first state past every `every`
        seconds, or its last). Where stderr is not a terminal, exactly those states are printed."""
        with self._lock:
            key = text.split(": ", 1)[0] if ": " in text else ""
            now = self.clock()
            since = self._last.setdefault(key, now)
            notable = finished or now - since >= self.every
            if notable:
                self._last[key] = now
            if finished:
                self._last.pop(key, None)
                # tqdm shows a bar's last count when it gets there and again when it closes: one line for both
                count = _COUNT.search(text)
                last = count[0] if count else text
                notable = self._closed.get(key) != last
                self._closed[key] = last
            else:
                self._closed.pop(key, None)
            if self.tty:
                self._bar = None if finished else text
                self._draw()
            elif notable:
                self._write(f"    {text}\n")
            return notable


class KernelOutputFilter(logging.Filter):
    """Sits on papermill's logger: follows cell starts, takes tqdm bars out of the kernel's stderr records and
    shows them on the console; bar states worth keeping go to `bar_log`, the other lines stay in the record."""

    def __init__(self, console: Console, bar_log: logging.Logger) -> None:
        super().__init__()
        self.console, self.bar_log = console, bar_log

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        cell = _CELL.match(msg)
        if cell:
            self.console.cell(int(cell[1]))
        if not msg.strip():  # e.g. the newline tqdm writes when it closes a bar
            return False
        if record.levelno < logging.WARNING or not BAR.search(msg):
            record.msg, record.args = msg.rstrip("\n"), ()  # a print's own newline; the log adds one
            return True
        plain, bars = parse_stream(msg)
        for text, finished in bars:
            if self.console.bar(text, finished):
                self.bar_log.info(text, extra={"shown": True})
        if not plain:
            return False
        record.msg, record.args = "\n".join(plain), ()
        return True


class ConsoleHandler(logging.Handler):
    """--verbose: every log record on the console too, except what the console already showed."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "shown", False):
            return
        try:
            self.console.detail(self.format(record))
        except Exception:  # logging must never stop the run
            self.handleError(record)
