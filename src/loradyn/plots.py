"""Figures from tidy tables. Each function takes a DataFrame (and an optional matplotlib ``ax``)
and returns the Figure; matplotlib is imported inside (Agg backend), so ``import loradyn`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .analysis import seed_stats

__all__ = [
    "plot_coord_check",
    "plot_feature_norms",
    "plot_lr_heatmap",
    "plot_metric_vs_lr",
    "plot_optimal_lr_vs_width",
    "plot_rank_lr",
    "save_figure",
]


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        try:
            matplotlib.use("Agg", force=True)
        except Exception:  # noqa: BLE001 - keep an interactive backend if switching fails
            pass
    import matplotlib.pyplot as plt

    return plt


def _fig_ax(ax, figsize=(6, 4)):
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def save_figure(fig: Any, path) -> None:
    """Save as PNG (dpi 120) and close."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)


def _short(col: str) -> str:
    return col.rsplit(".", 1)[-1]


def plot_metric_vs_lr(
    df: pd.DataFrame,
    *,
    lr: str = "optim.lr_a",
    metric: str = "final_train_loss",
    mode: str = "min",
    hue: str | Sequence[str] = "lora.init",
    panel: str | None = None,
    optimum: pd.DataFrame | None = None,
    band: str = "minmax",
    logy: bool = True,
    title: str | None = None,
):
    """The one metric-vs-learning-rate figure: seed mean vs ``lr`` (log2 axis), one line per
    ``hue`` group, a band over seeds (``"minmax"`` or ``"std"``), one panel per ``panel`` value.

    Failed or diverged trials count as the worst value (:func:`loradyn.analysis.seed_stats`), so a
    learning rate where any seed failed has no point. ``optimum`` (from
    :func:`loradyn.analysis.optimal_lr`, same hue/panel columns) draws each optimum as a dotted line.
    """
    plt = _plt()
    hue = [hue] if isinstance(hue, str) else list(hue)
    panels = sorted(df[panel].unique()) if panel else [None]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols if panel else 6, 3.0 * rows if panel else 4),
                             squeeze=False)
    by = [*([panel] if panel else []), *hue, lr]
    stats = seed_stats(df, by, metric=metric, mode=mode)
    for ax, pv in zip(axes.flat, panels):
        sub = stats if panel is None else stats[stats[panel] == pv]
        for key, g in sub.groupby(hue, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{_short(h)}={k}" for h, k in zip(hue, key))
            g = g.sort_values(lr)
            ok = np.isfinite(g["mean"])
            (line,) = ax.plot(g[lr][ok], g["mean"][ok], marker="o", ms=3, label=label)
            if band == "std":
                std = np.nan_to_num(g["std"][ok].to_numpy())
                lo, hi = g["mean"][ok] - std, g["mean"][ok] + std
                ax.fill_between(g[lr][ok], lo, hi, alpha=0.15, color=line.get_color())
            else:
                fin = np.isfinite(g["max"]) & np.isfinite(g["min"])
                ax.fill_between(g[lr][fin], g["min"][fin], g["max"][fin], alpha=0.2, color=line.get_color())
            if optimum is not None:
                o = optimum
                if panel:
                    o = o[o[panel] == pv]
                for h, k in zip(hue, key):
                    if h in o.columns:
                        o = o[o[h] == k]
                for v in o["lr_opt"].dropna():
                    ax.axvline(v, color=line.get_color(), ls=":", lw=1)
        ax.set_xscale("log", base=2)
        if logy and (stats["mean"][np.isfinite(stats["mean"])] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel(lr)
        ax.set_ylabel(f"{metric} (seed mean)")
        if panel:
            ax.set_title(f"{_short(panel)} = {pv}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _reference_lines(ax, xs: np.ndarray, anchor_y: float, exponents: Sequence[float], x_label: str) -> None:
    x0 = float(xs.min())
    grid = np.geomspace(xs.min(), xs.max(), 50)
    for e, style in zip(exponents, ("--", "-.", ":", (0, (1, 3)))):
        ax.plot(grid, anchor_y * (grid / x0) ** e, color="gray", ls=style, lw=1, label=f"∝ {x_label}^{e:g}")


def _plot_optima(ax, opt: pd.DataFrame, x: str, hue: str, fits: pd.DataFrame | None, *, label_prefix: str) -> None:
    """One line of optimal lr vs ``x`` per ``hue`` group (fitted slope in the legend); optima on a
    grid edge are ringed in red."""
    for key, g in opt.groupby(hue, sort=True):
        g = g.sort_values(x)
        label = f"{label_prefix}{key}"
        if fits is not None and hue in fits.columns:
            f = fits[fits[hue] == key]
            if len(f):
                label += f" (slope {float(f['slope'].iloc[0]):.2f})"
        ax.plot(g[x], g["lr_opt"], marker="o", label=label)
        edge = g["edge"].astype(str) != ""
        if edge.any():
            ax.scatter(g[x][edge], g["lr_opt"][edge], s=80, facecolors="none", edgecolors="red", zorder=3)


def _finish_optima_axes(fig, ax, x: str, title: str | None, *, legend_size: int):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel(_short(x))
    ax.set_ylabel("optimal learning rate")
    ax.legend(fontsize=legend_size)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_optimal_lr_vs_width(
    opt: pd.DataFrame,
    *,
    x: str = "task.width",
    hue: str = "lora.init",
    exponents: Sequence[float] = (-0.5, -1.0),
    fits: pd.DataFrame | None = None,
    title: str | None = None,
    ax=None,
):
    """Optimal lr vs width (log2–log2) per ``hue``, with reference lines ∝ n^-1/2 and ∝ n^-1.

    ``opt`` is the output of :func:`loradyn.analysis.optimal_lr`; optima at a grid edge are drawn
    hollow. ``fits`` (from :func:`loradyn.analysis.fit_log2_slope`) adds the fitted slopes to the legend.
    """
    fig, ax = _fig_ax(ax)
    xs = opt[x].astype(float).to_numpy()
    _plot_optima(ax, opt, x, hue, fits, label_prefix=f"{_short(hue)}=")
    finite = opt["lr_opt"].astype(float)
    anchor = float(np.nanmax(finite[opt[x] == opt[x].min()])) if len(opt) else 1.0
    if np.isfinite(anchor) and len(xs):
        _reference_lines(ax, xs, anchor * 1.5, exponents, "n" if _short(x) == "width" else _short(x))
    return _finish_optima_axes(fig, ax, x, title, legend_size=8)


def plot_rank_lr(
    opt: pd.DataFrame,
    *,
    x: str = "lora.rank",
    hue: str = "variant",
    reference: float | None = None,
    fits: pd.DataFrame | None = None,
    title: str | None = None,
    ax=None,
):
    """Optimal lr vs rank per ``hue`` (e.g. "A, α=1"), reference lines ∝ r^-1/2, r^-1/4, r^0,
    and a horizontal line at the full-finetuning optimum ``reference``."""
    fig, ax = _fig_ax(ax)
    _plot_optima(ax, opt, x, hue, fits, label_prefix="")
    xs = opt[x].astype(float).to_numpy()
    if len(xs):
        anchor = float(np.nanmax(opt["lr_opt"].astype(float)))
        _reference_lines(ax, xs, anchor * 1.5, (-0.5, -0.25, 0.0), "r")
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="black", lw=1.5, label="full finetuning (Adam)")
    return _finish_optima_axes(fig, ax, x, title, legend_size=7)


def plot_lr_heatmap(
    df: pd.DataFrame,
    *,
    lr_a: str = "optim.lr_a",
    lr_b: str = "optim.lr_b",
    metric: str = "final_train_loss",
    title: str | None = None,
    ax=None,
):
    """Heatmap of the seed-mean log10 ``metric`` (lower is better) over (lr_a, lr_b); the diagonal
    lr_a = lr_b is drawn, the best cell is starred, and cells within 1 % of the best are outlined."""
    fig, ax = _fig_ax(ax, figsize=(5, 4.2))
    stats = seed_stats(df, [lr_a, lr_b], metric=metric)
    grid = stats.pivot(index=lr_b, columns=lr_a, values="mean").sort_index().sort_index(axis=1)
    values = np.log10(grid.to_numpy(dtype=float))
    values[~np.isfinite(values)] = np.nan
    xa, yb = np.log2(grid.columns.to_numpy(float)), np.log2(grid.index.to_numpy(float))
    im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis_r",
                   extent=(xa.min() - 0.5 * _step(xa), xa.max() + 0.5 * _step(xa), yb.min() - 0.5 * _step(yb), yb.max() + 0.5 * _step(yb)))
    fig.colorbar(im, ax=ax, label=f"log10 {metric} (seed mean)")
    lo, hi = max(xa.min(), yb.min()), min(xa.max(), yb.max())
    ax.plot([lo, hi], [lo, hi], color="white", ls="--", lw=1.5, label="lr_b = lr_a")
    if np.isfinite(values).any():
        j, i = np.unravel_index(np.nanargmin(values), values.shape)
        near = values <= values[j, i] + math.log10(1.01)
        jj, ii = np.nonzero(near)
        ax.scatter(xa[ii], yb[jj], s=30, facecolors="none", edgecolors="white", lw=0.8)
        ax.scatter([xa[i]], [yb[j]], marker="*", s=160, color="red", label="best")
    ax.set_xlabel(f"log2 {_short(lr_a)}")
    ax.set_ylabel(f"log2 {_short(lr_b)}")
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def _step(v: np.ndarray) -> float:
    d = np.diff(np.unique(v))
    return float(d.min()) if len(d) else 1.0


FEW_POINTS = 30  # series with at most this many points are drawn with markers


def _value_scale(ax, values: np.ndarray) -> str:
    """A y scale the values can be drawn on: ``log`` when every finite value is positive, else
    ``symlog`` (linear through 0, log above the smallest positive value) when some are, else
    linear; an axis without finite values gets a note instead of a (warning) log scale."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        note = "no finite values" if len(values) else "no records"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="gray")
        return "linear"
    values = finite
    positive = values[values > 0]
    if len(positive) == len(values):
        ax.set_yscale("log")
        return "log"
    if len(positive):
        ax.set_yscale("symlog", linthresh=float(positive.min()))
        return "symlog"
    return "linear"


def plot_feature_norms(
    probes: pd.DataFrame,
    curves: pd.DataFrame | None = None,
    *,
    hue: str | Sequence[str] = ("lora.init", "task.width"),
    features: Sequence[str] = ("z_a", "z_b"),
    stat: str = "rms",
    title: str | None = None,
):
    """Z_A / Z_B norms over the steps (one panel per feature) and the train loss (last panel).

    ``probes`` has columns ``step, feature, stat, value`` plus the ``hue`` columns (seed rows are
    averaged, with a min–max band); ``curves`` has ``step, metric, value`` plus ``hue``.
    Non-finite values are left out; series with few points get markers (a single step: a marker
    and a min–max bar). The y axis is logarithmic when all of a panel's values are positive,
    ``symlog`` when some are 0 (e.g. Z_B at step 0 under Init[A]), linear otherwise.
    """
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    hue = [hue] if isinstance(hue, str) else list(hue)
    n_panels = len(features) + (1 if curves is not None else 0)
    fig, axes = plt.subplots(1, n_panels, figsize=(4 * n_panels, 3.4), squeeze=False)
    axes = axes[0]
    colors: dict[Any, Any] = {}

    def draw(ax, frame, ylabel):
        values = frame["value"].to_numpy(dtype=float)
        frame = frame[np.isfinite(values)]
        for key, g in frame.groupby(hue, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            agg = g.groupby("step")["value"].agg(["mean", "min", "max"]).reset_index()
            label = ", ".join(f"{_short(h)}={k}" for h, k in zip(hue, key))
            kw = {"color": colors[key]} if key in colors else {}
            if len(agg) <= FEW_POINTS:
                kw.update(marker="o", ms=4 if len(agg) > 1 else 6)
            (line,) = ax.plot(agg["step"], agg["mean"], label=label, **kw)
            colors.setdefault(key, line.get_color())
            if len(agg) > 1:
                ax.fill_between(agg["step"], agg["min"], agg["max"], alpha=0.2, color=line.get_color())
            else:
                ax.vlines(agg["step"], agg["min"], agg["max"], color=line.get_color(), alpha=0.4, lw=4)
        _value_scale(ax, values)
        steps = np.unique(frame["step"].to_numpy(dtype=float))
        if 0 < len(steps) <= 8:  # few recorded steps: a tick at each (and room around a single one)
            ax.set_xticks(steps)
            if len(steps) == 1:
                ax.set_xlim(steps[0] - 1, steps[0] + 1)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)

    sel = probes[probes["stat"] == stat]
    for ax, feature in zip(axes, features):
        draw(ax, sel[sel["feature"] == feature], f"{stat}({feature}) (data mean)")
        ax.set_title(feature)
    if curves is not None:
        ax = axes[-1]
        draw(ax, curves[curves["metric"] == "train_loss"], "train loss")
        ax.set_title("train loss")
    labelled = next((ax for ax in axes if ax.get_legend_handles_labels()[0]), None)
    if labelled is not None:
        labelled.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_coord_check(
    table: pd.DataFrame,
    *,
    row: str | None = None,
    features: Sequence[str] = ("z_a", "z_b", "dz_b", "dz_b_a", "dz_b_b"),
    steps: Sequence[int] | None = None,
    title: str | None = None,
):
    """μP-style coordinate check: RMS vs width on log–log axes, one line per step (seed means,
    min–max band), one panel per feature, one panel row per value of ``row`` (e.g. the lr exponent).

    ``table`` is :func:`loradyn.coord_check`'s (columns ``width, seed, step, feature, value`` and
    ``row``); module rows are averaged. ``steps``: the steps drawn (default: every recorded one).
    """
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, LogLocator

    rows = [None] if row is None else list(dict.fromkeys(table[row]))
    fig, axes = plt.subplots(len(rows), len(features), figsize=(3.3 * len(features), 2.8 * len(rows)),
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        part = table if row is None else table[table[row] == r]
        for j, feature in enumerate(features):
            ax = axes[i][j]
            sel = part[(part["feature"] == feature) & np.isfinite(part["value"]) & (part["value"] > 0)]
            shown = sorted(set(sel["step"])) if steps is None else [s for s in steps if s in set(sel["step"])]
            for k, step in enumerate(shown):
                runs = sel[sel["step"] == step].groupby(["width", "seed"])["value"].mean().reset_index()
                agg = runs.groupby("width")["value"].agg(["mean", "min", "max"]).reset_index()
                color = cmap(k / max(1, len(shown) - 1))
                ax.plot(agg["width"], agg["mean"], marker="o", ms=3, color=color, label=f"t={step}")
                ax.fill_between(agg["width"], agg["min"], agg["max"], color=color, alpha=0.15)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.minorticks_off()  # (minor log ticks on 15+ panels cost seconds at save time)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
            ax.tick_params(labelsize=7)
            ax.set_title(feature if row is None else f"{feature}, {row}={r:g}", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel("width", fontsize=8)
            if j == 0:
                ax.set_ylabel("RMS (data mean)", fontsize=8)
    handles = axes[0][0].get_legend_handles_labels()[0]
    if handles:
        axes[0][0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.08, top=0.9 if title else 0.95, wspace=0.3, hspace=0.45)
    return fig
