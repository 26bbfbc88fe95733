"""The study's figures (paper Fig. 2/3/4 and two probe diagnostics) and an atomic figure writer.

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot state, so it works under the
Agg backend and in papermill runs without leaking figures) and returns it; notebooks display it and
``save_figure`` writes PNG + SVG. Error bars: seaborn's bootstrap 95 % CI over seeds (``seed=0`` so the
same table gives the same picture) for accuracies of fine-tuned models; Wilson 95 % intervals for the
accuracy of a bin of probe questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .correlation import RATIO_GROUPS, final_epoch, ordered_unique, per_group_fits, with_consistency
from .io import atomic_path
from .metrics import accuracy_ci
from .verdict import CLAIM_CONTEXTUALIZED, CLAIM_GENERAL_VS_NO_IFT, CLAIM_HARMONIOUS, CLAIM_SELF_ALIGNING

GROUP_ORDER = ("harmonious", "incompatible", "self_aligning", "contextualized")
CONTROL_ORDER = ("no_ift", "general_only")
CONTROL_STYLE = {  # reference lines of the controls: (colour, line style, label)
    "no_ift": ("0.15", ":", "no IFT (0-shot, chat template)"),
    "general_only": ("#8c564b", "-.", "general data only"),
}
BASE_LABEL = "k-shot base probe"
GROUP_LABELS = {
    "no_ift": "no IFT",
    "general_only": "general only",
    "harmonious": "harmonious",
    "incompatible": "incompatible",
    "self_aligning": "self-aligning",
    "contextualized": "contextualized",
    "mixture": "mixture",
}
TEST_SET_COLORS = {"HOMO": "#1b9e77", "ID": "#d95f02", "XD": "#e7298a", "OOD": "#7570b3"}
CLAIM_SHORT = {CLAIM_HARMONIOUS: "H − I", CLAIM_SELF_ALIGNING: "S − I", CLAIM_CONTEXTUALIZED: "C − I",
               CLAIM_GENERAL_VS_NO_IFT: "G − N"}
_CI = ("ci", 95)
_N_BOOT = 1000


SAVE_DPI = 150


class SavedFigure(NamedTuple):
    """The two files `save_figure` wrote. A notebook shows it as the PNG on disk (at 100 dpi), so a figure is not
    drawn a third time only to be displayed (a multi-panel figure takes 0.5-1 s a drawing on a 2-core CPU)."""

    png: Path
    svg: Path

    def _repr_png_(self) -> tuple[bytes, dict[str, int]]:
        data = self.png.read_bytes()
        width = int.from_bytes(data[16:20], "big")  # IHDR width, in pixels
        return data, {"width": round(width * 100 / SAVE_DPI)}


def save_figure(fig: Figure, folder: str | Path, name: str) -> SavedFigure:
    """Write a figure as `name`.png (dpi 150) and `name`.svg via temporary files renamed when complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    with mpl.rc_context({"svg.hashsalt": "ift_utils"}):  # stable SVG ids: same table, same bytes
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=SAVE_DPI, bbox_inches="tight")
        with atomic_path(svg) as tmp:
            fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    return SavedFigure(png, svg)


