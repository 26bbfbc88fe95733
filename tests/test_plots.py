"""Smoke tests for the figures on a small synthetic eval table and probe frame (Agg backend, files written)."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from ift_utils.plots import (
    calibration_bins,
    plot_accuracy_by_popularity,
    plot_accuracy_vs_ratio,
    plot_calibration,
    plot_consistency_vs_accuracy,
    plot_group_comparison,
    save_figure,
)


@pytest.fixture(scope="module")
def eval_table() -> pd.DataFrame:
    """2 domains × 2 seeds × 3 test sets, ratio grid plus harmonious and contextualized groups."""
    rng = np.random.default_rng(0)
    rows = []
    groups = [("incompatible", 0.0), ("mixture", 0.4), ("self_aligning", 1.0), ("harmonious", np.nan),
              ("contextualized", np.nan)]
    for domain in ("capitals", "rivers"):
        for ts in ("HOMO", "ID", "OOD"):
            base = rng.uniform(0.4, 0.6)
            for seed in (0, 1):
                for group, ratio in groups:
                    ft = base + (0.05 * ratio if np.isfinite(ratio) else 0.08) + rng.normal(0, 0.01)
                    rows.append({
                        "model": "tiny", "domain": domain, "condition": f"{group}{ratio}", "group": group,
                        "ratio": ratio, "seed": seed, "test_set": ts, "n": 50, "base_acc": base, "ft_acc": ft,
                        "acc_diff": ft - base, "kl": rng.uniform(0.1, 0.5), "rank_corr": rng.uniform(0.2, 0.9),
                    })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def probe_frame() -> pd.DataFrame:
    """Two domains of probe rows; the second has no popularity values at all."""
    rng = np.random.default_rng(1)
    n = 120
    conf = rng.uniform(0.25, 1.0, n)
    return pd.DataFrame({
        "id": np.arange(n), "domain": ["capitals"] * 80 + ["rivers"] * 40, "split": "train", "mode": "cloze",
        "answer": 0, "pred": 0, "correct": rng.uniform(size=n) < conf, "confidence": conf,
        "popularity": np.r_[rng.lognormal(3, 1, 80), np.full(40, np.nan)],
        "probs": [[c, (1 - c) / 3, (1 - c) / 3, (1 - c) / 3] for c in conf],
    })


def _check(fig: Figure, tmp_path, name: str) -> None:
    assert isinstance(fig, Figure)
    assert len(fig.axes) >= 1
    png, svg = save_figure(fig, tmp_path / "figs", name)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:2000]
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]


def test_accuracy_vs_ratio(eval_table, tmp_path):
    fig = plot_accuracy_vs_ratio(eval_table)
    assert len(fig.axes) == 6  # 3 test sets × 2 domains
    assert any(line.get_linestyle() == "--" for ax in fig.axes for line in ax.get_lines())  # base accuracy
    _check(fig, tmp_path, "acc_vs_ratio")


def test_consistency_vs_accuracy(eval_table, tmp_path):
    fig = plot_consistency_vs_accuracy(eval_table)
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 3 and labels[0].startswith("HOMO: slope")
    _check(fig, tmp_path, "consistency")
    assert len(plot_consistency_vs_accuracy(eval_table, with_kl=False).axes) == 1


def test_group_comparison(eval_table, tmp_path):
    fig = plot_group_comparison(eval_table)
    assert len(fig.axes) == 2
    assert len(fig.axes[1].get_xticklabels()) == 9  # 3 claims × 3 test sets
    _check(fig, tmp_path, "groups")


def test_calibration(probe_frame, tmp_path):
    bins = calibration_bins(probe_frame, n_bins=5)
    assert bins["n"].sum() == len(probe_frame)
    assert ((bins["lo"] <= bins["acc"]) & (bins["acc"] <= bins["hi"])).all()
    _check(plot_calibration(probe_frame, n_bins=5), tmp_path, "calibration")
    _check(plot_calibration(probe_frame, n_bins=5, hue="domain"), tmp_path, "calibration_by_domain")


def test_accuracy_by_popularity(probe_frame, tmp_path):
    fig = plot_accuracy_by_popularity(probe_frame, n_bins=4)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Q1", "Q2", "Q3", "Q4"]
    _check(fig, tmp_path, "popularity")


def test_report_contents_take_a_captions_first_sentence():
    from ift_utils.report import toc_title

    assert toc_title("Accuracy against the ratio (paper Fig. 2/4). What to see: a rise.") == \
        "Accuracy against the ratio (paper Fig. 2/4)"
    assert toc_title("Loss per step, e.g. for cell 1.") == "Loss per step, e.g. for cell 1"
    assert toc_title("No full stop") == "No full stop"
