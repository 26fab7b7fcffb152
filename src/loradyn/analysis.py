"""The one analysis of sweep tables: seed statistics, optimal learning rates, log-log slopes, best
(lr_a, lr_b) pairs. DataFrames in and out; column names are those of the results schema
(``docs/schema.md``: ``optim.lr_a``, ``lora.init``, ``task.width``, ``status``, metric columns).

Conventions (docs/theory.md §8):

* A trial that did not finish (``status`` other than ``done``) or whose metric is not finite
  counts as the *worst* value (+inf when lower is better, -inf when higher is better), so a
  setting is optimal only if every seed of it worked.
* The optimal learning rate of a group is the grid point with the best seed mean (ties go to the
  lower seed-mean ``tiebreak`` metric, else to the smaller learning rate). With ``refine``, it is
  refined by a least-squares quadratic in (log2 lr, log10 metric) coordinates (lower is better; a
  metric that is not a positive loss uses the signed metric) over the *near-optimal band*: the
  contiguous run of grid points around the best whose seed mean is within ``band`` decades of it
  (default :data:`BAND`, ×1.26), at least :data:`FIT_MIN_LRS` learning rates. The fit's vertex is
  clipped to the band; clipped at the grid's end it is flagged like a grid-edge optimum. A band of
  fewer learning rates falls back to the parabola through the best point and its two neighbours,
  a fit that is not convex to the grid point; ``fit`` and ``fit_note`` say which and why.
* ``edge`` says why an optimum may not be trusted: ``"low"`` / ``"high"`` (it is the grid's
  smallest / largest learning rate, so the true optimum may lie outside), ``"unstable"`` (a
  neighbour failed or diverged: bracketed, not refined), ``"none"`` (every learning rate failed),
  ``""`` (interior).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from .errors import LoradynError

__all__ = [
    "BAND", "CurveOptimum", "best_pair", "curve_optimum", "fit_log2_slope", "metric_curve", "optimal_lr",
    "parabola_vertex", "quadratic_fit", "seed_stats", "worst_value",
]

Mode = Literal["min", "max"]


def _need(df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise LoradynError(f"table lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")


def _as_list(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise LoradynError(f"mode must be 'min' or 'max', got {mode!r}")


def worst_value(mode: Mode) -> float:
    """The value a failed trial counts as: +inf when lower is better, -inf when higher is."""
    return math.inf if mode == "min" else -math.inf


def _values(df: pd.DataFrame, metric: str, mode: Mode, status: str | None) -> np.ndarray:
    """The metric as floats, with unfinished trials and non-finite values set to the worst value."""
    values = pd.to_numeric(df[metric], errors="coerce").astype(float).to_numpy(copy=True)
    bad = ~np.isfinite(values)
    if status and status in df.columns:
        bad |= (df[status].astype(str) != "done").to_numpy()
    values[bad] = worst_value(mode)
    return values


def seed_stats(
    df: pd.DataFrame,
    by: str | Sequence[str],
    *,
    metric: str = "final_train_loss",
    mode: Mode = "min",
    status: str | None = "status",
) -> pd.DataFrame:
    """Seed statistics of ``metric`` for each ``by`` group (failed trials count as the worst value).

    Returns one row per group: ``by..., mean, std, min, max, n_seeds, n_failed``; ``std`` (ddof 1)
    is NaN with fewer than two seeds or when a seed failed.
    """
    _check_mode(mode)
    by = _as_list(by)
    _need(df, [*by, metric])
    values = _values(df, metric, mode, status)
    work = df[by].copy()
    work["_v"] = values
    work["_bad"] = ~np.isfinite(values)
    grouped = work.groupby(by, sort=True, dropna=False)
    out = grouped["_v"].agg(["mean", "min", "max"])
    out["std"] = grouped["_v"].agg(
        lambda v: float(np.std(v, ddof=1)) if len(v) > 1 and np.isfinite(v).all() else math.nan
    )
    out["n_seeds"] = grouped["_v"].size()
    out["n_failed"] = grouped["_bad"].sum().astype(int)
    return out.reset_index()


def parabola_vertex(x: Sequence[float], y: Sequence[float]) -> float | None:
    """x of the vertex of the parabola through three points (None if not convex)."""
    x0, x1, x2 = map(float, x)
    y0, y1, y2 = map(float, y)
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    if denom == 0:
        return None
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
    if not (a > 0):
        return None
    return min(max(-b / (2 * a), x0), x2)


#: the near-optimal band of the quadratic fit: seed means within this many decades of the best (×1.26)
BAND = 0.1
#: the fewest distinct learning rates the band fit uses; fewer fall back to the 3-point parabola
FIT_MIN_LRS = 3


def quadratic_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``(a, b, c)`` of ``y ≈ a·x² + b·x + c``: the normal equations in x centred on
    its mean (for conditioning), solved in float64; NaNs for fewer than 3 distinct x."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = float(x.mean())
    u = x - m
    u2 = u * u
    s0, s1, s2, s3, s4 = float(len(u)), float(u.sum()), float(u2.sum()), float((u2 * u).sum()), float((u2 * u2).sum())
    t0, t1, t2 = float(y.sum()), float((u * y).sum()), float((u2 * y).sum())
    try:
        a, b, c = np.linalg.solve([[s4, s3, s2], [s3, s2, s1], [s2, s1, s0]], [t2, t1, t0])
    except np.linalg.LinAlgError:
        return math.nan, math.nan, math.nan
    a, b, c = float(a), float(b), float(c)
    return a, b - 2 * a * m, c - b * m + a * m * m


@dataclass(frozen=True)
class CurveOptimum:
    """The optimum of one curve (:func:`curve_optimum`): grid ``index`` (-1: every point failed),
    ``x`` (log2 lr of the optimum), ``edge``, ``fit`` (``band``, ``parabola`` or ``grid``),
    ``n_band`` (learning rates in the near-optimal band) and ``note`` (why not the band fit)."""

    index: int
    x: float
    edge: str
    fit: str
    n_band: int
    note: str = ""


def curve_optimum(x: Sequence[float], curve: Sequence[float], *, index: int | None = None,
                  refine: bool | str = True, band: float = BAND) -> CurveOptimum:
    """The optimum of a curve sampled on a grid, lower is better.

    Args:
        x: the grid (log2 lr), increasing.
        curve: the value at each grid point (log10 loss, or a signed metric); not finite = failed.
        index: the best grid point when the caller decided a tie (default: the first minimum).
        refine: ``True``/``"band"`` (quadratic over the near-optimal band), ``"parabola"`` (the
            3-point parabola), ``False`` (the grid point).
        band: the band's width in ``curve`` units above the best value.
    """
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    finite = np.isfinite(c)
    if not finite.any():
        return CurveOptimum(-1, math.nan, "none", "grid", 0, "every learning rate failed")
    i = int(np.argmin(np.where(finite, c, np.inf))) if index is None else int(index)
    last = len(x) - 1
    edge = "low" if i == 0 else "high" if i == last else ""
    if not edge and not (finite[i - 1] and finite[i + 1]):
        edge = "unstable"
    if edge or not refine:
        return CurveOptimum(i, float(x[i]), edge, "grid", 1, f"optimum {edge}" if edge else "not refined")
    lo = hi = i
    while lo > 0 and finite[lo - 1] and c[lo - 1] <= c[i] + band:
        lo -= 1
    while hi < last and finite[hi + 1] and c[hi + 1] <= c[i] + band:
        hi += 1
    n_band = hi - lo + 1
    note = ""
    if refine != "parabola" and n_band >= FIT_MIN_LRS:
        a, b, _ = quadratic_fit(x[lo : hi + 1], c[lo : hi + 1])
        if a > 0:
            v = min(max(-b / (2 * a), float(x[lo])), float(x[hi]))
            edge = "low" if v <= x[0] else "high" if v >= x[last] else ""
            clipped = v in (float(x[lo]), float(x[hi]))
            return CurveOptimum(i, v, edge, "band", n_band, "vertex clipped to the band" if clipped else "")
        note = f"the quadratic over the {n_band}-lr band is not convex"
    elif refine != "parabola":
        note = f"band of {n_band} lr{'s' if n_band > 1 else ''} (< {FIT_MIN_LRS})"
    v = parabola_vertex(x[i - 1 : i + 2], c[i - 1 : i + 2])
    if v is None:
        return CurveOptimum(i, float(x[i]), "", "grid", n_band, (note + "; " if note else "") + "parabola not convex")
    return CurveOptimum(i, float(v), "", "parabola", n_band, note)


def metric_curve(y: np.ndarray, mode: Mode, band: float = BAND) -> tuple[np.ndarray, float]:
    """A group's seed means as the curve :func:`curve_optimum` minimises, and the band in its units.

    A positive loss (``min``) becomes log10 (``band`` decades); anything else the signed metric,
    with the band the same relative distance from the best (``(10**band - 1)·|best|``).
    """
    finite = np.isfinite(y)
    if mode == "min" and finite.any() and (y[finite] > 0).all():
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(finite, np.log10(np.where(finite, y, 1.0)), np.inf), band
    sign = 1.0 if mode == "min" else -1.0
    c = np.where(finite, sign * y, np.inf)
    best = float(c[finite].min()) if finite.any() else 0.0
    return c, (10.0**band - 1.0) * abs(best)


OPTIMUM_COLUMNS = ["lr_opt", "log2_lr_opt", "lr_grid_opt", "metric_opt", "metric_opt_std", "refined", "fit",
                   "n_band", "fit_note", "edge", "n_lr", "n_seeds"]


def optimal_lr(
    df: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    lr: str = "optim.lr_a",
    metric: str = "final_train_loss",
    mode: Mode = "min",
    refine: bool | str = True,
    band: float = BAND,
    tiebreak: str | None = None,
    status: str | None = "status",
) -> pd.DataFrame:
    """Optimal learning rate per group: the best seed mean on the grid, optionally refined.

    Args:
        df: one row per trial, with ``lr``, ``metric``, the ``by`` columns and (optionally) ``status``.
        by: grouping columns (e.g. ``["lora.init", "task.width"]``).
        lr: the learning-rate column.
        metric: the metric column; ``mode`` says whether lower (``min``) or higher (``max``) is better.
        refine: ``True`` or ``"band"``: the quadratic over the near-optimal band (module docstring);
            ``"parabola"``: the parabola through the grid optimum and its neighbours; ``False``: none.
        band: the near-optimal band in decades of the metric (:data:`BAND`).
        tiebreak: a metric whose lower seed mean decides between equally good grid points.
        status: the trial-status column (trials not ``done`` count as the worst value), or None.

    Returns:
        One row per group: ``by..., lr_opt, log2_lr_opt, lr_grid_opt, metric_opt`` (the best seed
        mean), ``metric_opt_std`` (its seed std), ``refined``, ``fit`` (``band``, ``parabola`` or
        ``grid``), ``n_band``, ``fit_note``, ``edge`` (see the module docstring), ``n_lr``, ``n_seeds``.
    """
    _check_mode(mode)
    if refine not in (True, False, "band", "parabola"):
        raise LoradynError(f"refine must be True, False, 'band' or 'parabola', got {refine!r}")
    by = _as_list(by)
    stats = seed_stats(df, [*by, lr], metric=metric, mode=mode, status=status)
    ties = seed_stats(df, [*by, lr], metric=tiebreak, mode="min", status=status) if tiebreak else None
    rows = []
    groups = stats.groupby(by, sort=True, dropna=False) if by else [((), stats)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values(lr)
        x = np.log2(g[lr].astype(float).to_numpy())
        y = g["mean"].to_numpy(dtype=float)
        row = dict(zip(by, key))
        row.update(n_lr=len(g), n_seeds=int(g["n_seeds"].max()))
        curve, width = metric_curve(y, mode, band)
        best = np.flatnonzero(curve == curve.min()) if np.isfinite(curve).any() else np.array([0])
        if ties is not None and len(best) > 1:
            t = ties.merge(g[[*by, lr]], on=[*by, lr]).sort_values(lr)["mean"].to_numpy(dtype=float)
            best = best[[int(np.argmin(t[best]))]]
        o = curve_optimum(x, curve, index=int(best[0]), refine=refine, band=width)
        if o.index < 0:
            row.update(lr_opt=math.nan, log2_lr_opt=math.nan, lr_grid_opt=math.nan, metric_opt=worst_value(mode),
                       metric_opt_std=math.nan, refined=False, fit="grid", n_band=0, fit_note=o.note, edge="none")
        else:
            row.update(
                lr_opt=float(2.0**o.x), log2_lr_opt=o.x, lr_grid_opt=float(g[lr].iloc[o.index]),
                metric_opt=float(y[o.index]), metric_opt_std=float(g["std"].iloc[o.index]),
                refined=o.fit != "grid", fit=o.fit, n_band=o.n_band, fit_note=o.note, edge=o.edge,
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, *OPTIMUM_COLUMNS])


def fit_log2_slope(
    df: pd.DataFrame,
    x: str,
    y: str,
    by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Least-squares slope of log2(y) against log2(x), per ``by`` group.

    Rows with non-finite or non-positive x or y are dropped. Returns one row per group:
    ``by..., slope, intercept, stderr, r2, n_points, x_min, x_max`` (slope NaN below 2 points;
    stderr NaN below 3).
    """
    by = _as_list(by)
    _need(df, [*by, x, y])
    rows = []
    groups = df.groupby(by, sort=True, dropna=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        xs = g[x].astype(float).to_numpy()
        ys = g[y].astype(float).to_numpy()
        ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
        lx, ly = np.log2(xs[ok]), np.log2(ys[ok])
        row = dict(zip(by, key))
        n = len(lx)
        slope = intercept = stderr = r2 = math.nan
        if n >= 2 and np.ptp(lx) > 0:
            slope, intercept = np.polyfit(lx, ly, 1)
            fit = intercept + slope * lx
            ss_res = float(np.sum((ly - fit) ** 2))
            ss_tot = float(np.sum((ly - ly.mean()) ** 2))
            r2 = 1 - ss_res / ss_tot if ss_tot > 0 else 1.0
            if n >= 3:
                stderr = math.sqrt(ss_res / (n - 2) / float(np.sum((lx - lx.mean()) ** 2)))
        row.update(
            slope=float(slope), intercept=float(intercept), stderr=stderr, r2=r2, n_points=n,
            x_min=float(xs[ok].min()) if n else math.nan, x_max=float(xs[ok].max()) if n else math.nan,
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "slope", "intercept", "stderr", "r2", "n_points", "x_min", "x_max"])


