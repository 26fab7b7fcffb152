"""``loraplus-heatmap``: the (lr_a, lr_b) landscape of LoRA+ (arXiv 2402.12354).

Protocol: at ≥ 2 widths, both inits, ≥ 3 seeds, a 2-D log2 grid over ``lr_a`` and the ratio
``λ = lr_b / lr_a`` (one-octave steps; in (lr_a, lr_b) coordinates a parallelogram that contains
the diagonal λ = 1 and extends far above it); heatmaps of the seed-mean final train and test loss
with the diagonal lr_b = lr_a drawn and the best cell starred.

Verdicts (docs/theory.md §8):

* the best pair lies above the diagonal (λ* ≥ 2, i.e. at least one grid step) for every
  (width, init);
* the best pair beats the best diagonal pair (standard LoRA) for every (width, init);
* the optimal ratio grows with width: λ*(largest width) > λ*(smallest width) per init (theory:
  λ* ∝ n, i.e. ×8 from 128 to 1024; the verdict only asks for growth, and reports the factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..analysis import best_pair
from .framework import (
    Context,
    Experiment,
    Outcome,
    Verdict,
    fmt_lr,
    noise_reason,
    results_frame,
    seeds_reason,
    spread,
)
from .grids import base_config, half_octaves, run_grid
from .width_lr import INIT, WIDTH

ID = "loraplus-heatmap"

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
    """

    widths: tuple[int, ...] = (128, 1024)
    inits: tuple[str, ...] = ("A", "B")
    seeds: int = 3
    steps: int = 200
    lr_a_span: float = 4.0
    ratio_log2: tuple[float, float] = (-2.0, 12.0)
    lr_step: float = 1.0


FULL = Params()
QUICK = Params(widths=(128, 512), seeds=2, steps=100, lr_a_span=3.0, ratio_log2=(0.0, 8.0), lr_step=1.0)


def run(ctx: Context) -> Outcome:
    p = ctx.params
    base = base_config(ctx, train={"steps": p.steps})
    frames = []
    for n in p.widths:
        centre = ANCHOR_LOG2_LR_A + LR_A_EXPONENT * math.log2(n / 128)
        grid = {
            INIT: list(p.inits),
            "optim.lr_a": half_octaves(centre - p.lr_a_span, centre + p.lr_a_span, p.lr_step),
            "optim.lr_ratio": half_octaves(p.ratio_log2[0], p.ratio_log2[1], p.lr_step),
        }
        frames.append(run_grid(ctx, f"loraplus-n{n}", {**base, "task": {**base["task"], "width": n}}, grid, p.seeds))
    results = results_frame(frames, ID)
    best = best_pair(results, by=[INIT, WIDTH])
    best_test = best_pair(results, by=[INIT, WIDTH], metric="test_loss")
    rows = best.to_dict("records")

    few = seeds_reason(p.seeds)
    edges = [r for r in rows if r["edge"]]
    border = ", ".join(f"{r[INIT]} n={r[WIDTH]} ({r['edge']})" for r in edges)
    on_border = f"best pair on the grid border: {border}" if edges else None
    verdicts = []
    above = [(r[INIT], r[WIDTH], r["ratio_opt"]) for r in rows]
    verdicts.append(Verdict.check(
        "the optimal (lr_a, lr_b) lies above the diagonal: lr_b > lr_a",
        "λ* = lr_b/lr_a ≥ 2 for every (init, width)",
        ", ".join(f"{i} n={w}: λ*=2^{math.log2(r):.0f}" for i, w, r in above),
        all(r >= 2 for _, _, r in above),
        [few, on_border],
    ))
    verdicts.append(Verdict.check(
        "the best pair beats the best diagonal pair (standard LoRA, lr_b = lr_a)",
        "loss(best) < loss(best diagonal) for every (init, width)",
        ", ".join(f"{r[INIT]} n={r[WIDTH]}: ×{r['gain']:.2f}" for r in rows),
        bool((best["gain"] > 1).all()),
        [few, *(noise_reason(r["metric_opt"], r["metric_diag_opt"],
                             spread(r["metric_opt_std"], r["metric_diag_opt_std"]),
                             f"{r[INIT]} n={r[WIDTH]}: gain") for r in rows)],
    ))
    lo, hi = min(p.widths), max(p.widths)
    growth = []
    for init in p.inits:
        b = best[best[INIT] == init].set_index(WIDTH)["ratio_opt"]
        growth.append((init, float(b[lo]), float(b[hi])))
    verdicts.append(Verdict.check(
        f"the optimal ratio λ* grows with width (n={lo} → n={hi}; theory ∝ n)",
        f"λ*(n={hi}) > λ*(n={lo}) per init (theory ×{hi // lo})",
        ", ".join(f"{i}: 2^{math.log2(a):.0f} → 2^{math.log2(b):.0f}" for i, a, b in growth),
        all(b > a for _, a, b in growth),
        [few, on_border],
    ))
    if edges:
        ctx.say("  note: the best pair touches the grid border for "
                + ", ".join(f"{r[INIT]} n={r[WIDTH]} ({r['edge']})" for r in edges))

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
        "best_pairs": best,
        "best_pairs_test": best_test,
        "best_table": {f"{r[INIT]}@{r[WIDTH]}": {"lr_a": fmt_lr(r["lr_a_opt"]), "lr_b": fmt_lr(r["lr_b_opt"]),
                                                  "ratio": r["ratio_opt"]} for r in rows},
    }
    return Outcome(results, summary, figures, verdicts)


EXPERIMENT = Experiment(
    id=ID,
    description="lr_a x lr_b heatmaps at 2 widths: optimum above the diagonal, ratio grows with width (2402.12354)",
    params=Params, quick=QUICK, full=FULL, run=run, order=30, in_all=True,
)
