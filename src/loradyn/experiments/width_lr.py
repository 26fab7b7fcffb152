"""``width-lr``: optimal learning rate vs width for Init[A] and Init[B] (arXiv 2406.08447, Fig. "optimal LR vs width").

Protocol: for each width n and init, a half-octave log2 grid of ``lr_a`` (``lr_b = lr_a``), ≥ 5
seeds, T Adam steps; η* = the vertex of a quadratic in (log2 lr, log10 seed-mean final train loss)
over the near-optimal band (:func:`loradyn.analysis.optimal_lr`), with a seed-bootstrap CI
(:mod:`loradyn.bootstrap`) for every optimum and every slope and ratio the verdicts use.
Each width's grid is the union over inits of ±``span`` octaves around where a previous run of this
engine found the optimum (:data:`GRID_CENTRE`); an optimum on a grid edge triggers an extension of
the grid beyond that edge (up to ``max_extend`` times), so the optimum ends up interior or is
flagged. The centring only saves compute: the verdicts read the measured optima and compare them
with the predicted exponents, never with the grid centres.

The prediction depends on the readout the run uses (:mod:`~loradyn.experiments.predictions`,
docs/theory.md §5.2–5.3): with the default ``sp`` readout Init[A] −3/4 and Init[B] −1 (derived
here; the papers: −1/2 and −1), with ``task.readout=mup task.teacher_readout=independent`` −1/2 and
−1/2 (Init[A] as published, Init[B] derived here). The form (``hidden``/``residual``) changes none.

Verdicts (three-valued on the 95 % bootstrap CI; tolerances: docs/theory.md §8):

* slope of log2 η* vs log2 n over n ≥ 256 is the predicted exponent ± 0.15, per init;
* η*_A > η*_B at every width ≥ 512 (the CI of the smallest log2 ratio lies above 0), where the
  prediction has the ratio growing (not with the ``mup`` readout, where it is n^0);
* the log2–log2 slope of the ratio η*_A / η*_B is the difference of the two predicted exponents
  ± 0.25 (its error is about the sum of theirs);
* every optimum is interior (not on a grid edge) — otherwise the fits above are not trustworthy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis import fit_log2_slope, optimal_lr
from ..bootstrap import LEVEL, N_RESAMPLES, OptimaBootstrap, log2_slopes
from .framework import (
    Context,
    Experiment,
    Outcome,
    Verdict,
    edge_reason,
    fmt_lr,
    results_frame,
)
from .grids import base_config, half_octaves, run_grid
from .predictions import difference, lr_width_exponent, regime_note, resolved_task

ID = "width-lr"
INIT, WIDTH, LR = "lora.init", "task.width", "optim.lr_a"

# grid placement only: (log2 lr at n = 128, log2 change per doubling) of the optimum measured in a
# one-seed exploratory run of this engine (T = 200)
GRID_CENTRE = {"A": (-6.0, -0.85), "B": (-7.2, -0.95)}
SLOPE_TOL = 0.15
RATIO_TOL = 0.25


@dataclass(frozen=True)
class Params:
    """Parameters of ``width-lr`` (override with ``experiment.<name>=value``).

    Attributes:
        widths: the widths n.
        inits: the init schemes.
        seeds: seeds per configuration.
        steps: Adam steps T.
        lr_step: grid step in octaves (0.5 = half-octave).
        span: octaves on each side of the expected optimum.
        max_extend: how many times a grid is extended when its optimum sits on an edge.
        fit_min_width: smallest width used in the slope fits.
        n_resamples: seed-bootstrap resamples of the CIs.
    """

    widths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
    inits: tuple[str, ...] = ("A", "B")
    seeds: int = 5
    steps: int = 200
    lr_step: float = 0.5
    span: float = 2.5
    max_extend: int = 2
    fit_min_width: int = 256
    n_resamples: int = N_RESAMPLES


FULL = Params()
QUICK = Params(widths=(128, 512, 2048), seeds=2, steps=100, lr_step=1.0, span=3.0, max_extend=1, fit_min_width=128)


@dataclass(frozen=True)
class WidthOptima:
    """What ``width-lr`` hands to later experiments: the optimum per (init, width), at ``steps``."""

    optima: pd.DataFrame
    steps: int


def expected_log2_lr(init: str, width: int) -> float:
    """Where the grid for (init, width) is centred (log2 lr)."""
    anchor, per_doubling = GRID_CENTRE[init]
    return anchor + per_doubling * math.log2(width / 128)


def optima(results: pd.DataFrame) -> pd.DataFrame:
    return optimal_lr(results, by=[INIT, WIDTH], lr=LR)


def sweep_optima(ctx: Context, p: Params, base: dict, name: str = "width-lr") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the width × init × lr grids (with edge extensions); returns (results, optima)."""
    frames = []
    for n in p.widths:
        lrs = sorted({
            lr for init in p.inits
            for lr in half_octaves(expected_log2_lr(init, n) - p.span, expected_log2_lr(init, n) + p.span, p.lr_step)
        })
        b = {**base, "task": {**base["task"], "width": n}}
        frames.append(run_grid(ctx, f"{name}-n{n}", b, {INIT: list(p.inits), LR: lrs}, p.seeds))
    results = results_frame(frames, ID)
    opt = optima(results)
    for round_ in range(p.max_extend):
        todo = opt[opt["edge"].isin(["low", "high"])]
        if todo.empty:
            break
        for row in todo.to_dict("records"):
            n, init = int(row[WIDTH]), str(row[INIT])
            have = results[(results[WIDTH] == n) & (results[INIT] == init)][LR]
            lo, hi = math.log2(have.min()), math.log2(have.max())
            if row["edge"] == "low":
                new = half_octaves(lo - 2.0, lo - p.lr_step, p.lr_step)
            else:
                new = half_octaves(hi + p.lr_step, hi + 2.0, p.lr_step)
            ctx.say(f"  {init} n={n}: optimum on the {row['edge']} edge; extending the grid by 2 octaves")
            b = {**base, "task": {**base["task"], "width": n}}
            df = run_grid(ctx, f"{name}-n{n}-{init}-ext{round_ + 1}", b, {INIT: [init], LR: new}, p.seeds)
            results = pd.concat([results, results_frame([df], ID)], ignore_index=True)
        opt = optima(results)
    return results, opt


