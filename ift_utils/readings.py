"""Readings: the sentence each verdict row says, from its interval and the adjusted p the decision rests on
(``decision`` decides; this module only words), and the reading against the paper's own effect.

Against the paper (``paper_reading``), with Δ_paper the paper's number taken as fixed:
*supported* (the decision rule finds the difference above 0), *contradicted* (below 0), *smaller than the paper's*
(the one-sided test of Δ ≥ Δ_paper rejects after Holm over its own family, and the rule does not decide the row
against 0: 0 is inside the interval, or the interval leaves 0 out but Holm or the primary's gate holds it),
*inconclusive* (0 and Δ_paper both inside the interval, or neither test rejects). A supported row whose test
against the paper also rejects reads "supported, smaller than the paper's".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .contrasts import CLAIM_REPRODUCTION
from .correlation import CLAIM_CONSISTENCY, PAPER_PARTIAL_R

GATE_CLOSED = ("not tested: the primary contrast did not pass, so no other claim row is decided (the primary "
               "gates the Holm family)")


def fmt_p(p: float) -> str:
    """A p-value for a sentence."""
    return "n/a" if not np.isfinite(p) else (f"{p:.2g}" if p >= 0.001 else "< 0.001")


_fmt_p = fmt_p  # the name the verdict module used


def _interval(row: Mapping[str, Any]) -> tuple[bool, str, str]:
    """(is a correlation, "est [lo, hi]" text, "between lo and hi" text) of a row."""
    corr = row["claim"] in (CLAIM_CONSISTENCY, CLAIM_REPRODUCTION)
    est, lo, hi = (float(row[k]) for k in ("ours", "lo", "hi"))
    if corr:
        return True, f"{est:+.2f} [{lo:.2f}, {hi:.2f}]", f"between {lo:.2f} and {hi:.2f}"
    return False, f"{est:+.1f} points [{lo:.1f}, {hi:.1f}]", f"between {lo:.1f} and {hi:.1f} points"


def read_row(row: Mapping[str, Any], primary: bool, n_family: int, alpha: float,
             gate_open: bool = True) -> tuple[str, bool | None, str]:
    """Decision, `supported` and a reading for one row, worded from its interval and adjusted p; a non-primary
    claim row is decided only when the primary passed (`gate_open`)."""
    corr = row["claim"] in (CLAIM_CONSISTENCY, CLAIM_REPRODUCTION)
    unit = "" if corr else " points"
    est, lo, hi, p = (float(row[k]) for k in ("ours", "lo", "hi", "p"))
    fmt = (lambda v: f"{v:+.2f}") if corr else (lambda v: f"{v:+.1f}")  # noqa: E731
    detail = row.get("_detail") if isinstance(row.get("_detail"), str) else ""
    paper = row.get("paper", float("nan"))
    paper_txt = f" vs paper {paper:+.2f}" if row["kind"] == "claim" and np.isfinite(paper) else (
        " vs no paper number" if row["kind"] == "claim" else "")
    tail = f" ({detail})" if detail else ""
    if row["kind"] == "reproduction":
        r_txt = f"r = {est:.2f}, p = {fmt_p(p)}" if np.isfinite(est) else "r not computable (too few cells)"
        return "descriptive", None, (f"reproduction (paper's statistic; controls only for domain here, not a "
                                     f"test): {r_txt}, n = {row.get('n_replicates')}; "
                                     f"paper {PAPER_PARTIAL_R[0]:.2f}-{PAPER_PARTIAL_R[1]:.2f}")
    closed = row["kind"] == "claim" and not primary and not gate_open
    if corr and np.isfinite(est) and np.isfinite(p) and not np.isfinite(lo):  # a p but too few df for an interval
        p_adj = p if primary else float(row["p_holm_all"])
        decision = ("supported" if est > 0 else "contradicted") if (
            np.isfinite(p_adj) and p_adj < alpha and not closed) else "not supported"
        lead = GATE_CLOSED if closed else decision
        return decision, decision == "supported", (f"{lead}: r = {est:+.2f}, interval not estimable (too few "
                                                   f"df), p = {fmt_p(p)}, adjusted {fmt_p(p_adj)}{paper_txt}{tail}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        why = row.get("reading") if isinstance(row.get("reading"), str) and row.get("reading") else "no interval"
        shown = f"{fmt(est)}{unit}" if np.isfinite(est) else "no estimate"
        text = f"not estimable ({why}): {shown}; interval, p and MDE not estimable{paper_txt}{tail}"
        return "not estimable", (False if row["kind"] == "claim" else None), text
    _, interval, between = _interval(row)
    if row["kind"] == "control":
        return "descriptive", None, f"descriptive (a control, not a test): {interval}{tail}"
    p_adj = p if primary else float(row["p_holm_all"])
    p_txt = (f"primary contrast, tested first at alpha {alpha:g}, p = {fmt_p(p)}" if primary else
             f"p = {fmt_p(p)}, Holm-adjusted {fmt_p(p_adj)} over {n_family} claim rows "
             f"({fmt_p(float(row['p_holm_claim']))} within the claim)")
    if closed:
        return "not supported", False, f"{GATE_CLOSED}: {interval}{paper_txt}; {p_txt}{tail}"
    if np.isfinite(p_adj) and p_adj < alpha:
        decision = "supported" if est > 0 else "contradicted"
        return decision, decision == "supported", f"{decision}: {interval}{paper_txt}; {p_txt}{tail}"
    lead = "not supported" if not (lo > 0 or hi < 0) else "not supported after adjustment for multiplicity"
    return "not supported", False, f"{lead}: no: {between}{paper_txt}; {p_txt}{tail}"


def paper_reading(row: Mapping[str, Any], alpha: float) -> tuple[str, str]:
    """(label, sentence) of a claim row against the paper's effect: supported / contradicted by the decision rule,
    else smaller than the paper's (one-sided test of Δ ≥ Δ_paper rejected after Holm, 0 inside the interval), else
    inconclusive; the sentence quotes the interval and the adjusted p it rests on."""
    paper = float(row.get("paper", float("nan")))
    if row["kind"] != "claim" or not np.isfinite(paper):
        return "", ""
    lo, hi = float(row["lo"]), float(row["hi"])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not estimable", "not estimable: no interval to set beside the paper's number"
    _, interval, _ = _interval(row)
    who = f"paper {paper:+.2f} ({row.get('paper_model', '')})"
    p_pap = float(row.get("p_vs_paper_holm", float("nan")))
    below = np.isfinite(p_pap) and p_pap < alpha
    vs = f"test of ≥ paper: p = {fmt_p(float(row.get('p_vs_paper', float('nan'))))}, Holm-adjusted {fmt_p(p_pap)}"
    decided = row.get("decision")
    p_adj = float(row.get("p_adj", float("nan")))
    if decided in ("supported", "contradicted"):
        label = "supported, smaller than the paper's" if decided == "supported" and below else decided
        return label, f"{label}: {interval}, adjusted p = {fmt_p(p_adj)}; {vs}; {who}"
    if below:
        where = ("holds 0" if lo <= 0 <= hi else
                 "leaves out 0 but is not decided by the rule (Holm or the primary's gate)")
        return "smaller than the paper's", (f"smaller than the paper's: {interval} {where} and lies below {who}; "
                                            f"{vs}; adjusted p against 0 = {fmt_p(p_adj)}")
    return "inconclusive", (f"inconclusive: {interval}{' holds both 0 and the paper' if lo <= paper <= hi else ''}"
                            f"; adjusted p against 0 = {fmt_p(p_adj)}; {vs}; {who}")