def _percent(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of an eval table's final models with ft_pct and base_pct (accuracy in points) added."""
    out = final_epoch(df).copy()
    out["ft_pct"] = 100.0 * out["ft_acc"].astype(float)
    out["base_pct"] = 100.0 * out["base_acc"].astype(float)
    return out


def _empty_note(ax: Axes, text: str) -> None:
    """Write a centred note on an axis that has nothing to show."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")


# ------------------------------------------------------------------------------------ Fig. 2 / Fig. 4
def plot_accuracy_vs_ratio(eval_table: pd.DataFrame, model: str | None = None) -> Figure:
    """Fine-tuned accuracy vs the self-aligning ratio, one panel per test set (rows) × domain (cols), as Fig. 2/4."""
    data = _percent(eval_table)
    if model is not None:
        data = data[data["model"] == model]
    controls = data[data["group"].isin(CONTROL_ORDER)]
    data = data[data["group"].isin(RATIO_GROUPS) & data["ratio"].notna()]
    domains = ordered_unique(data["domain"]) if len(data) else ["(none)"]
    test_sets = ordered_unique(data["test_set"]) if len(data) else ["(none)"]
    models = ordered_unique(data["model"]) if len(data) else []
    palette = dict(zip(models, sns.color_palette("deep", max(len(models), 1)), strict=False))
    fig = Figure(figsize=(3.2 * len(domains) + 0.8, 2.6 * len(test_sets) + 0.6), layout="constrained")
    axes = fig.subplots(len(test_sets), len(domains), squeeze=False, sharex=True)
    for i, ts in enumerate(test_sets):
        for j, dom in enumerate(domains):
            ax = axes[i, j]
            sub = data[(data["test_set"] == ts) & (data["domain"] == dom)]
            if sub.empty:
                _empty_note(ax, "no runs")
            else:
                sns.lineplot(
                    data=sub, x="ratio", y="ft_pct", hue="model", hue_order=models, palette=palette,
                    errorbar=_CI, err_style="bars", marker="o", seed=0, n_boot=_N_BOOT, ax=ax,
                    legend=(i == 0 and j == len(domains) - 1),
                )
                for m, base in sub.groupby("model")["base_pct"].mean().items():
                    ax.axhline(base, ls="--", lw=1, color=palette.get(m, "0.3"), label=f"{m}: {BASE_LABEL}")
            _control_lines(ax, controls[(controls["test_set"] == ts) & (controls["domain"] == dom)])
            if i == 0 and j == len(domains) - 1 and ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=7, loc="best")
            ax.set_title(f"{dom} · {ts}", fontsize=10)
            ax.set_xlabel("self-aligning ratio r" if i == len(test_sets) - 1 else "")
            ax.set_ylabel("accuracy after IFT (%)" if j == 0 else "")
    fig.suptitle("Accuracy vs share of self-aligning data (dashed: k-shot base probe; dotted: no IFT; dash-dot: "
                 "general data only; bars: 95% CI over seeds)", fontsize=10)
    return fig


def _control_lines(ax: Axes, controls: pd.DataFrame) -> None:
    """Horizontal reference lines at the mean accuracy of each control present (never a ratio condition)."""
    for group in CONTROL_ORDER:
        vals = controls.loc[controls["group"] == group, "ft_pct"]
        if len(vals):
            color, style, label = CONTROL_STYLE[group]
            ax.axhline(float(vals.mean()), ls=style, lw=1.2, color=color, label=label)


# ----------------------------------------------------------------------------------------------- Fig. 3
def plot_consistency_vs_accuracy(
    eval_table: pd.DataFrame, groups: Sequence[str] = RATIO_GROUPS, with_kl: bool = True
) -> Figure:
    """Post-IFT accuracy vs knowledge consistency with one OLS line per test set (Fig. 3): consistency against the
    k-shot probe (the paper's), and against the no_ift control when the eval table has it; optional KL panels."""
    data = _percent(with_consistency(eval_table))
    data = data[data["group"].isin(list(groups))]
    xs = [("consistency", "consistency vs k-shot probe (100 × rank corr.)")]
    if "consistency_no_ift" in data.columns and data["consistency_no_ift"].notna().any():
        xs.append(("consistency_no_ift", "consistency vs no_ift (100 × rank corr.)"))
    if with_kl:
        xs.append(("kl", "KL(k-shot probe ‖ fine-tuned), nats"))
        if "kl_no_ift" in data.columns and data["kl_no_ift"].notna().any():
            xs.append(("kl_no_ift", "KL(no_ift ‖ fine-tuned), nats"))
    fig = Figure(figsize=(5.0 * len(xs), 4.2), layout="constrained")
    axes = fig.subplots(1, len(xs), squeeze=False)[0]
    test_sets = ordered_unique(data["test_set"]) if len(data) else []
    for ax, (col, label) in zip(axes, xs, strict=True):
        if data.empty:
            _empty_note(ax, "no runs")
        else:
            sns.scatterplot(data=data, x=col, y="ft_pct", hue="test_set", hue_order=test_sets,
                            palette=_test_set_palette(test_sets), alpha=0.6, s=22, legend=False, ax=ax)
            fits = per_group_fits(data, y="ft_pct", x=col, group="test_set")
            for fit in fits.itertuples():
                if not np.isfinite(fit.slope):
                    continue
                sub = data.loc[data["test_set"] == fit.group, col].astype(float).dropna()
                grid = np.linspace(sub.min(), sub.max(), 20)
                ci = f" [{fit.slope_lo:.2f}, {fit.slope_hi:.2f}]" if np.isfinite(fit.slope_lo) else ""
                r2 = f", R² {fit.r2:.2f}" if np.isfinite(fit.r2) else ""
                ax.plot(grid, fit.intercept + fit.slope * grid, color=_test_set_palette([fit.group])[fit.group],
                        lw=2, label=f"{fit.group}: slope {fit.slope:.2f}{ci}{r2} (n={fit.n})")
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=7, loc="best")
            else:
                _empty_note(ax, f"no fit: {col} does not vary")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy after IFT (%)")
    fig.suptitle("Knowledge consistency vs accuracy after IFT (one OLS line per test set)", fontsize=11)
    return fig


def _test_set_palette(test_sets: Sequence[str]) -> dict[str, Any]:
    """Fixed colours for HOMO/ID/OOD, seaborn colours for anything else."""
    extra = sns.color_palette("dark", max(len(test_sets), 1))
    return {t: TEST_SET_COLORS.get(t, extra[i]) for i, t in enumerate(test_sets)}


# ----------------------------------------------------------------------------------------- group bars
def plot_group_comparison(eval_table: pd.DataFrame, differences: pd.DataFrame | None = None) -> Figure:
    """Accuracy per IFT group and test set with 95% CIs, beside the verdict's differences (`differences`, rows
    of study_verdict) vs the paper's; a difference whose interval is not estimable is drawn without bars."""
    data = _percent(eval_table)
    data = data[data["group"].isin((*CONTROL_ORDER, *GROUP_ORDER))]
    present = [g for g in (*CONTROL_ORDER, *GROUP_ORDER) if g in set(data["group"])]
    test_sets = ordered_unique(data["test_set"]) if len(data) else []
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    ax_bar, ax_diff = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1.0]})
    if data.empty:
        _empty_note(ax_bar, "no runs")
    else:
        plot_data = data.assign(group=data["group"].map(GROUP_LABELS))
        colors = dict(zip(GROUP_ORDER, sns.color_palette("deep", len(GROUP_ORDER)), strict=True))
        colors.update({g: CONTROL_STYLE[g][0] for g in CONTROL_ORDER})
        sns.barplot(data=plot_data, x="test_set", y="ft_pct", hue="group", order=test_sets,
                    hue_order=[GROUP_LABELS[g] for g in present], errorbar=_CI, seed=0, n_boot=_N_BOOT,
                    capsize=0.1, palette={GROUP_LABELS[g]: colors[g] for g in present}, ax=ax_bar)
        top = float(data.groupby(["test_set", "group"])["ft_pct"].mean().max())
        ax_bar.set_ylim(0, min(100.0, top * 1.25) if top > 0 else 1.0)
        ax_bar.legend(fontsize=7, title=None, ncol=min(len(present), 3), loc="upper center", frameon=False)
    ax_bar.set_xlabel("test set")
    ax_bar.set_ylabel("accuracy (%)")
    ax_bar.set_title("Accuracy by group, controls first (95% CI over seeds)", fontsize=10)

    diffs = pd.DataFrame(columns=["claim", "test_set"]) if differences is None else differences
    diffs = diffs[diffs["claim"].isin(CLAIM_SHORT) & (diffs["test_set"] != "all")].reset_index(drop=True)
    if diffs.empty:
        _empty_note(ax_diff, "no paired differences")
    else:
        x = np.arange(len(diffs))
        ours = diffs["ours"].astype(float).to_numpy()
        lo = np.nan_to_num(ours - diffs["lo"].astype(float).to_numpy(), nan=0.0)
        hi = np.nan_to_num(diffs["hi"].astype(float).to_numpy() - ours, nan=0.0)
        ax_diff.bar(x - 0.2, np.nan_to_num(ours), 0.4, yerr=[lo, hi], capsize=3, label="ours (95% CI)",
                    color=["0.35" if c == CLAIM_GENERAL_VS_NO_IFT else "#4c72b0" for c in diffs["claim"]])
        ax_diff.bar(x + 0.2, np.nan_to_num(diffs["paper"].astype(float).to_numpy()), 0.4, label="paper",
                    color="0.7")
        for xi, v, l_ in zip(x, ours, diffs["lo"].astype(float), strict=True):
            if not np.isfinite(l_):  # no interval: say so instead of drawing a bar of zero width
                ax_diff.annotate("not\nestimable", (xi - 0.2, np.nan_to_num(v)), ha="center", va="bottom",
                                 fontsize=6, color="#c44e52")
        if "mde" in diffs.columns:
            mde = diffs["mde"].astype(float).to_numpy()
            ax_diff.scatter(x - 0.2, mde, marker="_", s=120, color="#c44e52", zorder=3,
                            label="minimum detectable effect")
        ax_diff.axhline(0, color="black", lw=0.8)
        ax_diff.set_xticks(x, [f"{CLAIM_SHORT[c].replace(' ', '')}\n{t}"  # unspaced: 16 labels must not touch
                               for c, t in zip(diffs["claim"], diffs["test_set"], strict=True)], fontsize=6.5)
        ax_diff.legend(fontsize=8)
    ax_diff.set_ylabel("difference in accuracy (points)")
    ax_diff.set_title("Differences vs incompatible (G − N: general only − no IFT), ours and the paper's",
                      fontsize=9)
    return fig


