"""Glue between a sweep's results table and :mod:`loradyn.analysis` / :mod:`loradyn.plots`.

:class:`SweepView` decides which columns of any sweep's table play which role (the learning rate
on the x axis, the series drawn as lines, the facets drawn as panels); the functions below hand
the matching columns to the one analysis and the one set of plots. Trials that did not finish
(status other than ``done``) or whose metric is not finite count as the worst value there.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["SweepView", "best_pair_table", "feature_norm_curves", "lr_heatmaps", "metric_vs_lr", "optimal_lr_table", "to_png"]

_PREFERRED_METRICS = ("final_train_loss", "final_loss", "train_loss", "test_loss", "loss", "val_loss")
MAX_PANELS = 12
MAX_LINES = 10
PANEL = "panel"  # the facets' label column added to the view's table (see SweepView.panel)


@dataclass
class SweepView:
    """Which columns of a results table play which role in the figures.

    Attributes:
        df: the results table (with a panel column added).
        metric, mode: the ranked metric and ``min``/``max``.
        lr: the learning-rate column on the x axis (``optim.lr_a`` when it varies), or None.
        series: columns that distinguish lines within a panel (``lora.init``, ``optim.lr_ratio``).
        facets: the other varying configuration columns; one panel per combination.
    """

    df: pd.DataFrame
    metric: str | None
    mode: str = "min"
    lr: str | None = None
    series: list[str] = field(default_factory=list)
    facets: list[str] = field(default_factory=list)

    @classmethod
    def from_results(cls, df: pd.DataFrame, *, metric: str | None = None, mode: str = "min") -> SweepView:
        cols = list(df.columns)
        seed_at = cols.index("seed")
        config = [c for c in cols[1:seed_at] if c != "sweep"]
        metrics = [c for c in cols[seed_at + 2:] if c not in ("error", "seconds")
                   and pd.api.types.is_numeric_dtype(df[c])]
        if metric not in metrics:
            metric = next((m for m in _PREFERRED_METRICS if m in metrics), metrics[0] if metrics else None)
        varying = [c for c in config if df[c].astype(str).nunique() > 1]
        lr = "optim.lr_a" if "optim.lr_a" in varying else next(
            (c for c in varying if "lr" in c.rsplit(".", 1)[-1] and "ratio" not in c and c != "optim.lr_b"), None)
        series = [c for c in ("lora.init", "optim.lr_ratio") if c in varying and c != lr]
        if "lora.init" in config and "lora.init" not in series:
            series.insert(0, "lora.init")
        skip = {lr, "optim.lr_b", *series}
        facets = [c for c in varying if c not in skip]
        df = df.copy()
        if len(facets) == 1:  # keep the values (numeric panels sort numerically)
            df[_panel_name(facets)] = df[facets[0]]
        else:
            df[_panel_name(facets)] = [_panel_value(tuple(r)) for r in df[facets].itertuples(index=False)] if facets else "all"
        if not series:
            df["sweep"] = "all"
            series = ["sweep"]
        return cls(df, metric, mode if mode in ("min", "max") else "min", lr, series, facets)

    @property
    def panel(self) -> str:
        """The column naming each row's panel: the facet names, e.g. ``width`` or ``width, rank``."""
        return _panel_name(self.facets)

    def heatmap_axes(self) -> tuple[str, str] | None:
        if self.lr == "optim.lr_a" and "optim.lr_ratio" in self.series and "optim.lr_b" in self.df:
            return "optim.lr_a", "optim.lr_b"
        return None

    def groups(self, by: list[str]):
        if not by:
            yield (), self.df
            return
        yield from ((k if isinstance(k, tuple) else (k,), g) for k, g in self.df.groupby(by, sort=True, dropna=False))


def _panel_name(facets: list[str]) -> str:
    return ", ".join(c.rsplit(".", 1)[-1] for c in facets) or PANEL


def _panel_value(key: tuple) -> str:
    return ", ".join(map(str, key))


def _label(cols: list[str], key: tuple) -> str:
    return ", ".join(f"{c.rsplit('.', 1)[-1]}={v}" for c, v in zip(cols, key)) or "all"


def optimal_lr_table(view: SweepView) -> pd.DataFrame:
    """Per facet and series: the optimal learning rate of the seed-mean metric
    (:func:`loradyn.analysis.optimal_lr`; refined by the quadratic over the near-optimal band when
    lower is better), with its 95 % seed-bootstrap CI (:mod:`loradyn.bootstrap`, 1000 resamples).

    Columns: facet and series columns, ``lr_grid_opt``, ``lr_opt``, ``log2_lr_opt``, ``log2_lr_lo``,
    ``log2_lr_hi`` (the CI; empty below two seeds), the metric's best seed mean (named after the
    metric), its seed std, ``n_seeds``, ``edge``.
    """
    if view.lr is None or view.metric is None:
        return pd.DataFrame()
    from ..analysis import optimal_lr

    by = view.facets + view.series
    refine = view.mode == "min"
    table = optimal_lr(view.df, by, lr=view.lr, metric=view.metric, mode=view.mode, refine=refine)
    table["log2_lr_lo"] = table["log2_lr_hi"] = float("nan")
    if "seed" in view.df and view.df["seed"].nunique() >= 2 and len(table):
        from ..bootstrap import OptimaBootstrap

        OptimaBootstrap(view.df, by, lr=view.lr, metric=view.metric, mode=view.mode, n_resamples=1000,
                        refine=refine).add_cis(table)
    table = table.rename(columns={"metric_opt": view.metric, "metric_opt_std": f"{view.metric}_std"})
    return table[[*by, "lr_grid_opt", "lr_opt", "log2_lr_opt", "log2_lr_lo", "log2_lr_hi", view.metric,
                  f"{view.metric}_std", "n_seeds", "edge"]]


