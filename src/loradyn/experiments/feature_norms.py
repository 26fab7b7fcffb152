"""``feature-norms``: Z_A and Z_B over training at a small and a large width (arXiv 2406.08447, Fig. "feature norms").

Protocol: at n ∈ {128, 8192}, each init trains at its *own* optimal learning rate — taken from
``width-lr`` when it ran before in the same ``reproduce all`` (its :class:`WidthOptima`) or sits
next to the output directory (``<out>/../width-lr/summary.json``, same steps), or given with
``experiment.lr_A=…``/``experiment.lr_B=…``, or else found here with a small half-octave sweep
(the same protocol as ``width-lr``: seed-mean, band-fit refined). Then ≥ 5 seeds per init record
the data-averaged RMS and L2 norms of Z_A = A·φ(W_in x) (r-dim) and Z_B = B·Z_A (n-dim, before α)
every few steps, and the train loss every step.

Verdicts (docs/theory.md §8; final step, seed means; the ratios and exponents three-valued on their
95 % seed-bootstrap CI, :mod:`loradyn.bootstrap`):

* RMS(Z_A) is larger under Init[A] than under Init[B] at every width, by ≥ 2× at the largest
  ("much larger"; not with the ``mup`` readout, where both are predicted ∝ n^1/2);
* RMS(Z_A) grows as predicted for the readout the run uses (:mod:`~loradyn.experiments.predictions`):
  the papers' n^1/2 (Init[A]) and n^0 (Init[B]); with the default ``sp`` readout Init[A]'s optimal lr
  is n^-3/4, so Z_A ∝ n^1/4 (derived here, docs/theory.md §5.2); with ``task.readout=mup
  task.teacher_readout=independent`` both grow ∝ n^1/2 (Init[B] derived here, §5.3); the exponent
  log(ratio)/log(width ratio) ± 0.25;
* the final train loss is lower under Init[A] at every width.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis import seed_stats
from ..bootstrap import (
    LEVEL,
    N_RESAMPLES,
    percentile_ci,
    resample_counts,
    resampled_means,
    seeds_ci_reason,
)
from . import width_lr
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
from .grids import base_config, load_sweep_records, run_grid
from .predictions import regime_note, resolved_task, z_a_width_exponent
from .width_lr import INIT, WIDTH, WidthOptima

ID = "feature-norms"
EXP_TOL = 0.25


@dataclass(frozen=True)
class Params:
    """Parameters of ``feature-norms`` (override with ``experiment.<name>=value``).

    Attributes:
        widths: the widths (smallest and largest are compared).
        seeds: seeds of the recorded runs.
        steps: Adam steps T.
        record_every: norm-recording interval (steps).
        lr_A, lr_B: given learning rates (None: from width-lr or tuned here).
        tune_seeds, tune_span, tune_step: the tuning sweep when no optimum is known.
        n_resamples: seed-bootstrap resamples of the CIs.
    """

    widths: tuple[int, ...] = (128, 8192)
    seeds: int = 5
    steps: int = 200
    record_every: int = 5
    lr_A: float | None = None
    lr_B: float | None = None
    tune_seeds: int = 2
    tune_span: float = 2.0
    tune_step: float = 0.5
    n_resamples: int = N_RESAMPLES


FULL = Params()
QUICK = Params(widths=(128, 2048), seeds=2, steps=100, record_every=5, tune_span=2.0, tune_step=1.0)


def _width_lr_on_disk(ctx: Context) -> WidthOptima | None:
    """A finished ``width-lr`` next to this output directory (``<out>/../width-lr/summary.json``)."""
    path = ctx.out.parent / "width-lr" / "summary.json"
    try:
        summary = json.loads(path.read_text())
        optima = pd.DataFrame(summary["optimal_lr"])
        optima["lr_opt"] = pd.to_numeric(optima["lr_opt"], errors="coerce")
        return WidthOptima(optima, int(summary["params"]["steps"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _optima(ctx: Context, p: Params, base: dict) -> dict[tuple[str, int], tuple[float, str]]:
    """(init, width) -> (learning rate, where it came from)."""
    given = {"A": p.lr_A, "B": p.lr_B}
    out: dict[tuple[str, int], tuple[float, str]] = {}
    known = ctx.product(WidthOptima) or _width_lr_on_disk(ctx)
    for init in ("A", "B"):
        for n in p.widths:
            if given[init] is not None:
                out[(init, n)] = (float(given[init]), "given")
            elif known is not None and known.steps == p.steps:
                o = known.optima
                hit = o[(o[INIT] == init) & (o[WIDTH] == n)]
                if len(hit) and math.isfinite(float(hit["lr_opt"].iloc[0])):
                    out[(init, n)] = (float(hit["lr_opt"].iloc[0]), "width-lr")
    missing = sorted({n for init in ("A", "B") for n in p.widths if (init, n) not in out})
    if missing:
        inits = tuple(i for i in ("A", "B") if any((i, n) not in out for n in missing))
        tp = width_lr.Params(
            widths=tuple(missing), inits=inits, seeds=p.tune_seeds, steps=p.steps,
            lr_step=p.tune_step, span=p.tune_span, max_extend=1,
        )
        ctx.say(f"  tuning the learning rate at n = {list(missing)} ({p.tune_seeds} seeds)")
        _, opt = width_lr.sweep_optima(ctx, tp, base, name="feature-norms-tune")
        for r in opt.to_dict("records"):
            out.setdefault((r[INIT], int(r[WIDTH])), (float(r["lr_opt"]), "tuned"))
    return out


def run(ctx: Context) -> Outcome:
    p = ctx.params
    base = base_config(ctx, train={"steps": p.steps})
    lrs = _optima(ctx, p, base)
    frames, probes, curves = [], [], []
    for n in p.widths:
        for init in ("A", "B"):
            lr, _ = lrs[(init, n)]
            name = f"feature-norms-n{n}-{init}"
            b = {**base, "task": {**base["task"], "width": n}, "lora": {**base["lora"], "init": init},
                 "optim": {**base["optim"], "lr_a": lr},
                 "train": {**base["train"], "record_every": p.record_every, "curve_every": 1}}
            frames.append(run_grid(ctx, name, b, {}, p.seeds))
            probes.append(load_sweep_records(ctx, name, "probes"))
            curves.append(load_sweep_records(ctx, name, "curves"))
    results = results_frame(frames, ID)
    results.insert(results.columns.get_loc("error"), "lr_source",
                   [lrs[(i, w)][1] for i, w in zip(results[INIT], results[WIDTH])])
    probes = pd.concat(probes, ignore_index=True)
    curves = pd.concat(curves, ignore_index=True)

    last = probes[probes["step"] == probes["step"].max()]
    final = last.groupby([INIT, WIDTH, "feature", "stat"])["value"].mean().reset_index()

    def val(init, n, feature, stat="rms"):
        v = final[(final[INIT] == init) & (final[WIDTH] == n) & (final["feature"] == feature) & (final["stat"] == stat)]
        return float(v["value"].iloc[0]) if len(v) else math.nan

    seed_z = (last[(last["feature"] == "z_a") & (last["stat"] == "rms")]
              .groupby([INIT, WIDTH, "seed"])["value"].mean())
    # the seed bootstrap: RMS(Z_A) seed means per (init, width) under each resample of the seeds
    z_table = seed_z.unstack("seed")
    counts = resample_counts(z_table.shape[1], p.n_resamples, seed=0)
    z_reps = pd.DataFrame(resampled_means(z_table.to_numpy(dtype=float), counts), columns=z_table.index)

    def log2_z(init, n):
        return np.log2(z_reps[(init, n)].to_numpy()) if (init, n) in z_reps else np.full(len(z_reps), np.nan)

    def ci(values):
        return percentile_ci(values, n_seeds=z_table.shape[1])

    lo, hi = min(p.widths), max(p.widths)
    few = seeds_ci_reason(z_table.shape[1])
    verdicts = []
    task = resolved_task(base, ctx.base_overrides)
    preds = {init: z_a_width_exponent(init, task) for init in ("A", "B")}
    ratios = {n: val("A", n, "z_a") / val("B", n, "z_a") for n in p.widths}
    # A/B > 1 at every width and ≥ 2 at the largest <=> min(min_n log2(A/B), log2(A/B at hi) - 1) > 0
    margin = np.minimum(np.min([log2_z("A", n) - log2_z("B", n) for n in p.widths], axis=0),
                        log2_z("A", hi) - log2_z("B", hi) - 1.0)
    if preds["A"].value > preds["B"].value:
        verdicts.append(Verdict.bounded(
            "RMS(Z_A) is much larger under Init[A] than Init[B] (×≥2 at the largest width; published, arXiv 2406.08447)",
            f"A/B > 1 at every width, ≥ 2 at n={hi} (CI of min(log2 A/B, log2 A/B at n={hi} − 1) > 0)",
            ", ".join(f"n={n}: ×{r:.2f}" for n, r in ratios.items()),
            (0.0, math.inf), ci(margin), [few],
        ))
    span = math.log(hi / lo)
    for init, pred in preds.items():
        expected = pred.value
        e = math.log(val(init, hi, "z_a") / val(init, lo, "z_a")) / span if span > 0 else math.nan
        e_reps = (log2_z(init, hi) - log2_z(init, lo)) / math.log2(hi / lo) if span > 0 else np.full(1, np.nan)
        v = Verdict.estimate(
            f"Init[{init}]: RMS(Z_A) ∝ n^{expected:g} ({pred.label()}; exponent between n={lo} and n={hi})",
            expected, EXP_TOL, e, ci(e_reps), [few],
        )
        verdicts.append(Verdict(v.claim, v.expected, f"{v.measured} ({val(init, lo, 'z_a'):.2f} → "
                                f"{val(init, hi, 'z_a'):.2f})", v.status, v.reason, v.ci))
    stats = seed_stats(results, [INIT, WIDTH], metric="final_train_loss").set_index([INIT, WIDTH])
    loss, loss_std = stats["mean"], stats["std"]
    lower = {n: (loss.get(("A", n), math.nan), loss.get(("B", n), math.nan)) for n in p.widths}
    verdicts.append(Verdict.check(
        "the final train loss is lower under Init[A] (each at its optimal lr)",
        "loss_A < loss_B at every width",
        ", ".join(f"n={n}: {a:.2e} vs {b:.2e}" for n, (a, b) in lower.items()),
        all(a < b for a, b in lower.values()),
        [seeds_reason(p.seeds), *(noise_reason(a, b, spread(loss_std.get(("A", n)), loss_std.get(("B", n))),
                             f"n={n}: loss difference") for n, (a, b) in lower.items())],
    ))

    from ..plots import plot_feature_norms

    figures = {
        "feature_norms_rms": plot_feature_norms(probes, curves, stat="rms", title="RMS of Z_A, Z_B and train loss"),
        "feature_norms_l2": plot_feature_norms(probes, None, stat="l2", title="L2 norms of Z_A, Z_B"),
    }
    summary = {
        "model": {**{k: task.get(k, d) for k, d in (("form", "hidden"), ("readout", "sp"), ("teacher_readout", "shared"))},
                  "note": regime_note(task)},
        "bootstrap": {"n_resamples": p.n_resamples, "level": LEVEL, "seed": 0, "n_seeds": int(z_table.shape[1])},
        "learning_rates": {f"{i}@{n}": {"lr": lr, "log2": fmt_lr(lr), "source": src} for (i, n), (lr, src) in lrs.items()},
        "final_norms": final,
    }
    return Outcome(results, summary, figures, verdicts)


EXPERIMENT = Experiment(
    id=ID,
    description="Z_A/Z_B norms over training at n=128 and 8192, each init at its optimal lr (2406.08447)",
    params=Params, quick=QUICK, full=FULL, run=run, order=20, in_all=True,
)