# ------------------------------------------------------------------------------- was it learned? epochs
def plot_accuracy_vs_fit(train_fit: pd.DataFrame, eval_table: pd.DataFrame) -> Figure:
    """Test accuracy against the share of a cell's own training questions it fits, per group (one panel per test
    set; every evaluated epoch is a point, lines join a cell's epochs)."""
    keys = ["model", "domain", "condition", "group", "seed", "epoch"]
    missing = sorted(set(keys + ["fit"]) - set(train_fit.columns))
    if missing:
        raise ValueError(f"train_fit table lacks column(s) {missing}")
    ev = eval_table if "epoch" in eval_table.columns else eval_table.assign(epoch=np.nan)
    merged = ev.merge(train_fit[keys + ["fit"]], on=keys, how="inner")
    merged = merged[merged["group"].isin(GROUP_ORDER + ("mixture",))].dropna(subset=["fit"])
    merged = merged.assign(ft_pct=100.0 * merged["ft_acc"].astype(float), fit_pct=100.0 * merged["fit"])
    test_sets = ordered_unique(merged["test_set"]) if len(merged) else ["(none)"]
    groups = [g for g in (*GROUP_ORDER, "mixture") if g in set(merged["group"])]
    colors = dict(zip(groups, sns.color_palette("deep", max(len(groups), 1)), strict=False))
    fig = Figure(figsize=(3.6 * len(test_sets) + 1.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(test_sets), squeeze=False, sharex=True)[0]
    for ax, ts in zip(axes, test_sets, strict=True):
        sub = merged[merged["test_set"] == ts]
        if sub.empty:
            _empty_note(ax, "no cells with a training fit")
        for g in groups:
            part = sub[sub["group"] == g]
            for _, cell in part.groupby(["model", "domain", "condition", "seed"]):
                cell = cell.sort_values("epoch")
                ax.plot(cell["fit_pct"], cell["ft_pct"], color=colors[g], lw=0.8, alpha=0.5)
            if len(part):
                ax.scatter(part["fit_pct"], part["ft_pct"], color=colors[g], s=18,
                           label=GROUP_LABELS.get(g, g))
        ax.set_title(ts, fontsize=10)
        ax.set_xlabel("own training questions fitted (%)")
    axes[0].set_ylabel("test accuracy (%)")
    if groups:
        axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle("Was it learned? Test accuracy against the fitted share of the cell's own training facts",
                 fontsize=11)
    return fig


def has_epochs(eval_table: pd.DataFrame) -> bool:
    """True when some trained cell of the eval table was evaluated at more than one epoch (eval_epochs was used);
    the untrained no_ift control's own epoch does not count."""
    if "epoch" not in eval_table.columns or eval_table.empty:
        return False
    cells = eval_table[eval_table["group"] != "no_ift"].dropna(subset=["epoch"])
    keys = [c for c in ("model", "domain", "condition", "seed") if c in cells.columns]
    return bool(len(cells)) and bool((cells.groupby(keys)["epoch"].nunique() > 1).any())


def plot_accuracy_vs_epoch(eval_table: pd.DataFrame) -> Figure:
    """Test accuracy per group against the evaluated epoch (one panel per test set), controls as reference lines."""
    data = eval_table.assign(ft_pct=100.0 * eval_table["ft_acc"].astype(float))
    controls = final_epoch(data[data["group"].isin(CONTROL_ORDER)])
    data = data[data["group"].isin((*GROUP_ORDER, "mixture")) & data["epoch"].notna()]
    test_sets = ordered_unique(data["test_set"]) if len(data) else ["(none)"]
    groups = [g for g in (*GROUP_ORDER, "mixture") if g in set(data["group"])]
    fig = Figure(figsize=(3.6 * len(test_sets) + 1.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(test_sets), squeeze=False, sharex=True)[0]
    for k, (ax, ts) in enumerate(zip(axes, test_sets, strict=True)):
        sub = data[data["test_set"] == ts]
        if sub.empty:
            _empty_note(ax, "no epochs")
        else:
            sns.lineplot(data=sub.assign(group=sub["group"].map(GROUP_LABELS)), x="epoch", y="ft_pct",
                         hue="group", hue_order=[GROUP_LABELS[g] for g in groups], errorbar=_CI, seed=0,
                         n_boot=_N_BOOT, marker="o", err_style="bars", legend=k == len(test_sets) - 1, ax=ax)
        _control_lines(ax, controls[controls["test_set"] == ts])
        if k == len(test_sets) - 1 and ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7, loc="best")
        ax.set_title(ts, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle("Test accuracy against training epoch (bars: 95% CI over replicates)", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------- probe figures
def _binned_accuracy(frame: pd.DataFrame, bin_col: str, value_col: str | None = None) -> pd.DataFrame:
    """Per bin: n, accuracy with its Wilson 95% interval, and the mean of value_col (if given)."""
    rows: list[dict[str, Any]] = []
    for b, sub in frame.groupby(bin_col, observed=True, sort=True):
        acc, lo, hi = accuracy_ci(sub["correct"].astype(bool).to_numpy())
        row = {"bin": b, "n": len(sub), "acc": acc, "lo": lo, "hi": hi}
        if value_col is not None:
            row["mean_" + value_col] = float(sub[value_col].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_bins(probe_frame: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width confidence bins with n, mean confidence, accuracy and its Wilson 95% interval."""
    data = probe_frame.dropna(subset=["confidence"]).copy()
    data["confidence"] = data["confidence"].astype(float).clip(0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    data["bin"] = pd.cut(data["confidence"], edges, include_lowest=True)
    if data.empty:
        return pd.DataFrame(columns=["bin", "n", "acc", "lo", "hi", "mean_confidence"])
    return _binned_accuracy(data, "bin", "confidence")


def plot_calibration(probe_frame: pd.DataFrame, n_bins: int = 10, hue: str | None = None) -> Figure:
    """Reliability diagram (accuracy vs confidence per bin, Wilson CIs) with the bin counts below and the ECE."""
    fig = Figure(figsize=(5.2, 5.6), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    parts = [(None, probe_frame)] if hue is None else list(probe_frame.groupby(hue, sort=True))
    colors = sns.color_palette("deep", max(len(parts), 1))
    width = 1.0 / n_bins
    for k, (name, part) in enumerate(parts):
        bins = calibration_bins(part, n_bins)
        if bins.empty:
            continue
        n_tot = bins["n"].sum()
        ece = float((bins["n"] / n_tot * (bins["acc"] - bins["mean_confidence"]).abs()).sum())
        label = f"{name + ': ' if name is not None else ''}ECE {ece:.3f} (n={n_tot})"
        yerr = [bins["acc"] - bins["lo"], bins["hi"] - bins["acc"]]
        ax.errorbar(bins["mean_confidence"], bins["acc"], yerr=yerr, marker="o", capsize=3, color=colors[k],
                    label=label)
        centers = np.array([iv.mid for iv in bins["bin"]])
        off = (k - (len(parts) - 1) / 2) * width / max(len(parts), 1)
        ax_n.bar(centers + off, bins["n"], width / max(len(parts), 1) * 0.9, color=colors[k])
    if probe_frame.empty:
        _empty_note(ax, "no probe rows")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Calibration of the probe (95% Wilson CIs)", fontsize=10)
    ax_n.set_xlabel("confidence (probability of the predicted option)")
    ax_n.set_ylabel("questions")
    return fig


def plot_accuracy_by_popularity(probe_frame: pd.DataFrame, n_bins: int = 5) -> Figure:
    """Probe accuracy per popularity quantile bin (Q1 = least popular) per domain, with Wilson 95% CIs."""
    domains = ordered_unique(probe_frame["domain"]) if len(probe_frame) else ["(none)"]
    fig = Figure(figsize=(3.4 * len(domains) + 0.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(domains), squeeze=False, sharey=True)[0]
    for ax, dom in zip(axes, domains, strict=True):
        sub = probe_frame[probe_frame["domain"] == dom]
        known = sub.dropna(subset=["popularity"])
        dropped = len(sub) - len(known)
        ax.set_title(f"{dom} (n={len(known)}" + (f", {dropped} without popularity)" if dropped else ")"),
                     fontsize=10)
        if known.empty:
            _empty_note(ax, "no popularity values")
            continue
        known = known.assign(q=pd.qcut(known["popularity"].astype(float), q=n_bins, labels=False,
                                       duplicates="drop"))
        bins = _binned_accuracy(known, "q")
        x = bins["bin"].astype(int).to_numpy() + 1
        ax.errorbar(x, bins["acc"], yerr=[bins["acc"] - bins["lo"], bins["hi"] - bins["acc"]], marker="o",
                    capsize=3)
        ax.set_xticks(x, [f"Q{i}" for i in x])
        ax.set_xlabel("popularity quantile (Q1 = least popular)")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("probe accuracy")
    fig.suptitle("Probe accuracy by entity popularity", fontsize=11)
    return fig


# ------------------------------------------------------------------------ differences against the fitted share
def plot_difference_vs_fit(eval_table: pd.DataFrame, train_fit: pd.DataFrame) -> Figure:
    """Each claim's difference from the incompatible group (points, per replicate and checkpoint) against the
    share of its own facts the incompatible group fitted at that checkpoint, one panel per test set."""
    keys = ["model", "domain", "seed", "epoch"]
    ev = eval_table if "epoch" in eval_table.columns else eval_table.assign(epoch=np.nan)
    acc = ev[ev["group"].isin(GROUP_ORDER)].groupby([*keys, "test_set", "group"])["ft_acc"].mean().unstack("group")
    inc_fit = train_fit[train_fit["group"] == "incompatible"].groupby(keys)["fit"].mean().rename("inc_fit")
    test_sets = ordered_unique(ev["test_set"]) if len(ev) else ["(none)"]
    fig = Figure(figsize=(3.6 * len(test_sets) + 1.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(test_sets), squeeze=False, sharex=True)[0]
    short = {"harmonious": "H − I", "self_aligning": "S − I", "contextualized": "C − I"}
    colors = dict(zip(short, sns.color_palette("deep", 3), strict=True))
    drawn = False
    if "incompatible" in getattr(acc, "columns", []):
        wide = acc.reset_index().merge(inc_fit.reset_index(), on=keys, how="inner")
        for ax, ts in zip(axes, test_sets, strict=True):
            sub = wide[wide["test_set"] == ts]
            for g, label in short.items():
                if g in sub.columns and sub[g].notna().any():
                    d = 100 * (sub[g] - sub["incompatible"])
                    ax.scatter(100 * sub["inc_fit"], d, s=18, color=colors[g], label=label)
                    drawn = True
            ax.axhline(0, color="black", lw=0.8)
            ax.set_title(ts, fontsize=10)
            ax.set_xlabel("incompatible facts fitted (%)")
    for ax in axes:
        if not ax.collections:
            _empty_note(ax, "no cells with a training fit")
    axes[0].set_ylabel("difference from incompatible (points)")
    if drawn:
        axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle("Each claim's difference against the incompatible group's fitted share (one point per replicate "
                 "and checkpoint)", fontsize=10)
    return fig


def plot_loss_curves(curves: pd.DataFrame, domains: Sequence[str] | None = None) -> Figure:
    """Training loss per step, one panel per domain, one line per condition (mean over replicates); `curves` has
    columns domain, condition, step, loss (`stages.training.loss_curves`)."""
    domains = list(domains) if domains is not None else ordered_unique(curves["domain"]) if len(curves) else []
    fig = Figure(figsize=(4 * max(len(domains), 1), 3.2), layout="constrained")
    axes = fig.subplots(1, max(len(domains), 1), squeeze=False)[0]
    if not domains:
        _empty_note(axes[0], "no training loss recorded")
        return fig
    for ax, d in zip(axes, domains, strict=True):
        part = curves[curves["domain"] == d]
        if part.empty:
            _empty_note(ax, f"{d}: no loss recorded")
        else:
            sns.lineplot(data=part, x="step", y="loss", hue="condition", ax=ax, errorbar=None)
        ax.set_title(d)
    return fig


def plot_fit_curves(fit_curve: pd.DataFrame, fit_target: float | None = None) -> Figure:
    """Per epoch, mean over cells of a group: fit on the cell's own training facts (left, with the target as a dotted
    line) and accuracy on the held-out `fit_dev` slice (right); `fit_curve` has columns group, epoch, fit, dev_acc
    (`stages.training.fit_curves`). Each epoch is marked, so a group that reached the target in one epoch is a
    point."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if fit_curve.empty:
        _empty_note(ax1, "every cell trained a fixed dose (no fit recorded)")
        _empty_note(ax2, "")
        return fig
    sns.lineplot(data=fit_curve, x="epoch", y="fit", hue="group", ax=ax1, errorbar=None, marker="o")
    has_dev = "dev_acc" in fit_curve and fit_curve["dev_acc"].notna().any()
    if has_dev:
        sns.lineplot(data=fit_curve, x="epoch", y="dev_acc", hue="group", ax=ax2, errorbar=None, legend=False,
                     marker="o")
    else:
        _empty_note(ax2, "no held-out slice (fit_dev: 0)")
    ax1.axhline(fit_target or 1, color="grey", ls=":")
    ax1.set_title("fit on own training facts")
    ax2.set_title("accuracy on held-out fit_dev slice")
    return fig
