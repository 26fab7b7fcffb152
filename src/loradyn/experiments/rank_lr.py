"""``rank-lr``: optimal learning rate vs LoRA rank under μA (arXiv 2602.06204, docs/theory.md §4).

Protocol: at a fixed width, ranks r ∈ {1, …, 64}; Init[A] with α ∈ {1, 1/√r, 1/r} and Init[B]
with α = 1 (the multiplier of ``W* + α·B·A``), plus full finetuning of W* with Adam as the
reference; a half-octave lr grid per variant, the union over ranks of ±``span`` octaves around
where an exploratory run found each rank's optimum (:data:`GRID_CENTRE`; placement only, the
verdicts compare measured optima with μA's exponents), ≥ 3 seeds, η* = argmin
of the seed-mean final train loss refined by the parabola in log2(lr); the slope of log2 η* vs
log2 r per variant. The teacher's rank stays fixed (``task.teacher_rank``), so only the student
changes with r.

Verdicts: slopes −0.5, −0.25, 0, 0 (Init[A] α = 1, 1/√r, 1/r; Init[B] α = 1), each ± 0.15 (the
tolerance of the width slopes, docs/theory.md §8; μA is asymptotic in n and r jointly and here
r/n reaches 1/8, so deviations at the large ranks are expected and reported); Init[B] with α = 1
has its optimum within 2× of full finetuning (geometric mean over ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
from .width_lr import INIT, LR

ID = "rank-lr"
RANK, RULE, METHOD = "lora.rank", "lora.alpha_rule", "lora.method"

# (init, alpha_rule) -> the μA exponent of the optimal lr in r (the claims under test)
VARIANTS = {("A", "1"): -0.5, ("A", "1/sqrt(r)"): -0.25, ("A", "1/r"): 0.0, ("B", "1"): 0.0}
# grid placement only: (log2 lr at n = 512 and r = 4, change per doubling of r) of the optimum
# found in a one-seed exploratory run of this engine (T = 200); widths move it by WIDTH_SHIFT per
# doubling (the width-lr measurement), full finetuning by -1 per doubling
GRID_CENTRE = {("A", "1"): (-7.0, -0.58), ("A", "1/sqrt(r)"): (-7.2, -0.21), ("A", "1/r"): (-6.0, -0.09), ("B", "1"): (-8.8, -0.38)}
WIDTH_SHIFT = {"A": -0.85, "B": -0.95}
FULL_FT_CENTRE = -11.8
SLOPE_TOL = 0.15


def variant_name(init: str, rule: str) -> str:
    return f"Init[{init}], α={rule}"


@dataclass(frozen=True)
class Params:
    """Parameters of ``rank-lr`` (override with ``experiment.<name>=value``).

    Attributes:
        width: the fixed width n.
        ranks: the ranks r.
        seeds: seeds per configuration.
        steps: Adam steps T.
        lr_step: grid step in octaves.
        span: octaves on each side of the expected optimum (per rank; the grid is their union).
        full_ft: also run full finetuning of W* (the reference).
    """

    width: int = 512
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    seeds: int = 3
    steps: int = 200
    lr_step: float = 0.5
    span: float = 2.5
    full_ft: bool = True


FULL = Params()
QUICK = Params(width=256, ranks=(1, 4, 16, 64), seeds=2, steps=100, lr_step=1.0, span=2.0)


def _centre(init: str, rule: str, width: int, rank: int) -> float:
    anchor, per_doubling = GRID_CENTRE[(init, rule)]
    return anchor + WIDTH_SHIFT[init] * math.log2(width / 512) + per_doubling * math.log2(rank / 4)


def run(ctx: Context) -> Outcome:
    p = ctx.params
    base = base_config(ctx, task={"width": p.width}, train={"steps": p.steps})
    frames = []
    for (init, rule) in VARIANTS:
        lrs = sorted({lr for r in p.ranks for lr in half_octaves(_centre(init, rule, p.width, r) - p.span, _centre(init, rule, p.width, r) + p.span, p.lr_step)})
        b = {**base, "lora": {**base["lora"], "init": init, "alpha_rule": rule}}
        name = f"rank-lr-{init}-{rule.replace('/', '_')}"
        frames.append(run_grid(ctx, name, b, {RANK: list(p.ranks), LR: lrs}, p.seeds))
    if p.full_ft:
        centre = FULL_FT_CENTRE - math.log2(p.width / 512)
        b = {**base, "lora": {**base["lora"], "method": "full"}}
        frames.append(run_grid(ctx, "rank-lr-full", b, {LR: half_octaves(centre - p.span, centre + p.span, p.lr_step)}, p.seeds))
    results = results_frame(frames, ID)
    lora = results[results[METHOD] == "lora"].copy()
    lora["variant"] = [variant_name(i, a) for i, a in zip(lora[INIT], lora[RULE])]
    opt = optimal_lr(lora, by=["variant", INIT, RULE, RANK], lr=LR)
    fits = fit_log2_slope(opt, RANK, "lr_opt", by="variant")
    full_opt = optimal_lr(results[results[METHOD] == "full"], lr=LR) if p.full_ft else None
    fft = float(full_opt["lr_opt"].iloc[0]) if full_opt is not None and len(full_opt) else math.nan

    few = seeds_reason(p.seeds)

    def label(r):
        return f"{r['variant']} r={r[RANK]}"

    verdicts = []
    for (init, rule), expected in VARIANTS.items():
        name = variant_name(init, rule)
        f = fits[fits["variant"] == name]
        slope = float(f["slope"].iloc[0]) if len(f) else math.nan
        stderr = float(f["stderr"].iloc[0]) if len(f) else math.nan
        wide_fit = f"fit stderr {stderr:.2f} wider than the tolerance {SLOPE_TOL}" if stderr > SLOPE_TOL else None
        verdicts.append(Verdict.check(
            f"{name}: optimal lr ∝ r^{expected:g} (slope of log2 η* vs log2 r)",
            f"{expected:+.2f} ± {SLOPE_TOL}",
            f"{slope:+.2f}" + (f" ± {stderr:.2f}" if math.isfinite(stderr) else ""),
            math.isfinite(slope) and abs(slope - expected) <= SLOPE_TOL,
            [edge_reason(opt[opt["variant"] == name].to_dict("records"), label), few, wide_fit],
        ))
    if p.full_ft:
        b = opt[opt["variant"] == variant_name("B", "1")]["lr_opt"].astype(float)
        gm = float(np.exp(np.log(b[b > 0]).mean())) if len(b) else math.nan
        factor = gm / fft if fft > 0 else math.nan
        used = [*opt[opt["variant"] == variant_name("B", "1")].to_dict("records"),
                *({**r, "variant": "full finetuning", RANK: "-"} for r in full_opt.to_dict("records"))]
        verdicts.append(Verdict.check(
            "Init[B], α=1 transfers to full finetuning: its optimal lr is within 2× of FFT's",
            "1/2 ≤ η*_B / η*_FFT ≤ 2 (geometric mean over ranks)",
            f"η*_B = {fmt_lr(gm)}, η*_FFT = {fmt_lr(fft)}: ×{factor:.2f}",
            math.isfinite(factor) and 0.5 <= factor <= 2.0,
            [edge_reason(used, label), few],
        ))
    edges = opt[opt["edge"].isin(["low", "high", "none"])]
    if not edges.empty:
        ctx.say("  note: optimum on a grid edge for "
                + ", ".join(f"{r['variant']} r={r[RANK]} ({r['edge']})" for r in edges.to_dict("records")))

    from ..plots import plot_metric_vs_lr, plot_rank_lr

    figures = {
        "optimal_lr_vs_rank": plot_rank_lr(opt, reference=fft, fits=fits, title=f"optimal lr vs rank (n={p.width})"),
        "loss_vs_lr": plot_metric_vs_lr(lora, hue=RANK, panel="variant", optimum=opt, title="final train loss vs lr"),
    }
    summary = {
        "optimal_lr": opt,
        "slopes": fits,
        "full_ft_optimal_lr": fft,
        "edges": edges,
    }
    return Outcome(results, summary, figures, verdicts)


EXPERIMENT = Experiment(
    id=ID,
    description="optimal lr vs rank (muA): slopes -1/2, -1/4, 0 (Init[A], alpha=1, 1/sqrt(r), 1/r), 0 (Init[B]) + full FT (2602.06204)",
    params=Params, quick=QUICK, full=FULL, run=run, order=40, in_all=True,
)