def best_pair_table(view: SweepView) -> pd.DataFrame:
    """For lr_a x lr_b sweeps: the best (lr_a, lr_b) per facet and init, and the best diagonal pair
    (:func:`loradyn.analysis.best_pair`)."""
    axes_cols = view.heatmap_axes()
    if axes_cols is None or view.mode != "min":
        return pd.DataFrame()
    from ..analysis import best_pair

    by = view.facets + [c for c in view.series if c != "optim.lr_ratio"]
    return best_pair(view.df, by, lr_a=axes_cols[0], lr_b=axes_cols[1], metric=view.metric)


def _best_trials(view: SweepView) -> dict[tuple, list[str]]:
    """Per facet+series key: the trial ids at the best grid learning rate (all lrs if none)."""
    by = view.facets + view.series
    best = optimal_lr_table(view) if view.lr is not None else pd.DataFrame()
    chosen = {}
    for key, group in view.groups(by):
        if view.lr is not None and not best.empty:
            match = best
            for col, val in zip(by, key):
                match = match[match[col].astype(str) == str(val)]
            if match.empty:
                continue
            group = group[np.isclose(group[view.lr].astype(float), match["lr_grid_opt"].iloc[0])]
        chosen[key] = list(group["trial_id"])
    return dict(list(chosen.items())[:MAX_LINES])


def metric_vs_lr(view: SweepView):
    """Seed-mean metric vs learning rate, a line per series, min-max seed band, a panel per facet."""
    from ..plots import plot_metric_vs_lr

    panel = view.panel
    df = view.df[view.df[panel].isin(list(dict.fromkeys(view.df[panel]))[:MAX_PANELS])]
    optimum = optimal_lr_table(view)
    if not optimum.empty and view.facets:
        optimum = optimum.assign(**{panel: optimum[view.facets[0]] if len(view.facets) == 1 else
                                    [_panel_value(tuple(r)) for r in optimum[view.facets].itertuples(index=False)]})
    return plot_metric_vs_lr(df, lr=view.lr, metric=view.metric, mode=view.mode, hue=view.series,
                             panel=panel if view.facets else None, optimum=optimum,
                             logy=view.mode == "min")


def lr_heatmaps(view: SweepView):
    """Seed-mean metric over (lr_a, lr_b), one panel per facet and init; diagonal and best cell marked."""
    axes_cols = view.heatmap_axes()
    if axes_cols is None:
        return None
    from ..plots import _plt, plot_lr_heatmap

    by = view.facets + [c for c in view.series if c != "optim.lr_ratio"]
    panels = list(view.groups(by))[:MAX_PANELS]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _plt().subplots(nrows, ncols, figsize=(5 * ncols, 4.2 * nrows), squeeze=False)
    for ax, (key, group) in zip(axes.flat, panels):
        plot_lr_heatmap(group, lr_a=axes_cols[0], lr_b=axes_cols[1], metric=view.metric, ax=ax, title=_label(by, key))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def feature_norm_curves(view: SweepView, probes: pd.DataFrame, curves: pd.DataFrame | None = None):
    """Z_A / Z_B norms (and the train-loss curve) vs step at each series' best learning rate;
    None when none of those trials has probe records."""
    if probes.empty:
        return None
    from ..plots import plot_feature_norms

    chosen = _best_trials(view)
    ids = {tid for members in chosen.values() for tid in members}
    hue = view.facets + view.series
    keys = view.df.set_index("trial_id")[hue]
    probes = probes[probes["trial_id"].isin(ids)].drop(columns=[c for c in hue if c in probes], errors="ignore")
    if probes.empty:
        return None
    probes = probes.join(keys, on="trial_id")
    stat = "rms" if (probes["stat"] == "rms").any() else str(probes["stat"].iloc[0])
    features = [f for f in ("z_a", "z_b") if (probes["feature"] == f).any()] or list(probes["feature"].unique()[:2])
    if curves is not None and (curves["metric"] == "train_loss").any():
        curves = curves[curves["trial_id"].isin(ids)].drop(columns=[c for c in hue if c in curves], errors="ignore")
        curves = curves.join(keys, on="trial_id")
    else:
        curves = None
    return plot_feature_norms(probes, curves, hue=hue, features=features, stat=stat)


def to_png(fig, dpi: int = 100) -> bytes:
    """PNG bytes of ``fig``; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    from ..plots import _plt

    _plt().close(fig)
    return buf.getvalue()