def run(ctx: Context) -> Outcome:
    p = ctx.params
    base = base_config(ctx, train={"steps": p.steps})
    results, opt = sweep_optima(ctx, p, base)

    fit_rows = opt[(opt[WIDTH] >= p.fit_min_width) & opt["lr_opt"].notna()]
    fits = fit_log2_slope(fit_rows, WIDTH, "lr_opt", by=INIT)
    boot = Bootstrap(results, opt, p.n_resamples)
    few = boot.few

    def label(r):
        return f"{r[INIT]} n={r[WIDTH]}"

    verdicts = []
    task = resolved_task(base, ctx.base_overrides)
    preds = {init: lr_width_exponent(init, task) for init in ("A", "B")}
    fits["ci_lo"], fits["ci_hi"] = math.nan, math.nan
    for init in p.inits:
        f = fits[fits[INIT] == init]
        slope = float(f["slope"].iloc[0]) if len(f) else math.nan
        pred = preds[init]
        used = opt[(opt[INIT] == init) & (opt[WIDTH] >= p.fit_min_width)].to_dict("records")
        ci, shaky = boot.slope(init, [r[WIDTH] for r in used])
        fits.loc[fits[INIT] == init, ["ci_lo", "ci_hi"]] = ci
        verdicts.append(Verdict.estimate(
            f"Init[{init}]: optimal lr ∝ n^{pred.value:g} ({pred.label()}; slope of log2 η* vs log2 n, "
            f"n ≥ {p.fit_min_width})",
            pred.value, SLOPE_TOL, slope, ci, [edge_reason(used, label), few, shaky],
        ))
    wide = opt.pivot(index=WIDTH, columns=INIT, values="lr_opt")
    ratio_pred = difference(preds["A"], preds["B"])
    if {"A", "B"} <= set(wide.columns) and ratio_pred.value > 0:
        big = wide[wide.index >= 512]
        gap = [f"n={n}: ×{a / b:.1f}" for n, a, b in zip(big.index, big["A"], big["B"])]
        at_big = opt[opt[WIDTH] >= 512].to_dict("records")
        ratios, shaky = boot.log2_ratios(list(big.index))
        ci = boot.ci(ratios.min(axis=1)) if len(big) else (math.nan, math.nan)
        verdicts.append(Verdict.bounded(
            "Init[A] admits larger learning rates: η*_A > η*_B at every width ≥ 512 (published, arXiv 2406.08447)",
            "η*_A/η*_B > 1 (CI of the smallest log2 ratio > 0)", ", ".join(gap) or "no width ≥ 512",
            (0.0, math.inf), ci, [edge_reason(at_big, label), few, shaky],
        ))
    if {"A", "B"} <= set(wide.columns):
        ratio = pd.DataFrame({"width": wide.index, "ratio": wide["A"] / wide["B"]})
        rslope = float(fit_log2_slope(ratio, "width", "ratio")["slope"].iloc[0])
        ratios, shaky = boot.log2_ratios(list(wide.index))
        ci = boot.ci(log2_slopes(list(wide.index), ratios))
        verdicts.append(Verdict.estimate(
            f"the ratio η*_A/η*_B ∝ n^{ratio_pred.value:g} ({ratio_pred.label()}; log2–log2 slope)",
            ratio_pred.value, RATIO_TOL, rslope, ci, [edge_reason(opt.to_dict("records"), label), few, shaky],
        ))
    edges = opt[opt["edge"].isin(["low", "high", "none"])]
    verdicts.append(Verdict.check(
        "every optimum is interior to its lr grid",
        "no optimum on a grid edge",
        "all interior" if edges.empty else "; ".join(f"{label(r)}: {r['edge']}" for r in edges.to_dict("records")),
        edges.empty,
    ))

    from ..plots import plot_metric_vs_lr, plot_optimal_lr_vs_width

    figures = {
        "optimal_lr_vs_width": plot_optimal_lr_vs_width(opt, fits=fits, title="optimal lr vs width"),
        "loss_vs_lr": plot_metric_vs_lr(results, hue=INIT, panel=WIDTH, optimum=opt, title="final train loss vs lr"),
    }
    summary = {
        "model": {**{k: task.get(k, d) for k, d in (("form", "hidden"), ("readout", "sp"), ("teacher_readout", "shared"))},
                  "note": regime_note(task)},
        "predictions": {f"Init[{i}]": {"exponent": pr.value, "status": pr.label()} for i, pr in preds.items()},
        "optimal_lr": opt,
        "slopes": fits,
        "bootstrap": {"n_resamples": p.n_resamples, "level": LEVEL, "seed": 0, "n_seeds": boot.curves.n_seeds},
        "optimal_lr_table": {f"{r[INIT]}@{r[WIDTH]}": fmt_lr(r["lr_opt"]) for r in opt.to_dict("records")},
    }
    return Outcome(results, summary, figures, verdicts, product=WidthOptima(opt, p.steps))


