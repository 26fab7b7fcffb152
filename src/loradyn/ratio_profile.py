"""The optimal LoRA+ ratio λ* = lr_b / lr_a of an (lr_a × λ) grid, refined, with seed-bootstrap
replicates (arXiv 2402.12354; docs/theory.md §8).

The *profile* of a grid is, for each ratio λ, the best seed-mean metric over lr_a. λ* is the
optimum of the profile in log2 λ by the estimator of the optimal learning rate
(:func:`loradyn.analysis.curve_optimum`: a quadratic in (log2 λ, log10 loss) over the near-optimal
band), so it moves continuously with the data instead of in grid steps. It is flagged when it sits
on the ratio grid's edge, or when the best lr_a at that ratio is the lr_a grid's smallest or
largest. The *gain* is how much the best cell beats the best cell on the diagonal λ = 1 (standard
LoRA): log2 of the ratio of their seed-mean losses, ≥ 0.

:class:`RatioBootstrap` recomputes λ* and the gain of every group under resamples of the seed
labels (:mod:`loradyn.bootstrap`), the point estimate being the resample that draws every seed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .analysis import BAND, _as_list, _need, _values, curve_optimum, metric_curve
from .bootstrap import N_RESAMPLES, percentile_ci, resample_counts, resampled_means, seeds_ci_reason
from .errors import LoradynError

__all__ = ["RatioBootstrap", "profile_optimum"]


def profile_optimum(means: np.ndarray, log2_ratio: np.ndarray, *, band: float = BAND) -> tuple[float, str, float]:
    """(log2 λ*, edge, log2 gain) of one grid of seed-mean losses ``means`` (``(n_lr_a, n_ratio)``,
    lr_a and λ increasing; ±inf or NaN = failed). ``edge`` is ``""``, ``low``/``high`` (λ* at the
    ratio grid's end), ``lr_a low``/``lr_a high`` (the best lr_a at λ* is the lr_a grid's smallest
    or largest) or ``none`` (all failed); the gain is NaN without a λ = 1 column."""
    m = np.where(np.isfinite(means), means, np.inf)
    profile = m.min(axis=0)
    curve, width = metric_curve(profile, "min", band)
    o = curve_optimum(log2_ratio, curve, band=width)
    if o.index < 0:
        return np.nan, "none", np.nan
    edge = o.edge if o.edge in ("low", "high") else ""
    best_a = int(np.argmin(m[:, o.index]))
    if not edge and best_a == 0:
        edge = "lr_a low"
    elif not edge and best_a == m.shape[0] - 1:
        edge = "lr_a high"
    diag = np.flatnonzero(np.isclose(log2_ratio, 0.0))
    gain = np.nan
    if len(diag) and np.isfinite(profile[diag[0]]) and profile.min() > 0:
        gain = float(np.log2(profile[diag[0]] / profile.min()))
    return float(o.x), edge, gain


class RatioBootstrap:
    """λ* and the gain per group of an (lr_a × λ) table, under seed resamples.

    Attributes:
        by, keys: the grouping columns and one dict per group.
        log2_lr_a, log2_ratio: per group, the grid axes (increasing).
        values: per group, ``(n_lr_a, n_ratio, n_seeds)`` losses (failed = +inf, NaN = no trial).
        counts: the resample draw (``(R, n_seeds)``); ``few``: the too-few-seeds reason or None.
        point: ``(log2 λ*, edge, log2 gain)`` per group with every seed once; ``reps``, ``edge``,
            ``gain``: ``(R, G)`` arrays of the resampled log2 λ*, edge flags and log2 gains.
    """

    def __init__(self, results: pd.DataFrame, by: str | Sequence[str] | None = None, *,
                 lr_a: str = "optim.lr_a", ratio: str = "optim.lr_ratio", metric: str = "final_train_loss",
                 status: str | None = "status", seed: str = "seed", n_resamples: int = N_RESAMPLES,
                 rng_seed: int = 0, band: float = BAND) -> None:
        self.by = _as_list(by)
        _need(results, [*self.by, lr_a, ratio, metric, seed])
        work = results[[*self.by, lr_a, ratio, seed]].copy()
        work["_v"] = _values(results, metric, "min", status)
        seeds = np.array(sorted(work[seed].unique()))
        self.keys: list[dict[str, Any]] = []
        self.log2_lr_a: list[np.ndarray] = []
        self.log2_ratio: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        groups = work.groupby(self.by, sort=True, dropna=False) if self.by else [((), work)]
        for key, g in groups:
            key = key if isinstance(key, tuple) else (key,)
            a_axis = np.array(sorted(g[lr_a].astype(float).unique()))
            r_axis = np.array(sorted(g[ratio].astype(float).unique()))
            cube = np.full((len(a_axis), len(r_axis), len(seeds)), np.nan)
            ia = np.searchsorted(a_axis, g[lr_a].astype(float).to_numpy())
            ir = np.searchsorted(r_axis, g[ratio].astype(float).to_numpy())
            iseed = np.searchsorted(seeds, g[seed].to_numpy())
            cube[ia, ir, iseed] = g["_v"].to_numpy(dtype=float)
            self.keys.append(dict(zip(self.by, key)))
            self.log2_lr_a.append(np.log2(a_axis))
            self.log2_ratio.append(np.log2(r_axis))
            self.values.append(cube)
        if not self.keys:
            raise LoradynError("no trials to find the optimal ratio of")
        self.n_seeds = len(seeds)
        self.few = seeds_ci_reason(self.n_seeds)
        self.counts = resample_counts(self.n_seeds, n_resamples, rng_seed)
        self.point = [self._optima(j, np.ones((1, self.n_seeds)), band)[:, 0] for j in range(len(self.keys))]
        shape = (len(self.counts), len(self.keys))
        self.reps, self.gain = np.full(shape, np.nan), np.full(shape, np.nan)
        self.edge = np.zeros(shape, dtype=bool)
        for j in range(len(self.keys)):
            x, e, g = self._optima(j, self.counts, band)
            self.reps[:, j], self.edge[:, j], self.gain[:, j] = x, e != "", g

    def _optima(self, j: int, counts: np.ndarray, band: float) -> np.ndarray:
        means = resampled_means(self.values[j], counts)  # (R, n_lr_a, n_ratio); no drawn seed: NaN = failed
        out = [profile_optimum(means[r], self.log2_ratio[j], band=band) for r in range(len(counts))]
        return np.array(out, dtype=object).T

    def col(self, **key: Any) -> int:
        """The column (group) whose ``by`` values equal ``key``."""
        for j, k in enumerate(self.keys):
            if all(k.get(c) == v for c, v in key.items()):
                return j
        raise KeyError(key)

    def ci(self, replicates: np.ndarray) -> tuple[float, float]:
        """The CI of a statistic's resampled values, expanded for the number of seeds."""
        return percentile_ci(np.asarray(replicates, dtype=float), n_seeds=self.n_seeds)

    def table(self) -> pd.DataFrame:
        """One row per group: ``by..., log2_ratio_opt`` (refined λ*), ``ratio_opt_lo``/``hi`` (its CI
        in log2), ``ratio_edge``, ``log2_gain`` and ``log2_gain_lo``/``hi``, ``edge_share`` (the
        share of resamples whose λ* sat on an edge)."""
        rows = []
        for j, key in enumerate(self.keys):
            x, edge, gain = self.point[j]
            lo, hi = self.ci(self.reps[:, j])
            glo, ghi = self.ci(self.gain[:, j])
            rows.append({**key, "log2_ratio_opt": float(x), "ratio_opt_lo": lo, "ratio_opt_hi": hi,
                         "ratio_edge": edge, "log2_gain": float(gain), "log2_gain_lo": glo, "log2_gain_hi": ghi,
                         "edge_share": float(self.edge[:, j].mean())})
        return pd.DataFrame(rows)
