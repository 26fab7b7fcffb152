"""Analysis of sweep tables: seed means, optimal learning rates, log-log slopes. DataFrames in and out.

Conventions: a run that diverged counts as an infinite loss, so any learning rate at which some
seed diverged is never the optimum (the optimum of a *mean* over seeds must be reachable by every
seed). The optimal learning rate is the argmin of the seed-mean loss on the grid, refined by the
vertex of the parabola through the argmin and its two neighbours in (log2 lr, log10 mean loss)
coordinates; an optimum at an edge of the grid is not refined and is flagged (the true optimum
may lie outside), and one next to a diverged learning rate is bracketed but left unrefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import LoradynError

__all__ = ["best_pair", "fit_log2_slope", "optimal_lr", "parabola_vertex", "seed_mean"]


def _need(df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise LoradynError(f"table lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")


def _as_list(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


def seed_mean(
    df: pd.DataFrame,
    by: str | Sequence[str],
    *,
    loss: str = "final_train_loss",
    diverged: str | None = "diverged",
) -> pd.DataFrame:
    """Mean, std, min, max of ``loss`` over seeds for each ``by`` group (diverged or NaN → +inf).

    Returns one row per group with columns ``by..., mean, std, min, max, n_seeds, n_diverged``.
    """
    by = _as_list(by)
    _need(df, [*by, loss])
    values = df[loss].astype(float).to_numpy(copy=True)
    bad = ~np.isfinite(values)
    if diverged and diverged in df.columns:
        bad |= df[diverged].fillna(False).astype(bool).to_numpy()
    values[bad] = np.inf
    work = df[by].copy()
    work["_v"] = values
    work["_bad"] = bad
    grouped = work.groupby(by, sort=True, dropna=False)
    out = grouped["_v"].agg(["mean", "min", "max"])
    out["std"] = grouped["_v"].agg(lambda v: float(np.std(v, ddof=1)) if len(v) > 1 and np.isfinite(v).all() else (0.0 if len(v) == 1 else math.nan))
    out["n_seeds"] = grouped["_v"].size()
    out["n_diverged"] = grouped["_bad"].sum().astype(int)
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


def optimal_lr(
    df: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    lr: str = "lr_a",
    loss: str = "final_train_loss",
    diverged: str | None = "diverged",
    refine: bool = True,
) -> pd.DataFrame:
    """Optimal learning rate per group: argmin of the seed-mean loss, refined by a parabola.

    Args:
        df: one row per run, with ``lr``, ``loss``, a seed column (any) and the ``by`` columns.
        by: grouping columns (e.g. ``["init", "width"]``).
        lr: the learning-rate column.
        loss: the loss column (lower is better).
        diverged: boolean column marking diverged runs (counted as +inf), or None.
        refine: refine the grid argmin with the parabola vertex in (log2 lr, log10 loss).

    Returns:
        One row per group: ``by..., lr_opt, log2_lr_opt, lr_grid_opt, loss_opt, refined, edge``
        (``"low"``/``"high"``: the argmin is the grid's smallest/largest lr, so the true optimum
        may lie outside; ``"unstable"``: a neighbour diverged, so the optimum is bracketed but not
        refined; ``"none"``: every lr diverged; else ``""``), ``n_lr``, ``n_seeds``.
    """
    by = _as_list(by)
    means = seed_mean(df, [*by, lr], loss=loss, diverged=diverged)
    rows = []
    groups = means.groupby(by, sort=True, dropna=False) if by else [((), means)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values(lr)
        x = np.log2(g[lr].astype(float).to_numpy())
        y = g["mean"].to_numpy(dtype=float)
        row = dict(zip(by, key))
        row.update(n_lr=len(g), n_seeds=int(g["n_seeds"].max()))
        finite = np.isfinite(y) & (y > 0)
        if not finite.any():
            row.update(lr_opt=math.nan, log2_lr_opt=math.nan, lr_grid_opt=math.nan, loss_opt=math.inf, refined=False, edge="none")
            rows.append(row)
            continue
        i = int(np.argmin(np.where(finite, y, np.inf)))
        xi = x[i]
        edge = ""
        if i == 0:
            edge = "low"
        elif i == len(x) - 1:
            edge = "high"
        elif not (finite[i - 1] and finite[i + 1]):
            edge = "unstable"
        x_opt, refined = xi, False
        if refine and not edge:
            v = parabola_vertex(x[i - 1 : i + 2], np.log10(y[i - 1 : i + 2]))
            if v is not None:
                x_opt, refined = v, True
        row.update(
            lr_opt=float(2.0**x_opt), log2_lr_opt=float(x_opt), lr_grid_opt=float(2.0**xi),
            loss_opt=float(y[i]), refined=refined, edge=edge,
        )
        rows.append(row)
    cols = [*by, "lr_opt", "log2_lr_opt", "lr_grid_opt", "loss_opt", "refined", "edge", "n_lr", "n_seeds"]
    return pd.DataFrame(rows, columns=cols)


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
    lr_a: str = "lr_a",
    lr_b: str = "lr_b",
    loss: str = "final_train_loss",
    diverged: str | None = "diverged",
) -> pd.DataFrame:
    """Best (lr_a, lr_b) of a 2-D grid per group, and the best pair on the diagonal lr_a = lr_b.

    Returns one row per group: ``by..., lr_a_opt, lr_b_opt, ratio_opt, loss_opt, lr_diag_opt,
    loss_diag_opt, gain`` (``gain = loss_diag_opt / loss_opt`` ≥ 1), ``edge`` (the optimum touches
    the grid's border: ``"lr_a"``, ``"lr_b"``, ``"both"`` or ``""``).
    """
    by = _as_list(by)
    means = seed_mean(df, [*by, lr_a, lr_b], loss=loss, diverged=diverged)
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
            ratio_opt=float(best[lr_b]) / float(best[lr_a]), loss_opt=float(best["mean"]),
            lr_diag_opt=float(dbest[lr_a]) if dbest is not None else math.nan,
            loss_diag_opt=float(dbest["mean"]) if dbest is not None else math.nan,
            edge="both" if len(edges) == 2 else (edges[0] if edges else ""),
        )
        row["gain"] = row["loss_diag_opt"] / row["loss_opt"] if row["loss_opt"] > 0 else math.nan
        rows.append(row)
    cols = [*by, "lr_a_opt", "lr_b_opt", "ratio_opt", "loss_opt", "lr_diag_opt", "loss_diag_opt", "gain", "edge"]
    return pd.DataFrame(rows, columns=cols)