def best_pair(
    df: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    lr_a: str = "optim.lr_a",
    lr_b: str = "optim.lr_b",
    metric: str = "final_train_loss",
    status: str | None = "status",
) -> pd.DataFrame:
    """Best (lr_a, lr_b) of a 2-D grid per group (lower ``metric`` is better), and the best pair
    on the diagonal lr_a = lr_b.

    Returns one row per group: ``by..., lr_a_opt, lr_b_opt, ratio_opt, metric_opt, metric_opt_std,
    lr_diag_opt, metric_diag_opt, metric_diag_opt_std, gain`` (``gain = metric_diag_opt / metric_opt``
    ≥ 1), ``edge`` (the optimum touches the grid's border: ``"lr_a"``, ``"lr_b"``, ``"both"`` or ``""``).
    """
    by = _as_list(by)
    means = seed_stats(df, [*by, lr_a, lr_b], metric=metric, mode="min", status=status)
    rows = []
    groups = means.groupby(by, sort=True, dropna=False) if by else [((), means)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        la, lb = g[lr_a].astype(float), g[lr_b].astype(float)
        best = g.loc[g["mean"].idxmin()]
        diag = g[np.isclose(la, lb, rtol=1e-9)]
        dbest = diag.loc[diag["mean"].idxmin()] if len(diag) else None
        edges = []
        if float(best[lr_a]) in (la.min(), la.max()):
            edges.append("lr_a")
        if float(best[lr_b]) in (lb.min(), lb.max()):
            edges.append("lr_b")
        row.update(
            lr_a_opt=float(best[lr_a]), lr_b_opt=float(best[lr_b]),
            ratio_opt=float(best[lr_b]) / float(best[lr_a]), metric_opt=float(best["mean"]),
            metric_opt_std=float(best["std"]),
            lr_diag_opt=float(dbest[lr_a]) if dbest is not None else math.nan,
            metric_diag_opt=float(dbest["mean"]) if dbest is not None else math.nan,
            metric_diag_opt_std=float(dbest["std"]) if dbest is not None else math.nan,
            edge="both" if len(edges) == 2 else (edges[0] if edges else ""),
        )
        row["gain"] = row["metric_diag_opt"] / row["metric_opt"] if row["metric_opt"] > 0 else math.nan
        rows.append(row)
    cols = [*by, "lr_a_opt", "lr_b_opt", "ratio_opt", "metric_opt", "metric_opt_std", "lr_diag_opt", "metric_diag_opt",
            "metric_diag_opt_std", "gain", "edge"]
    return pd.DataFrame(rows, columns=cols)
