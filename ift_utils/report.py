"""The run's one-page HTML report. It opens with the headline: the paper's three group claims on HOMO, ours raw and
calibrated with their intervals and minimum detectable effects beside the paper's numbers, and the run's reading.
Then the contents, the full verdict table, the stages in order with links to their executed notebooks, every figure
with its caption, and the parameters and versions used.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ift_utils.io import write_text
from ift_utils.verdict import CLAIM_CONTEXTUALIZED, CLAIM_HARMONIOUS, CLAIM_SELF_ALIGNING

HEADLINE_CLAIMS = (CLAIM_HARMONIOUS, CLAIM_SELF_ALIGNING, CLAIM_CONTEXTUALIZED)
HEADLINE_COLUMNS = ["claim", "ours", "lo", "hi", "mde", "ours_cal", "lo_cal", "hi_cal", "mde_cal", "paper",
                    "decision"]

STAGE_TITLES = {
    "01_probe": "Probe: what the base model believes",
    "02_interventions": "Knowledge intervention: the fine-tuning groups",
    "03_training": "Instruction fine-tuning",
    "04_evaluation": "Evaluation: accuracy and knowledge consistency",
    "05_analysis": "Analysis: figures, statistics and verdict",
}
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:.9em;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}td.num{text-align:right}td,th{vertical-align:top}.scroll{overflow-x:auto}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}.yes{color:#16794a;font-weight:600}
.no{color:#a33;font-weight:600}nav li{margin:.2em 0}code{background:#f5f5f5;padding:0 .2em}"""


def _table(frame: pd.DataFrame) -> str:
    """An HTML table with fixed decimals for numbers; columns of sentences (a reading, a note) get a readable
    minimum width, so a wide table scrolls instead of squeezing them into tall rows."""
    prose = {c: "30em" for c in frame.columns
             if not pd.api.types.is_numeric_dtype(frame[c]) and frame[c].astype(str).str.len().max() > 80}
    html = frame.to_html(index=False, border=0, float_format=lambda x: f"{x:.2f}", escape=True, na_rep="–",
                         col_space=prose or None)
    return f"<div class='scroll'>{html}</div>"


def _yes_no(value: object) -> str:
    """A verdict's `supported` cell: yes / no, and – where the row supports no claim (controls, or missing)."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, str) and value in ("True", "False"):  # read back from CSV
        return "yes" if value == "True" else "no"
    return "–"


def toc_title(caption: str) -> str:
    """A caption's first sentence, for the contents list ("Fig. 2" and "e.g." do not end a sentence)."""
    m = re.search(r"(?<!Fig)(?<!e\.g)(?<!i\.e)\.(\s|$)", caption)
    return caption[: m.start()] if m else caption


VERDICT_NOTE = ("<p>Differences are in accuracy points. <code>lo</code>–<code>hi</code>: the 95 % interval (t with "
                "the df in <code>df</code>) of the question-level model named in <code>method</code>; <code>p</code>: "
                "its two-sided p; <code>p_holm_claim</code> / <code>p_holm_all</code>: Holm-adjusted within the "
                "claim's test sets and over all claim rows; <code>p_adj</code> decides (the primary contrast, "
                "harmonious − incompatible on HOMO, is unadjusted). A null reads by its interval (“no: between lo "
                "and hi points”); <code>mde</code> is a planning number: the smallest difference this run would "
                "detect with 80 % power (α = 0.05); <code>t_lo</code>–<code>t_hi</code>: the paired t interval over "
                "replicates, a cross-check. Rows of kind <code>control</code> and <code>reproduction</code> are "
                "descriptive and support no claim (–); “not estimable” rows had no variance.</p>")


