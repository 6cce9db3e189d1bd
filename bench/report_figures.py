"""The report's figures, drawn so that the same results always give the same bytes.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, so no
global backend or figure state is touched), and saved with the fixed SVG hash salt,
no date or software metadata and a fixed dpi: a regenerated report differs from the
previous one only where the results do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .report_stats import t_interval

DPI = 100
DETERMINISTIC_RC = {
    "svg.hashsalt": "bench-report",  # SVG element ids from a fixed salt, not a random one
    "svg.fonttype": "path",          # glyphs as paths: no dependence on the viewer's fonts
    "path.simplify": True,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg without timestamps or version stamps."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    with mpl.rc_context(DETERMINISTIC_RC):
        fig.savefig(png, dpi=DPI, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None})
    return [png, svg]


def palette(methods: list[str]) -> dict[str, tuple]:
    """A fixed colour per method, by its position in the display order."""
    return dict(zip(methods, sns.color_palette("tab10", max(len(methods), 1))))


def _lines(ax, df: pd.DataFrame, x: str, y: str, order: list[str], colors: dict) -> None:
    """Mean over seeds with the 95% t-interval band (seaborn, deterministic errorbar)."""
    if df[y].notna().sum() == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        return
    sns.lineplot(data=df, x=x, y=y, hue="method", hue_order=order, palette=colors, errorbar=t_interval,
                 ax=ax, legend=False, marker="o", markersize=3)
    # A method evaluated once (a run scored again by `bench evaluate`) is one point: drawn larger.
    for method, rows in df.dropna(subset=[y]).groupby("method"):
        if rows["step"].nunique() == 1 and method in colors:
            ax.plot(rows[x].mean(), rows[y].mean(), marker="o", markersize=7, color=colors[method])


def _legend(fig: Figure, methods: list[str], colors: dict, title: str = "method",
            loc: str = "outside right upper") -> None:
    """One legend for all panels, outside them, listing only the methods drawn."""
    handles = [Line2D([], [], color=colors[m], marker="o", markersize=3, label=m) for m in methods]
    fig.legend(handles=handles, title=title, loc=loc, fontsize=8)


def _drawn(make: Callable[[], tuple[Figure, list]], stem: Path) -> list[Path]:
    """Build and save a figure inside the deterministic style."""
    with mpl.rc_context(DETERMINISTIC_RC), sns.axes_style("whitegrid"):
        fig = make()
        return save(fig, stem)


def _cap(ax, top: float | None) -> None:
    """End the y axis at `top` (100 for an accuracy in percent), where a band over few seeds
    would pass a value the metric cannot take."""
    if top is not None and ax.get_ylim()[1] > top:
        ax.set_ylim(top=top + 0.5)


def learning_curves(df: pd.DataFrame, order: list[str], ylabel: str, title: str, stem: Path,
                    top: float | None = None) -> list[Path]:
    """The metric against meta-iterations and against meta-training seconds, side by side."""
    def make() -> Figure:
        fig, axes = _figure(1, 2, 12, 4.2)
        colors = palette(order)
        _lines(axes[0, 0], df, "step", "value", order, colors)
        axes[0, 0].set(xlabel="meta-iteration", ylabel=ylabel)
        _lines(axes[0, 1], df, "wall_s_mean", "value", order, colors)
        axes[0, 1].set(xlabel="meta-training seconds (mean over seeds)", ylabel=ylabel)
        for ax in axes[0]:
            _cap(ax, top)
        _legend(fig, [m for m in order if m in set(df["method"])], colors)
        fig.suptitle(title, fontsize=10)
        return fig
    return _drawn(make, stem)


def gradient_combinations(df: pd.DataFrame, order: list[str], ylabel: str, title: str, stem: Path) -> list[Path]:
    """Reptile paper section 6.2's figure: one curve per meta-gradient combination."""
    def make() -> Figure:
        fig, axes = _figure(1, 1, 9.5, 4.5)
        colors = dict(zip(order, sns.color_palette("tab10" if len(order) <= 10 else "husl", len(order))))
        _lines(axes[0, 0], df, "step", "value", order, colors)
        axes[0, 0].set(xlabel="meta-iteration", ylabel=ylabel)
        # A long legend, centred beside the axes so that it clears the title.
        _legend(fig, [m for m in order if m in set(df["method"])], colors, title="meta-gradient",
                loc="outside right center")
        fig.suptitle(title, fontsize=10)
        return fig
    return _drawn(make, stem)


def variance(var: pd.DataFrame, std: pd.DataFrame, order: list[str], curve_label: str, title: str,
             stem: Path) -> list[Path]:
    """Meta-gradient mean norm, variance and signal-to-noise ratio against step, beside the
    across-seed standard deviation of the learning curves (PAPERS.md section 5: sums of more
    gradients should have lower variance and learn faster)."""
    def make() -> Figure:
        fig, axes = _figure(2, 2, 11, 7)
        colors = palette(order)
        for ax, col, label in zip(axes.flat, ("mean_norm", "variance", "snr"),
                                  ("mean meta-gradient norm", "meta-gradient variance", "signal-to-noise ratio")):
            present = var.dropna(subset=[col])
            _lines(ax, present, "step", col, order, colors)
            if len(present) and (present[col] > 0).all():  # these statistics span decades
                ax.set_yscale("log")
            ax.set(xlabel="meta-iteration", ylabel=label)
        ax = axes[1, 1]
        if len(std):
            sns.lineplot(data=std, x="step", y="std", hue="method", hue_order=order, palette=colors,
                         ax=ax, legend=False, marker="o", markersize=3)
        else:
            ax.text(0.5, 0.5, "needs >= 2 seeds per method", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="meta-iteration", ylabel=f"std over seeds of {curve_label}")
        _legend(fig, [m for m in order if m in set(var["method"]) | set(std["method"])], colors)
        fig.suptitle(title, fontsize=10)
        return fig
    return _drawn(make, stem)


def sine_predictions(panels: list[tuple[str, pd.DataFrame]], title: str, stem: Path) -> list[Path]:
    """Per method: the true sine, the support points and the fit after each number of steps."""
    def make() -> Figure:
        fig, axes = _figure(1, len(panels), 5.5 * len(panels), 4.2)
        for ax, (name, df) in zip(axes[0], panels):
            true = df[df["kind"] == "true"].sort_values("x")
            ax.plot(true["x"], true["y"], color="black", lw=2, label="true")
            preds = df[df["kind"] == "pred"]
            steps = sorted(int(s) for s in pd.to_numeric(preds["steps"], errors="coerce").dropna().unique())
            for s, color in zip(steps, sns.color_palette("crest", max(len(steps), 1))):
                p = preds[pd.to_numeric(preds["steps"], errors="coerce") == s].sort_values("x")
                ax.plot(p["x"], p["y"], color=color, lw=1.2, label=f"after {s} steps")
            sup = df[df["kind"] == "support"]
            ax.scatter(sup["x"], sup["y"], color="crimson", zorder=3, s=18, label="support")
            ax.set(title=name, xlabel="x", ylabel="y")
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        return fig
    return _drawn(make, stem)
