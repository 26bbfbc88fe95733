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
    saved = save_figure(fig, tmp_path / "figs", name)
    png, svg = saved
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data, meta = saved._repr_png_()  # a notebook shows the saved file, at 100 dpi
    assert data == png.read_bytes() and meta["width"] == round(int.from_bytes(data[16:20], "big") * 100 / 150)
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
    from ift_utils.verdict import study_verdict

    verdict = study_verdict(eval_table)  # no answers table: the paired t over replicates
    fig = plot_group_comparison(eval_table, verdict)
    assert len(fig.axes) == 2
    assert len(fig.axes[1].get_xticklabels()) == 9  # 3 claims × 3 test sets
    _check(fig, tmp_path, "groups")
    # a difference without an interval is said, not drawn as a zero-width bar
    verdict.loc[0, ["lo", "hi", "mde"]] = float("nan")
    texts = [t.get_text() for t in plot_group_comparison(eval_table, verdict).axes[1].texts]
    assert texts == ["not\nestimable"]


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


# ------------------------------------------------------------------------------- controls, fit and epochs
def _with_controls(eval_table: pd.DataFrame, epochs: tuple[float, ...] = (3.0,)) -> pd.DataFrame:
    """The fixture's table at the given epochs (the last one final), plus no_ift (seed -1) and general_only rows."""
    frames = [eval_table.assign(epoch=e, ft_acc=eval_table["ft_acc"] - 0.02 * (max(epochs) - e)) for e in epochs]
    keys = eval_table[["model", "domain", "test_set", "base_acc"]].drop_duplicates()
    no_ift = keys.assign(condition="no_ift", group="no_ift", ratio=np.nan, seed=-1, n=50, ft_acc=0.30,
                         acc_diff=0.30 - keys["base_acc"], kl=0.2, rank_corr=0.6, epoch=np.nan)
    general = pd.concat([keys.assign(seed=s) for s in (0, 1)]).assign(
        condition="general_only", group="general_only", ratio=np.nan, n=50, ft_acc=0.35, kl=0.25,
        rank_corr=0.5, epoch=max(epochs))
    general["acc_diff"] = general["ft_acc"] - general["base_acc"]
    return pd.concat([*frames, no_ift, general], ignore_index=True)


def test_accuracy_vs_ratio_draws_the_controls_and_labels_the_base_probe(eval_table, tmp_path):
    table = _with_controls(eval_table, epochs=(1.0, 3.0))
    fig = plot_accuracy_vs_ratio(table)
    assert len(fig.axes) == 6  # controls are reference lines, never a ratio condition or a panel
    for ax in fig.axes:
        flat = {round(line.get_ydata()[0], 6) for line in ax.get_lines() if line.get_linestyle() in (":", "-.")}
        assert flat == {30.0, 35.0}, flat  # no_ift 30 %, general_only 35 %
        assert any(line.get_linestyle() == "--" for line in ax.get_lines())  # the k-shot base probe, kept
    labels = fig.axes[2].get_legend_handles_labels()[1]
    assert "tiny: k-shot base probe" in labels and "general data only" in labels
    # only the final epoch is drawn: the ratio points equal the fixture's final accuracies
    xs = {round(float(v), 6) for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "-"
          for v in line.get_xdata()}
    assert xs <= {0.0, 0.4, 1.0}
    _check(fig, tmp_path, "acc_vs_ratio_controls")


def test_group_comparison_shows_controls_and_the_mde(eval_table, tmp_path):
    from ift_utils.verdict import CLAIM_GENERAL_VS_NO_IFT, CLAIM_HARMONIOUS

    table = _with_controls(eval_table)
    diffs = pd.DataFrame({"claim": [CLAIM_HARMONIOUS, CLAIM_GENERAL_VS_NO_IFT], "test_set": ["HOMO", "HOMO"],
                          "ours": [3.0, 5.0], "lo": [-1.0, 1.0], "hi": [7.0, 9.0], "paper": [11.27, np.nan],
                          "mde": [5.6, 5.6]})
    fig = plot_group_comparison(table, diffs)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:2] == ["no IFT", "general only"]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["H−I\nHOMO", "G−N\nHOMO"]
    assert "minimum detectable effect" in fig.axes[1].get_legend_handles_labels()[1]
    _check(fig, tmp_path, "groups_controls")


def test_accuracy_vs_fit_and_vs_epoch(eval_table, tmp_path):
    from ift_utils.plots import has_epochs, plot_accuracy_vs_epoch, plot_accuracy_vs_fit

    table = _with_controls(eval_table, epochs=(1.0, 3.0))
    cells = table[~table["group"].isin(["no_ift"])].drop_duplicates(
        ["model", "domain", "condition", "group", "seed", "epoch"])
    fit = cells[["model", "domain", "condition", "group", "ratio", "seed", "epoch"]].assign(
        n=48, fit=lambda f: np.where(f["group"] == "general_only", np.nan, f["epoch"] / 3.0), gold=0.5, own=0.3)
    fig = plot_accuracy_vs_fit(fit, table)
    assert len(fig.axes) == 3
    groups = fig.axes[-1].get_legend_handles_labels()[1]
    assert set(groups) == {"harmonious", "incompatible", "self-aligning", "contextualized", "mixture"}
    points = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert points == 2 * 5 * 2 * 2  # domains × groups × seeds × epochs on HOMO; controls have no fit
    _check(fig, tmp_path, "acc_vs_fit")
    with pytest.raises(ValueError, match="fit"):
        plot_accuracy_vs_fit(fit.drop(columns="fit"), table)

    assert has_epochs(table) and not has_epochs(_with_controls(eval_table)) and not has_epochs(eval_table)
    fig = plot_accuracy_vs_epoch(table)
    assert len(fig.axes) == 3
    assert {round(line.get_ydata()[0], 6) for line in fig.axes[0].get_lines()
            if line.get_linestyle() in (":", "-.")} == {30.0, 35.0}
    _check(fig, tmp_path, "acc_vs_epoch")


