"""``loraplus-heatmap``: the (lr_a, lr_b) landscape of LoRA+ (arXiv 2402.12354).

Protocol: at n = 128, 512 and 2048, both inits, ≥ 5 seeds, a 2-D log2 grid over ``lr_a`` and the
ratio ``λ = lr_b / lr_a`` (one-octave steps; in (lr_a, lr_b) coordinates a parallelogram that
contains the diagonal λ = 1 and extends far above it). When the optimum of a (width, init) sits on
the grid's edge — the refined λ* at the ratio grid's end, or the best lr_a at λ* at the lr_a grid's
end — that axis is extended by ``extend_octaves`` for that (width, init), up to ``max_extend``
times, so the optimum ends up interior or is flagged. Heatmaps of the seed-mean final train and
test loss with the diagonal lr_b = lr_a drawn and the best cell starred.

λ* is the optimum of the *profile* (best seed-mean loss over lr_a at each λ) refined by the
quadratic over its near-optimal band (:mod:`loradyn.ratio_profile`), with a seed-bootstrap CI;
every verdict is decided on the CI of its statistic (docs/theory.md §8):

* the best pair lies above the diagonal: λ* > 1 for every (width, init) (the CI of the smallest
  log2 λ* lies above 0);
* the best pair beats the best diagonal pair (standard LoRA) for every (width, init) (the CI of the
  smallest log2 gain lies above 0);
* the optimal ratio grows with width: the slope of log2 λ* vs log2 n is > 0 (the CI of the smallest
  slope, over the inits predicted to grow, lies above 0);
* per init, that slope equals the prediction for the readout the run uses ± 0.25
  (:mod:`~loradyn.experiments.predictions`): the papers' λ* ∝ n (arXiv 2402.12354); with the default
  ``sp`` readout n^1/2 (derived here, docs/theory.md §5.2); with ``task.readout=mup
  task.teacher_readout=independent`` n for Init[A] and n^0 for Init[B] (derived here, §5.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis import best_pair
from ..bootstrap import LEVEL, N_RESAMPLES, edge_share_reason, log2_slopes
from ..ratio_profile import RatioBootstrap
from .framework import (
    Context,
    Experiment,
    Outcome,
    Verdict,
    fmt_lr,
    results_frame,
)
from .grids import base_config, half_octaves, run_grid
from .predictions import ratio_width_exponent, regime_note, resolved_task
from .width_lr import INIT, WIDTH

ID = "loraplus-heatmap"
RATIO_TOL = 0.25  # on the exponent of λ* in n (docs/theory.md §8: ratio exponents)
LR_A, RATIO = "optim.lr_a", "optim.lr_ratio"

# grid placement only: centre of the lr_a axis at n = 128 (log2) and its shift per doubling of n
# (LoRA+ predicts lr_a* ∝ n^-1 with lr_b* = Θ(1): the near-optimal ridge moves to smaller lr_a and
# larger ratios with width, and the grid follows it so the ridge stays inside)
ANCHOR_LOG2_LR_A = -8.0
LR_A_EXPONENT = -1.0


@dataclass(frozen=True)
class Params:
    """Parameters of ``loraplus-heatmap`` (override with ``experiment.<name>=value``).

    Attributes:
        widths: the widths (≥ 2).
        inits: the init schemes.
        seeds: seeds per cell.
        steps: Adam steps T.
        lr_a_span: octaves of lr_a on each side of the width's centre.
        ratio_log2: (lowest, highest) log2 of λ = lr_b / lr_a.
        lr_step: grid step in octaves on both axes.
        max_extend: how many times an axis is extended when the optimum sits on its edge.
        extend_octaves: octaves added per extension.
        n_resamples: seed-bootstrap resamples of the CIs.
    """

    widths: tuple[int, ...] = (128, 512, 2048)
    inits: tuple[str, ...] = ("A", "B")
    seeds: int = 5
    steps: int = 200
    lr_a_span: float = 4.0
    ratio_log2: tuple[float, float] = (-2.0, 10.0)
    lr_step: float = 1.0
    max_extend: int = 2
    extend_octaves: float = 3.0
    n_resamples: int = N_RESAMPLES


FULL = Params()
QUICK = Params(widths=(128, 512), seeds=2, steps=100, lr_a_span=3.0, ratio_log2=(0.0, 8.0), lr_step=1.0,
               max_extend=1, extend_octaves=2.0)


def _cells(results: pd.DataFrame, n: int, init: str) -> tuple[list[float], list[float]]:
    """The lr_a and λ values a (width, init) grid has so far."""
    sub = results[(results[WIDTH] == n) & (results[INIT] == init)]
    return ([float(v) for v in sorted(sub[LR_A].astype(float).unique())],
            [float(v) for v in sorted(sub[RATIO].astype(float).unique())])


def _extension(edge: str, lrs: list[float], ratios: list[float], p: Params) -> dict[str, list[float]] | None:
    """The block of cells that extends a grid beyond the edge its optimum sits on (None: interior)."""
    k, step = p.extend_octaves, p.lr_step
    if edge in ("low", "high"):
        lo, hi = math.log2(ratios[0]), math.log2(ratios[-1])
        new = half_octaves(lo - k, lo - step, step) if edge == "low" else half_octaves(hi + step, hi + k, step)
        return {LR_A: lrs, RATIO: new}
    if edge in ("lr_a low", "lr_a high"):
        lo, hi = math.log2(lrs[0]), math.log2(lrs[-1])
        new = half_octaves(lo - k, lo - step, step) if edge == "lr_a low" else half_octaves(hi + step, hi + k, step)
        return {LR_A: new, RATIO: ratios}
    return None


def run(ctx: Context) -> Outcome:
    p = ctx.params
    base = base_config(ctx, train={"steps": p.steps})
    frames = []
    for n in p.widths:
        centre = ANCHOR_LOG2_LR_A + LR_A_EXPONENT * math.log2(n / 128)
        grid = {
            INIT: list(p.inits),
            LR_A: half_octaves(centre - p.lr_a_span, centre + p.lr_a_span, p.lr_step),
            RATIO: half_octaves(p.ratio_log2[0], p.ratio_log2[1], p.lr_step),
        }
        frames.append(run_grid(ctx, f"loraplus-n{n}", {**base, "task": {**base["task"], "width": n}}, grid, p.seeds))
    results = results_frame(frames, ID)
    boot = RatioBootstrap(results, [INIT, WIDTH], n_resamples=p.n_resamples)
    for round_ in range(p.max_extend):
        todo = [(k[INIT], int(k[WIDTH]), pt[1]) for k, pt in zip(boot.keys, boot.point) if pt[1] not in ("", "none")]
        if not todo:
            break
        for init, n, edge in todo:
            block = _extension(edge, *_cells(results, n, init), p)
            ctx.say(f"  {init} n={n}: optimum on the {edge} edge; extending the grid by {p.extend_octaves:g} octaves")
            b = {**base, "task": {**base["task"], "width": n}}
            df = run_grid(ctx, f"loraplus-n{n}-{init}-ext{round_ + 1}", b, {INIT: [init], **block}, p.seeds)
            results = pd.concat([results, results_frame([df], ID)], ignore_index=True)
        boot = RatioBootstrap(results, [INIT, WIDTH], n_resamples=p.n_resamples)
    best = best_pair(results, by=[INIT, WIDTH])
    best_test = best_pair(results, by=[INIT, WIDTH], metric="test_loss")
    ratios = boot.table()
    best = best.merge(ratios, on=[INIT, WIDTH], how="left")
    rows = best.to_dict("records")

    def label(r):
        return f"{r[INIT]} n={r[WIDTH]}"

    few = boot.few
    edges = [r for r in rows if r["ratio_edge"]]
    border = ", ".join(f"{label(r)} ({r['ratio_edge']})" for r in edges)
    on_border = f"optimum on the grid's edge: {border}" if edges else None
    shaky = edge_share_reason(boot.edge, [f"{k[INIT]} n={k[WIDTH]}" for k in boot.keys])
    verdicts = []
    verdicts.append(Verdict.bounded(
        "the optimal (lr_a, lr_b) lies above the diagonal: lr_b > lr_a",
        "λ* > 1 for every (init, width) (CI of the smallest log2 λ* > 0)",
        ", ".join(f"{label(r)}: λ*=2^{r['log2_ratio_opt']:.1f}" for r in rows),
        (0.0, math.inf), boot.ci(boot.reps.min(axis=1)), [few, on_border, shaky],
    ))
    verdicts.append(Verdict.bounded(
        "the best pair beats the best diagonal pair (standard LoRA, lr_b = lr_a)",
        "loss(best) < loss(best diagonal) for every (init, width) (CI of the smallest log2 gain > 0)",
        ", ".join(f"{label(r)}: ×{2 ** r['log2_gain']:.2f}" for r in rows),
        (0.0, math.inf), boot.ci(boot.gain.min(axis=1)), [few, on_border, shaky],
    ))
    slopes, slope_reps = [], []
    for init in p.inits:
        cols = [boot.col(**{INIT: init, WIDTH: n}) for n in p.widths]
        reps = log2_slopes(list(p.widths), boot.reps[:, cols])
        point = log2_slopes(list(p.widths), np.array([[float(boot.point[j][0]) for j in cols]]))[0]
        lo, hi = boot.ci(reps)
        slopes.append({INIT: init, "slope": float(point), "ci_lo": lo, "ci_hi": hi,
                       "log2_ratio_opt": [float(boot.point[j][0]) for j in cols]})
        slope_reps.append(reps)
    lo_w, hi_w = min(p.widths), max(p.widths)
    task = resolved_task(base, ctx.base_overrides)
    preds = {init: ratio_width_exponent(init, task) for init in p.inits}
    growing = [i for i, init in enumerate(p.inits) if preds[init].value > 0]
    if growing:
        verdicts.append(Verdict.bounded(
            f"the optimal ratio λ* grows with width (n={lo_w} … {hi_w})",
            "slope of log2 λ* vs log2 n > 0 per init (" + "; ".join(
                f"Init[{p.inits[i]}]: {preds[p.inits[i]].value:g}, {preds[p.inits[i]].label()}" for i in growing) + ")",
            ", ".join(f"{slopes[i][INIT]}: {slopes[i]['slope']:+.2f} [{slopes[i]['ci_lo']:+.2f}, {slopes[i]['ci_hi']:+.2f}]"
                      for i in growing),
            (0.0, math.inf), boot.ci(np.min([slope_reps[i] for i in growing], axis=0)), [few, on_border, shaky],
        ))
    for init, s, reps in zip(p.inits, slopes, slope_reps):
        pred = preds[init]
        verdicts.append(Verdict.estimate(
            f"Init[{init}]: λ* ∝ n^{pred.value:g} ({pred.label()}; slope of log2 λ* vs log2 n)",
            pred.value, RATIO_TOL, s["slope"], boot.ci(reps), [few, on_border, shaky],
        ))
    if edges:
        ctx.say("  note: the optimum is on the grid's edge for " + ", ".join(f"{label(r)} ({r['ratio_edge']})" for r in edges))

    from ..plots import _plt, plot_lr_heatmap

    plt = _plt()
    figures = {}
    for loss in ("final_train_loss", "test_loss"):
        fig, axes = plt.subplots(len(p.inits), len(p.widths), figsize=(5 * len(p.widths), 4.2 * len(p.inits)), squeeze=False)
        for i, init in enumerate(p.inits):
            for j, n in enumerate(p.widths):
                sub = results[(results[INIT] == init) & (results[WIDTH] == n)]
                plot_lr_heatmap(sub, metric=loss, title=f"Init[{init}], n={n}: {loss}", ax=axes[i][j])
        fig.tight_layout()
        figures[f"heatmap_{'train' if loss == 'final_train_loss' else 'test'}"] = fig
    summary = {
        "model": {**{k: task.get(k, d) for k, d in (("form", "hidden"), ("readout", "sp"), ("teacher_readout", "shared"))},
                  "note": regime_note(task)},
        "best_pairs": best,
        "best_pairs_test": best_test,
        "ratio_slopes": slopes,
        "bootstrap": {"n_resamples": p.n_resamples, "level": LEVEL, "seed": 0, "n_seeds": boot.n_seeds},
        "best_table": {f"{r[INIT]}@{r[WIDTH]}": {"lr_a": fmt_lr(r["lr_a_opt"]), "lr_b": fmt_lr(r["lr_b_opt"]),
                                                  "ratio": r["ratio_opt"],
                                                  "ratio_refined": f"2^{r['log2_ratio_opt']:.2f}"} for r in rows},
    }
    return Outcome(results, summary, figures, verdicts)


EXPERIMENT = Experiment(
    id=ID,
    description="lr_a x lr_b heatmaps at 3 widths: optimum above the diagonal, ratio grows with width (2402.12354)",
    params=Params, quick=QUICK, full=FULL, run=run, order=30, in_all=True,
)
