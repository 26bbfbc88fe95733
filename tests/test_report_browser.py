"""The run report (`report.html`) rendered in a real browser: every figure loads, the page logs no errors, and it
opens with the headline table whose numbers are those of `tables/verdict.csv` (a screenshot is taken).

Builds a small report with `ift_utils.report.build_report` (fake manifest, two matplotlib PNGs, a tiny
verdict table), opens it from disk in headless Chromium and reads what the page did through the Chrome
DevTools protocol: JavaScript exceptions, `console.error` calls and browser log entries of level error
(a missing image is logged as "Failed to load resource"), and `naturalWidth` of every <img>.

Chromium runs offline: a fresh profile, no background networking, component updates, sync or QUIC, and
the page is a local file. The test skips with a message where Chromium is missing (Debian:
`apt-get install chromium`; elsewhere set IFT_CHROMIUM to a Chromium or Chrome binary).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

CHROMIUM = Path(os.environ.get("IFT_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)),
    reason=f"browser test skipped: no Chromium at {CHROMIUM} (Debian: apt-get install chromium; "
           "or set IFT_CHROMIUM to a Chromium/Chrome binary)",
)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1200,2000"]
START_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 30.0
FIGURES = [("accuracy_vs_ratio", "Fine-tuned accuracy against the ratio of self-aligning data."),
           ("training_loss", "Training loss per step for every cell.")]


class Browser:
    """One headless Chromium and one page, driven over the DevTools protocol (websocket-client)."""

    def __init__(self, profile: Path):
        import websocket  # websocket-client, installed with jupyterlab (jupyter_server depends on it)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port_file = profile / "DevToolsActivePort"  # Chromium writes its port here once it listens
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open its DevTools port within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1
        targets = json.loads(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=LOAD_TIMEOUT_S,
                                              suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method)

    def call(self, method: str, **params) -> dict:
        """Send one command; keep events that arrive meanwhile; return its result."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def open(self, url: str) -> dict:
        """Load `url`; return its images, in-page anchors, captions and every error the page logged."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not finish loading within {LOAD_TIMEOUT_S:.0f} s")
            self.events.append(json.loads(self.ws.recv()))
        probe = """JSON.stringify({
            images: Array.from(document.images, i => ({src: i.getAttribute('src'), complete: i.complete,
                                                       width: i.naturalWidth})),
            toc: Array.from(document.querySelectorAll('nav a[href^="#"]'), a => a.getAttribute('href')),
            ids: Array.from(document.querySelectorAll('[id]'), e => e.id),
            captions: Array.from(document.querySelectorAll('figure figcaption'), c => c.textContent),
            headings: Array.from(document.querySelectorAll('h2'), h => h.textContent),
            headline: Array.from(document.querySelectorAll('#headline-table tr'),
                                 r => Array.from(r.cells, c => c.textContent)),
            headlineTop: (document.getElementById('headline-table') || {getBoundingClientRect: () => ({top: -1})})
                           .getBoundingClientRect().top,
            verdictTop: document.getElementById('verdict').getBoundingClientRect().top})"""
        res = self.call("Runtime.evaluate", expression=probe, returnByValue=True)
        out = json.loads(res["result"]["value"])
        out["errors"] = [_error_text(e) for e in self.events if _is_error(e)]
        return out

    def screenshot(self, path: Path) -> Path:
        """The page as rendered (the first 1200 × 2000 pixels), as a PNG."""
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            if self.proc.stderr:
                self.proc.stderr.close()


def _is_error(event: dict) -> bool:
    method, p = event.get("method"), event.get("params", {})
    return (method == "Runtime.exceptionThrown"
            or (method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"))
            or (method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error"))


def _error_text(event: dict) -> str:
    p = event["params"]
    if event["method"] == "Runtime.exceptionThrown":
        d = p["exceptionDetails"]
        return f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
    if event["method"] == "Runtime.consoleAPICalled":
        return "console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
    e = p["entry"]
    return f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip()


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("websocket", reason="browser test skipped: the websocket-client package is not installed")
    profile = Path(tempfile.mkdtemp(prefix="ift-chromium-"))
    b = Browser(profile)
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


def _png(path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 0.5, 1], [0.40, 0.45, 0.52], marker="o")
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)


@pytest.fixture
def report(tmp_path: Path) -> Path:
    from ift_utils.report import build_report

    run = tmp_path / "browser-run"
    run.mkdir()
    manifest = {"run_name": run.name, "git_commit": "0123abc",
                "params": {"model": "tiny-random", "scoring": "cloze", "ratios": [0.0, 0.5, 1.0], "seeds": [0]},
                "versions": {"python": "3.11", "torch": "2.13.0", "pandas": pd.__version__},
                "stages": {"01_probe": {"status": "done", "seconds": 12.3},
                           "02_interventions": {"status": "done", "seconds": 4.5}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    for stem, _ in FIGURES:
        _png(run / "figures" / f"{stem}.png", stem)
    verdict = pd.DataFrame({
        "claim": ["harmonious > incompatible", "self-aligning > incompatible"], "test_set": ["HOMO", "HOMO"],
        "ours": [3.2, -1.0], "lo": [0.5, -4.0], "hi": [6.0, 2.0], "paper": [11.27, 5.25],
        "supported": [True, False], "reading": ["supported: +3.2 points", "not supported (interval spans 0)"]})
    return build_report(run, FIGURES, verdict, "A headline <with> characters to escape & show.")


def test_report_renders_with_all_figures_and_no_errors(browser, report):
    page = browser.open(report.resolve().as_uri())
    assert page["errors"] == [], f"the report logged errors in Chromium: {page['errors']}"
    assert [i["src"] for i in page["images"]] == [f"figures/{stem}.png" for stem, _ in FIGURES]
    broken = [i["src"] for i in page["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"figures that did not load: {broken}"
    assert len(page["captions"]) == len(FIGURES)
    for (_, caption), shown in zip(FIGURES, page["captions"], strict=True):
        assert caption in shown, f"caption {caption!r} not shown (got {shown!r})"
    assert page["toc"], "the report has no table of contents"
    missing = [h for h in page["toc"] if h[1:] not in page["ids"]]
    assert not missing, f"table-of-contents links without a target: {missing}"
    text = report.read_text(encoding="utf-8")
    assert "&lt;with&gt;" in text and "0123abc" in text and "tiny-random" in text


def test_browser_check_catches_a_broken_figure_and_a_script_error(browser, report):
    """The check itself must fail on a bad page (a missing figure, a console error, an exception)."""
    bad = report.with_name("broken.html")
    bad.write_text(report.read_text(encoding="utf-8").replace(
        "</body>", "<img src='figures/missing.png'><script>console.error('boom'); undefinedCall();</script></body>"),
        encoding="utf-8")
    page = browser.open(bad.resolve().as_uri())
    assert [i["src"] for i in page["images"] if i["width"] == 0] == ["figures/missing.png"]
    joined = "\n".join(page["errors"])
    assert "boom" in joined and "undefinedCall" in joined and "missing.png" in joined, page["errors"]


def _verdict_rows(offset: float) -> pd.DataFrame:
    """A verdict in the shape stage 05 writes: the three group claims on HOMO and ID, a control row."""
    rows = []
    for i, (claim, paper) in enumerate((("harmonious > incompatible", 11.27), ("self-aligning > incompatible", 5.25),
                                        ("contextualized > incompatible", 7.21))):
        for ts in ("HOMO", "ID"):
            ours = round(-4.0 + 2.5 * i + offset + (ts == "ID"), 3)
            rows.append({"claim": claim, "kind": "claim", "test_set": ts, "ours": ours, "lo": ours - 8.4,
                         "hi": ours + 8.4, "p": 0.5, "p_adj": 0.9, "mde": 11.8 - i, "paper": paper,
                         "decision": "inconclusive", "reading": f"between {ours - 8.4:.1f} and {ours + 8.4:.1f}"})
    rows.append({"claim": "general_only − no_ift", "kind": "control", "test_set": "HOMO", "ours": 4.5, "lo": 0.5,
                 "hi": 8.5, "p": 0.03, "p_adj": float("nan"), "mde": 6.0, "paper": float("nan"),
                 "decision": "descriptive", "reading": "descriptive"})
    return pd.DataFrame(rows)


def test_report_opens_with_the_headline_of_verdict_csv(browser, tmp_path):
    """The headline table comes before the full verdict, its numbers are verdict.csv's (raw) and
    verdict_calibrated.csv's (calibrated) HOMO claim rows, as shown with two decimals; a screenshot is kept."""
    from ift_utils.report import build_report, headline_table

    run = tmp_path / "headline-run"
    (run / "tables").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_name": run.name, "params": {}, "versions": {},
                                                   "stages": {}}))
    _verdict_rows(0.0).to_csv(run / "tables" / "verdict.csv", index=False)
    _verdict_rows(1.25).to_csv(run / "tables" / "verdict_calibrated.csv", index=False)
    raw = pd.read_csv(run / "tables" / "verdict.csv")
    cal = pd.read_csv(run / "tables" / "verdict_calibrated.csv")
    head = headline_table(raw, cal)
    page_file = build_report(run, [], raw, "No claim is decided at this size.", headline_rows=head)
    page = browser.open(page_file.resolve().as_uri())
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("IFT_SCREENSHOT_DIR"):  # keep it, e.g. to refresh docs/figures/report_screenshot.png
        shutil.copy(shot, Path(os.environ["IFT_SCREENSHOT_DIR"]) / "report_headline.png")
    assert page["errors"] == []
    assert page["headings"][0] == "Headline"
    assert 0 <= page["headlineTop"] < page["verdictTop"], "the headline must come before the full verdict"
    header, *body = page["headline"]
    assert header[:5] == ["claim", "ours", "lo", "hi", "mde"] and "ours_cal" in header and "paper" in header
    assert [r[0] for r in body] == ["harmonious > incompatible", "self-aligning > incompatible",
                                    "contextualized > incompatible"]
    for row in body:
        shown = dict(zip(header, row, strict=True))
        want_raw = raw[(raw["claim"] == shown["claim"]) & (raw["test_set"] == "HOMO")].iloc[0]
        want_cal = cal[(cal["claim"] == shown["claim"]) & (cal["test_set"] == "HOMO")].iloc[0]
        for col in ("ours", "lo", "hi", "mde", "paper"):
            assert float(shown[col]) == round(float(want_raw[col]), 2), (shown["claim"], col)
        for col in ("ours", "lo", "hi", "mde"):
            assert float(shown[f"{col}_cal"]) == round(float(want_cal[col]), 2), (shown["claim"], col)
    text = page_file.read_text(encoding="utf-8")
    assert text.index("No claim is decided at this size.") < text.index("id='verdict'")