def test_consistency_vs_accuracy_shows_the_no_ift_reference_when_there(eval_table, tmp_path):
    table = eval_table.assign(rank_corr_no_ift=eval_table["rank_corr"] * 0.8, kl_no_ift=eval_table["kl"] / 2)
    fig = plot_consistency_vs_accuracy(table)
    assert [ax.get_xlabel() for ax in fig.axes] == [
        "consistency vs k-shot probe (100 × rank corr.)", "consistency vs no_ift (100 × rank corr.)",
        "KL(k-shot probe ‖ fine-tuned), nats", "KL(no_ift ‖ fine-tuned), nats"]
    _check(fig, tmp_path, "consistency_no_ift")


def test_difference_vs_fit(eval_table, tmp_path):
    from ift_utils.plots import plot_difference_vs_fit

    table = _with_controls(eval_table, epochs=(1.0, 3.0))
    cells = table[~table["group"].isin(["no_ift", "general_only"])].drop_duplicates(
        ["model", "domain", "condition", "group", "seed", "epoch"])
    fit = cells[["model", "domain", "condition", "group", "ratio", "seed", "epoch"]].assign(
        n=48, fit=lambda f: f["epoch"] / 3.0, gold=0.5, own=0.3)
    fig = plot_difference_vs_fit(table, fit)
    assert len(fig.axes) == 3
    assert fig.axes[-1].get_legend_handles_labels()[1] == ["H − I", "S − I", "C − I"]
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 3 * 2 * 2 * 2  # claims × domains × seeds × epochs
    _check(fig, tmp_path, "diff_vs_fit")
    empty = plot_difference_vs_fit(table, fit.iloc[0:0])
    assert len(empty.axes) == 3


def test_report_shows_the_mde_note_controls_without_a_verdict_and_extra_tables(tmp_path):
    from ift_utils.report import build_report

    verdict = pd.DataFrame({"claim": ["harmonious > incompatible", "general_only − no_ift"],
                            "test_set": ["HOMO", "HOMO"], "ours": [3.2, 5.0], "lo": [-1.0, 1.0], "hi": [7.4, 9.0],
                            "mde": [6.1, 5.9], "supported": [False, None], "reading": ["not supported", "differs"]})
    extra = pd.DataFrame({"group": ["no_ift"], "test_set": ["HOMO"], "kl": [0.21]})
    page = build_report(tmp_path, [], verdict, "headline", tables=[("Controls' consistency", extra)])
    text = page.read_text(encoding="utf-8")
    assert "with 80 % power" in text and "<code>mde</code>" in text and "Holm" in text
    assert "<td class='no'>no</td>" in text and "<td>–</td>" in text and "None" not in text
    assert "<h3>Controls&#x27; consistency</h3>" in text and "0.21" in text


def test_loss_curves_one_panel_per_domain(tmp_path):
    from ift_utils.plots import plot_loss_curves

    curves = pd.DataFrame([{"domain": d, "condition": c, "seed": s, "step": t, "loss": 2.0 / t}
                           for d in ("capitals", "rivers") for c in ("ratio0", "ratio1") for s in (0, 1)
                           for t in range(1, 6)])
    fig = plot_loss_curves(curves, ["capitals", "rivers"])
    assert [ax.get_title() for ax in fig.axes] == ["capitals", "rivers"]
    assert all(len(ax.get_lines()) >= 2 for ax in fig.axes)  # one line per condition
    _check(fig, tmp_path, "training_loss")
    empty = plot_loss_curves(curves[curves["domain"] == "capitals"], ["capitals", "rivers"])
    assert "no loss recorded" in empty.axes[1].texts[0].get_text()


def test_fit_curves_mark_the_target_and_the_held_out_slice(tmp_path):
    from ift_utils.plots import plot_fit_curves

    fit_curve = pd.DataFrame({"group": ["harmonious", "incompatible", "incompatible", "incompatible"],
                              "epoch": [1, 1, 2, 3], "fit": [0.95, 0.3, 0.7, 0.92], "dev_acc": [0.5, 0.45, 0.5, 0.4]})
    fig = plot_fit_curves(fit_curve, 0.9)
    ax1, ax2 = fig.axes
    assert ax1.get_title() == "fit on own training facts" and ax2.get_title() == "accuracy on held-out fit_dev slice"
    assert any(list(line.get_ydata()) == [0.9, 0.9] for line in ax1.get_lines())  # the target
    assert len(ax2.get_lines()) >= 2
    _check(fig, tmp_path, "fit_curve")
    assert "fixed dose" in plot_fit_curves(fit_curve.iloc[:0], 0.9).axes[0].texts[0].get_text()
    no_dev = plot_fit_curves(fit_curve.assign(dev_acc=np.nan), None)
    assert "fit_dev: 0" in no_dev.axes[1].texts[0].get_text()