class Bootstrap(OptimaBootstrap):
    """The seed bootstrap of the width-lr optima (:class:`loradyn.bootstrap.OptimaBootstrap`)."""

    def __init__(self, results: pd.DataFrame, opt: pd.DataFrame, n_resamples: int, seed: int = 0) -> None:
        super().__init__(results, [INIT, WIDTH], lr=LR, n_resamples=n_resamples, seed=seed)
        self.add_cis(opt)

    def _cols(self, init: str, widths: list[int]) -> list[int]:
        return [self.col(**{INIT: init, WIDTH: n}) for n in widths]

    def _shaky(self, cols: list[int]) -> str | None:
        return self.shaky(cols, [f"{k[INIT]} n={k[WIDTH]}" for k in (self.curves.keys[j] for j in cols)])

    def slope(self, init: str, widths: list[int]) -> tuple[tuple[float, float], str | None]:
        cols = self._cols(init, widths)
        return self.ci(log2_slopes(widths, self.reps[:, cols])), self._shaky(cols)

    def log2_ratios(self, widths: list[int]) -> tuple[np.ndarray, str | None]:
        a, b = self._cols("A", widths), self._cols("B", widths)
        return self.reps[:, a] - self.reps[:, b], self._shaky(a + b)


EXPERIMENT = Experiment(
    id=ID,
    description="optimal lr vs width, Init[A] vs Init[B]: papers -1/2 and -1 (2406.08447); the toy's sp readout -3/4 and -1",
    params=Params, quick=QUICK, full=FULL, run=run, order=10, in_all=True,
)
