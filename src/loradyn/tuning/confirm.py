"""The confirmation: a short sweep at the target over ×1/2, ×1 and ×2 of the transferred lr_a, with
the seeds the user asks for, and what it decides (docs/theory.md §8's three-valued style).

The recommended lr_a is the confirmation point with the best seed-mean metric (a diverged or failed
seed counts as the worst value, :mod:`loradyn.analysis`). The verdict on *"the confirmation
brackets the target's optimum"*:

* **holds**: the best point is ×1 and beats both neighbours by more than the seed std;
* **undecided**, with the reason and the next point to run: the best is an end point (×1/2 or ×2:
  the optimum may lie beyond it), the difference is within the seed std, one seed gives no
  spread, or every point diverged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..analysis import optimal_lr, seed_stats
from ..overrides import set_dotted
from ..verdicts import Verdict, noise_reason, seeds_reason, spread
from .plan import TunePlan

__all__ = ["MULTIPLIERS", "Confirmation", "confirm_spec", "decide"]

MULTIPLIERS = (0.5, 1.0, 2.0)


def confirm_spec(plan: TunePlan, init: Any, lr_ratio: Any, lr_a: float) -> dict[str, Any]:
    """The confirmation sweep: the target with the chosen init and ratio, lr_a at the three points."""
    sweep = plan.target
    base = copy.deepcopy(sweep.base)
    if init is not None:
        set_dotted(base, "lora.init", init)
    if lr_ratio is not None and plan.ratios != (None,):
        set_dotted(base, "optim.lr_ratio", float(lr_ratio))
    return {"name": f"{sweep.name}-confirm", "base": base, "grid": {"optim.lr_a": [lr_a * m for m in MULTIPLIERS]},
            "seeds": list(plan.confirm_seeds), "metric": sweep.metric, "mode": sweep.mode,
            **({"resources": sweep.resources} if sweep.resources else {})}


@dataclass
class Confirmation:
    """What the confirmation measured and decided."""

    lr_a: float | None                  # the recommended lr_a (None: every point diverged or failed)
    multiplier: float | None            # its multiple of the transferred lr_a
    status: str                         # "holds" or "undecided"
    reason: str
    next_lr_a: float | None             # the point to run next when undecided by an edge
    points: pd.DataFrame                # one row per point: multiplier, lr_a, mean, std, n_seeds, n_failed
    verdict: dict[str, Any] = field(default_factory=dict)


def decide(df: pd.DataFrame, *, transferred: float, metric: str, mode: str) -> Confirmation:
    """Decide the confirmation from its trials (one row per trial: ``optim.lr_a``, ``status``, ``metric``)."""
    stats = seed_stats(df, "optim.lr_a", metric=metric, mode=mode).sort_values("optim.lr_a").reset_index(drop=True)
    stats.insert(0, "multiplier", [round(float(v) / transferred, 6) for v in stats["optim.lr_a"]])
    opt = optimal_lr(df, lr="optim.lr_a", metric=metric, mode=mode, refine=False).iloc[0]
    n_seeds = int(opt["n_seeds"])
    claim = "the confirmation brackets the target's optimum (x1 best of x1/2, x1, x2)"
    if opt["edge"] == "none":
        reason = f"every confirmation point diverged or failed; next point: x1/4 = {transferred / 4:.4g}"
        verdict = Verdict.check(claim, "x1 best beyond the seed std", "all points failed", False, reason)
        return Confirmation(None, None, "undecided", reason, transferred / 4, stats, verdict.to_dict())
    lr = float(opt["lr_grid_opt"])
    i = int(stats.index[stats["optim.lr_a"] == lr][0])
    mult = float(stats["multiplier"].iloc[i])
    reasons: list[str | None] = [seeds_reason(n_seeds)]
    next_lr = None
    if i in (0, len(stats) - 1):
        factor = 0.5 if i == 0 else 2.0
        next_lr = lr * factor
        reasons.insert(0, f"the best point is the {'lower' if i == 0 else 'upper'} end x{_fmt(mult)}: the optimum "
                          f"may lie beyond it; next point: x{_fmt(mult * factor)} = {next_lr:.4g}")
    best, best_std = float(stats["mean"].iloc[i]), float(stats["std"].iloc[i])
    for j in (i - 1, i + 1):
        if 0 <= j < len(stats):
            other = float(stats["mean"].iloc[j])
            reasons.append(noise_reason(best, other, spread(best_std, float(stats["std"].iloc[j])),
                                        f"x{_fmt(mult)} vs x{_fmt(float(stats['multiplier'].iloc[j]))}:"
                                        " difference"))
    measured = ", ".join(f"x{_fmt(m)}: {v:.4g}" for m, v in zip(stats["multiplier"], stats["mean"]))
    verdict = Verdict.check(claim, "x1 best, beyond the seed std", measured, mult == 1.0, reasons)
    status = "holds" if verdict.status == "holds" else "undecided"
    if verdict.status == "fails":  # only possible without reasons, which an end point always gives
        status = "undecided"
    return Confirmation(lr, mult, status, verdict.reason, next_lr, stats, verdict.to_dict())


def _fmt(m: float) -> str:
    return {0.5: "1/2", 0.25: "1/4", 0.125: "1/8"}.get(m, f"{m:g}") if math.isfinite(m) else "?"
