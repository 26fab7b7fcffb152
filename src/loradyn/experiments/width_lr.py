"""``width-lr``: optimal learning rate vs width for Init[A] and Init[B] (arXiv 2406.08447, Fig. "optimal LR vs width").

Protocol: for each width n and init, a half-octave log2 grid of ``lr_a`` (``lr_b = lr_a``), ≥ 3
seeds, T Adam steps; η* = argmin of the seed-mean final train loss, refined by the parabola in
(log2 lr, log10 loss) through the argmin and its neighbours (:func:`loradyn.analysis.optimal_lr`).
Each width's grid is the union over inits of ±``span`` octaves around where a previous run of this
engine found the optimum (:data:`GRID_CENTRE`); an optimum on a grid edge triggers an extension of
the grid beyond that edge (up to ``max_extend`` times), so the optimum ends up interior or is
flagged. The centring only saves compute: the verdicts read the measured optima and compare them
with the theory's exponents (:data:`EXPONENT`), never with the grid centres.

Verdicts (tolerances: docs/theory.md §8):

* slope of log2 η* vs log2 n over n ≥ 256 is −0.5 ± 0.15 (Init[A]) and −1.0 ± 0.15 (Init[B]);
* η*_A > η*_B at every width ≥ 512;
* the ratio η*_A / η*_B grows with width: its log2–log2 slope is 0.5 ± 0.25 (the difference of
  the two exponents; its error is about the sum of theirs);
* every optimum is interior (not on a grid edge) — otherwise the fits above are not trustworthy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..analysis import fit_log2_slope, optimal_lr
from .framework import (
    Context,
    Experiment,
    Outcome,
    Verdict,
    edge_reason,
    fmt_lr,
    results_frame,
    seeds_reason,
)
from .grids import base_config, half_octaves, run_grid

ID = "width-lr"
INIT, WIDTH, LR = "lora.init", "task.width", "optim.lr_a"

# the theory's exponents of the optimal lr in width (the claims under test)
EXPONENT = {"A": -0.5, "B": -1.0}
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
    """

    widths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
    inits: tuple[str, ...] = ("A", "B")
    seeds: int = 3
    steps: int = 200
    lr_step: float = 0.5
    span: float = 2.5
    max_extend: int = 2
    fit_min_width: int = 256


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
    few = seeds_reason(p.seeds)

    def label(r):
        return f"{r[INIT]} n={r[WIDTH]}"

    verdicts = []
    for init in p.inits:
        f = fits[fits[INIT] == init]
        slope = float(f["slope"].iloc[0]) if len(f) else math.nan
        stderr = float(f["stderr"].iloc[0]) if len(f) else math.nan
        expected = EXPONENT.get(init, math.nan)
        used = opt[(opt[INIT] == init) & (opt[WIDTH] >= p.fit_min_width)].to_dict("records")
        wide_fit = f"fit stderr {stderr:.2f} wider than the tolerance {SLOPE_TOL}" if stderr > SLOPE_TOL else None
        verdicts.append(Verdict.check(
            f"Init[{init}]: optimal lr ∝ n^{expected:g} (slope of log2 η* vs log2 n, n ≥ {p.fit_min_width})",
            f"{expected:+.2f} ± {SLOPE_TOL}",
            f"{slope:+.2f}" + (f" ± {stderr:.2f}" if math.isfinite(stderr) else ""),
            math.isfinite(slope) and abs(slope - expected) <= SLOPE_TOL,
            [edge_reason(used, label), few, wide_fit],
        ))
    wide = opt.pivot(index=WIDTH, columns=INIT, values="lr_opt")
    if {"A", "B"} <= set(wide.columns):
        big = wide[wide.index >= 512]
        gap = [f"n={n}: ×{a / b:.1f}" for n, a, b in zip(big.index, big["A"], big["B"])]
        at_big = opt[opt[WIDTH] >= 512].to_dict("records")
        verdicts.append(Verdict.check(
            "Init[A] admits larger learning rates: η*_A > η*_B at every width ≥ 512",
            "η*_A/η*_B > 1", ", ".join(gap) or "no width ≥ 512",
            bool(len(big)) and bool((big["A"] > big["B"]).all()),
            [edge_reason(at_big, label), few],
        ))
        ratio = pd.DataFrame({"width": wide.index, "ratio": wide["A"] / wide["B"]})
        rslope = float(fit_log2_slope(ratio, "width", "ratio")["slope"].iloc[0])
        verdicts.append(Verdict.check(
            "the ratio η*_A/η*_B grows with width (∝ n^1/2)",
            f"slope +0.50 ± {RATIO_TOL}",
            f"{rslope:+.2f} (×{ratio['ratio'].iloc[0]:.1f} → ×{ratio['ratio'].iloc[-1]:.1f})",
            math.isfinite(rslope) and abs(rslope - 0.5) <= RATIO_TOL,
            [edge_reason(opt.to_dict("records"), label), few],
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
        "optimal_lr": opt,
        "slopes": fits,
        "optimal_lr_table": {f"{r[INIT]}@{r[WIDTH]}": fmt_lr(r["lr_opt"]) for r in opt.to_dict("records")},
    }
    return Outcome(results, summary, figures, verdicts, product=WidthOptima(opt, p.steps))


EXPERIMENT = Experiment(
    id=ID,
    description="optimal lr vs width, Init[A] vs Init[B]: slopes -1/2 and -1 (2406.08447)",
    params=Params, quick=QUICK, full=FULL, run=run, order=10, in_all=True,
)