def headline_table(verdict: pd.DataFrame, calibrated: pd.DataFrame | None = None, test_set: str = "HOMO"
                   ) -> pd.DataFrame:
    """The headline: one row per group claim (harmonious, self-aligning, contextualized − incompatible) on
    `test_set`, with our raw estimate, interval and MDE, the same from the calibrated verdict (`*_cal`, empty without
    one), the paper's number and the decision. Values are copied from the verdict rows, never recomputed."""
    def rows(frame: pd.DataFrame | None) -> pd.DataFrame:
        if frame is None or frame.empty:
            return pd.DataFrame(columns=["claim", "ours", "lo", "hi", "mde", "paper", "decision"])
        keep = frame[(frame["claim"].isin(HEADLINE_CLAIMS)) & (frame["test_set"] == test_set)]
        if "kind" in keep:
            keep = keep[keep["kind"] == "claim"]
        return keep.reindex(columns=["claim", "ours", "lo", "hi", "mde", "paper", "decision"])

    raw, cal = rows(verdict), rows(calibrated)
    cal = cal[["claim", "ours", "lo", "hi", "mde"]].rename(columns={c: f"{c}_cal" for c in ("ours", "lo", "hi", "mde")})
    out = raw.merge(cal, on="claim", how="left")
    order = {c: i for i, c in enumerate(HEADLINE_CLAIMS)}
    out = out.sort_values("claim", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return out.reindex(columns=HEADLINE_COLUMNS)


HEADLINE_NOTE = ("<p>Accuracy points on {test_set} at the final checkpoint. <code>ours</code> [<code>lo</code>, "
                 "<code>hi</code>]: our difference and its 95 % interval; <code>mde</code>: the smallest difference "
                 "this run would detect with 80 % power; <code>_cal</code>: the same under calibrated scoring (the "
                 "answer prior of a content-free prompt removed); <code>paper</code>: Ren et al.'s number. The full "
                 "verdict, every test set and the controls, is <a href='#verdict'>below</a>.</p>")


def build_report(run_dir: Path, figures: list[tuple[str, str]], verdict: pd.DataFrame, headline: str,
                 tables: list[tuple[str, pd.DataFrame]] | None = None, headline_rows: pd.DataFrame | None = None,
                 headline_test_set: str = "HOMO") -> Path:
    """Write `run_dir/report.html`; `figures` are (file stem under figures/, caption); `tables` are extra
    (title, frame) tables shown after the verdict (e.g. the consistency of the controls); `headline_rows` (from
    `headline_table`) open the page with `headline`, the run's reading, under them."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").exists() else {}
    params = manifest.get("params", {})
    versions = manifest.get("versions", {})
    stages = manifest.get("stages", {})
    fig_toc = "".join(f"<li><a href='#fig-{stem}'>{html.escape(toc_title(cap))}</a></li>" for stem, cap in figures)
    toc = ["<li><a href='#headline'>Headline</a></li>", "<li><a href='#verdict'>Verdict</a></li>", "<li><a href='#stages'>Stages</a></li>",
           f"<li><a href='#figures'>Figures</a><ol>{fig_toc}</ol></li>",
           "<li><a href='#params'>Parameters and versions</a></li>"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Report · {html.escape(run_dir.name)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Learning or self-aligning? · run <code>{html.escape(run_dir.name)}</code></h1>",
             "<p>Replication of Ren et al., <em>Learning or Self-aligning? Rethinking Instruction Fine-tuning</em> "
             "(ACL 2024). Every number on this page is computed by the run's notebooks.</p>",
             "<h2 id='headline'>Headline</h2>"]
    if headline_rows is not None and len(headline_rows):
        parts.append(HEADLINE_NOTE.format(test_set=html.escape(headline_test_set)))
        parts.append(_table(headline_rows).replace("<table", "<table id='headline-table'", 1))
    parts += [f"<p id='reading'><strong>Reading.</strong> {html.escape(headline)}</p>",
              f"<nav><h2>Contents</h2><ol>{''.join(toc)}</ol></nav>",
              "<h2 id='verdict'>Verdict</h2>"]
    v = verdict.copy()
    if "supported" in v:
        v["supported"] = v["supported"].map(_yes_no)
    if "mde" in v:
        parts.append(VERDICT_NOTE)
    parts.append(_table(v).replace("<td>yes</td>", "<td class='yes'>yes</td>").replace("<td>no</td>",
                                                                                         "<td class='no'>no</td>"))
    for title, frame in tables or []:
        parts.append(f"<h3>{html.escape(title)}</h3>{_table(frame)}")
    parts.append("<h2 id='stages'>Stages</h2><ol>")
    for stem, title in STAGE_TITLES.items():
        rec = stages.get(stem, {})
        status = "wrote this page" if stem == "05_analysis" else rec.get("status", "not run")
        links = (f"<a href='{stem}.html'>{stem}.html</a> (<a href='{stem}.ipynb'>notebook</a>)"
                 if rec.get("status") == "done" or stem == "05_analysis" else "")
        secs = f" · {rec['seconds']:.0f} s" if "seconds" in rec else ""
        parts.append(f"<li><strong>{html.escape(title)}</strong> — {html.escape(status)} {links}{secs}</li>")
    parts.append("</ol><h2 id='figures'>Figures</h2>")
    for i, (stem, caption) in enumerate(figures, 1):
        if (run_dir / "figures" / f"{stem}.png").exists():
            parts.append(f"<figure id='fig-{stem}'><img src='figures/{stem}.png' alt='{html.escape(caption)}'>"
                         f"<figcaption>Figure {i}. {html.escape(caption)}</figcaption></figure>")
        else:
            parts.append(f"<p id='fig-{stem}'>Figure {i}. {html.escape(caption)} — not produced "
                         f"(figures/{stem}.png is missing).</p>")
    parts.append("<h2 id='params'>Parameters and versions</h2>")
    parts.append(_table(pd.DataFrame({"parameter": list(params), "value": [json.dumps(x) for x in params.values()]})))
    parts.append(_table(pd.DataFrame({"package": list(versions), "version": list(versions.values())})))
    parts.append(f"<p>git commit <code>{html.escape(str(manifest.get('git_commit', 'unknown')))}</code></p>")
    parts.append("</body></html>")
    return write_text(run_dir / "report.html", "\n".join(parts))
