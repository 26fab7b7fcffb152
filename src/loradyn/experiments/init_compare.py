"""Init[A] vs Init[B] (and LoRA+) on a real task: the protocol behind ``sentiment-init``,
``trec6-init``, ``wiki-init`` and ``gsm-init`` (one small module each declares its task and grids).

One sweep, ``lr_a × lr_ratio × init × seeds``, runs into ``OUT/sweep`` (resumable). A *column* is
one (init, lr_ratio) pair; its optimal lr is the grid lr with the best seed-mean validation metric
(:func:`loradyn.analysis.optimal_lr` without refinement: a failed or diverged trial counts as the
worst value; ties go to the lower seed-mean ``tiebreak`` metric). Verdicts, on the plain-LoRA
column (lr_ratio = 1; arXiv 2406.08447): Init[A]'s optimal lr is larger than Init[B]'s, and
Init[A]'s best validation metric is at least as good as Init[B]'s. An experiment may name a
``secondary`` metric (its optima and verdicts go to ``summary["secondary"]``, printed and tabled
but not counted). :func:`results_markdown` renders a finished experiment as Markdown tables.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..comparison import init_verdicts, method_rows
from .framework import (
    Context,
    Experiment,
    Outcome,
    results_frame,
)
from .grids import run_grid

__all__ = ["Metric", "Params", "analyse", "init_experiment", "results_markdown", "sweep_specs"]

INIT, RATIO, LR = "lora.init", "optim.lr_ratio", "optim.lr_a"
_KEYS = [INIT, RATIO, LR]


@dataclass(frozen=True)
class Params:
    """Parameters of a real-model init comparison (override with ``experiment.<name>=value``).

    Attributes:
        base: the base trial configuration (without seed; ``task.kind`` names the task).
        lr_log2: the ``optim.lr_a`` grid as ``[lo, hi, step]`` in log2.
        lr_ratios: the LoRA+ ratios (1 = plain LoRA; the verdicts read that column).
        lr_log2_by_ratio: an ``optim.lr_a`` grid of its own for some ratios (``{16: [-16, -10, 1]}``):
            LoRA+ moves the optimal ``lr_a`` down by about log2(ratio)/2 octaves, so one shared grid
            puts its optimum on an edge. Such a ratio runs as its own sweep (``OUT/sweep-ratio<r>``).
        inits: the init schemes.
        seeds: seeds per grid point.
    """

    base: dict[str, Any] = field(default_factory=dict)
    lr_log2: tuple[float, float, float] = (-13.0, -8.0, 1.0)
    lr_ratios: tuple[float, ...] = (1.0, 16.0)
    inits: tuple[str, ...] = ("A", "B")
    seeds: int = 3
    lr_log2_by_ratio: dict[float, tuple[float, float, float]] = field(default_factory=dict)

    def grids(self) -> list[tuple[tuple[float, ...], tuple[float, float, float], bool]]:
        """``(ratios, lr_log2, own)`` of each sweep: the shared grid first, then one per ratio with
        a grid of its own (``own`` true)."""
        own = {float(r): tuple(g) for r, g in self.lr_log2_by_ratio.items()}
        unknown = sorted(set(own) - {float(r) for r in self.lr_ratios})
        if unknown:
            from ..errors import SpecError

            raise SpecError(f"experiment.lr_log2_by_ratio names ratios {unknown} that are not in "
                            f"experiment.lr_ratios {list(self.lr_ratios)}: add them there or drop them")
        shared = tuple(r for r in self.lr_ratios if float(r) not in own)
        return ([(shared, tuple(self.lr_log2), False)] if shared else []) + [((r,), g, True) for r, g in own.items()]


@dataclass(frozen=True)
class Metric:
    """The selection metric (validation), its direction and the test metric read at the optimum."""

    name: str
    mode: str
    test: str


def sweep_specs(experiment_id: str, p: Params, metric: Metric, quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """The sweeps of an init comparison: ``(directory name, spec)`` pairs (plain dicts,
    :mod:`loradyn.sweep.spec` format); one sweep unless some ratio has its own lr grid."""
    name = experiment_id + ("-quick" if quick else "")
    out = []
    for ratios, lr_log2, own in p.grids():
        suffix = f"-ratio{ratios[0]:g}" if own else ""
        out.append(("sweep" + suffix, {
            "name": name + suffix, "metric": metric.name, "mode": metric.mode, "base": p.base,
            "grid": {LR: {"log2": list(lr_log2)}, RATIO: list(ratios), INIT: list(p.inits)},
            "seeds": p.seeds,
        }))
    return out


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def analyse(df: pd.DataFrame, metric: Metric, tiebreak: str | None = None) -> dict[str, Any]:
    """Optimal lr per (init, lr_ratio), the best seed-mean metric, the test metric there, and the
    papers' two three-valued verdicts (:mod:`loradyn.comparison`, docs/theory.md §8)."""
    rows = method_rows(df, metric=metric.name, mode=metric.mode, methods=[INIT, RATIO], lr=LR,
                       tiebreak=tiebreak, test_metric=metric.test)
    columns = []
    for r in rows:
        column = {"init": str(r["key"][INIT]), "lr_ratio": float(r["key"][RATIO]), "optimal_lr": r["optimal_lr"],
                  f"best_{metric.name}": r["best"], f"best_{metric.name}_std": r["best_std"],
                  "n_seeds": r["n_seeds"], "interior": r["interior"], "edge": r["edge"], "curve": r["curve"]}
        if r["chance"] is not None:
            column["chance"] = r["chance"]
        if "test_at_optimum" in r:
            column[f"{metric.test}_at_optimum"] = r["test_at_optimum"]
        columns.append(column)
    return {"metric": metric.name, "mode": metric.mode, "test_metric": metric.test, "columns": columns,
            "verdicts": init_verdicts(rows, metric.name, metric.mode)}


def _add_feature_norms(analysis: dict[str, Any], sweep_dirs: list[Path], df: pd.DataFrame) -> None:
    """Seed/layer-mean rms of Z_A and Z_B at the last probed step, for each column's optimal lr."""
    from ..sweep import load_probes

    probes = pd.concat([load_probes(d, with_config=False) for d in sweep_dirs], ignore_index=True)
    if probes.empty:
        return
    probes = probes[(probes["stat"] == "rms") & probes["feature"].isin(["z_a", "z_b"])]
    last = probes[probes["step"] == probes.groupby("trial_id")["step"].transform("max")]
    norms = last.groupby(["trial_id", "feature"])["value"].mean().unstack()
    for column in analysis["columns"]:
        ids = df[(df[INIT] == column["init"]) & (df[RATIO] == column["lr_ratio"])
                 & (df[LR] == column["optimal_lr"]) & (df["status"] == "done")]["trial_id"]
        rows = norms.loc[norms.index.intersection(ids)]
        if len(rows):
            column["feature_norms_at_optimum"] = {f"{f}_rms": float(rows[f].mean()) for f in rows.columns}


def _run(ctx: Context, *, metric: Metric, tiebreak: str | None, secondary: Metric | None) -> Outcome:
    p = ctx.params
    specs = sweep_specs(ctx.experiment, p, metric, ctx.quick)
    frames = [run_grid(ctx, spec["name"], spec["base"], spec["grid"], p.seeds, directory=ctx.out / directory,
                       metric=metric.name, mode=metric.mode) for directory, spec in specs]
    results = results_frame(frames, ctx.experiment)
    main = analyse(results, metric, tiebreak)
    _add_feature_norms(main, [ctx.out / directory for directory, _ in specs], results)
    summary: dict[str, Any] = {k: v for k, v in main.items() if k != "verdicts"}
    if secondary is not None:
        second = analyse(results, secondary)
        summary["secondary"] = second
        for v in second["verdicts"]:
            ctx.say(f"  (secondary, not counted) [{v.status}] {v.claim}: measured {v.measured}"
                    + (f" ({v.reason})" if v.reason else ""))
    from ..plots import plot_metric_vs_lr

    figure = plot_metric_vs_lr(results, metric=metric.name, mode=metric.mode, hue=[INIT, RATIO], band="std",
                               logy=metric.name.endswith("_ppl"), title=ctx.experiment)
    return Outcome(results, summary, {"metric_vs_lr": figure}, main["verdicts"])


def init_experiment(id: str, description: str, *, metric: Metric, quick: Params, full: Params, order: float,
                    tiebreak: str | None = None, secondary: Metric | None = None) -> Experiment:
    """An init comparison on a real task, as an :class:`~loradyn.experiments.framework.Experiment`."""
    run = functools.partial(_run, metric=metric, tiebreak=tiebreak, secondary=secondary)
    return Experiment(id=id, description=description, params=Params, quick=quick, full=full, run=run,
                      order=order, in_all=False)


# --- Markdown tables of a finished experiment --------------------------------------------------

def _seed_table(df: pd.DataFrame, metric: str) -> list[str]:
    """``metric`` per (init, ratio, lr) and seed, its seed mean (— if any seed failed) and s/trial."""
    seeds = sorted(df["seed"].unique())
    lines = [f"{metric} per seed (— = diverged/failed):", "",
             "| init | lr_ratio | lr_a | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | s/trial |",
             "|---|---|---|" + "---|" * len(seeds) + "---|---|"]
    for (init, ratio, lr), g in df.groupby(_KEYS, sort=True):
        vals = []
        for s in seeds:
            row = g[g["seed"] == s]
            ok = len(row) and row["status"].iloc[0] == "done" and pd.notna(row[metric].iloc[0])
            vals.append(f"{row[metric].iloc[0]:.4g}" if ok else "—")
        done = g[g["status"] == "done"][metric].dropna()
        mean = f"{done.mean():.4g}" if len(done) == len(g) else "—"
        lines.append(f"| {init} | {ratio:g} | {lr:.3g} | " + " | ".join(vals) + f" | {mean} | {g['seconds'].mean():.0f} |")
    return lines


def _optima_and_verdicts(analysis: Mapping[str, Any], *, norms: bool) -> list[str]:
    metric, test = analysis["metric"], analysis["test_metric"]
    head = f"| init | lr_ratio | optimal lr_a | best {metric} (± seed std) | {test} at the optimum |"
    lines = [head + (" Z_A rms / Z_B rms at the end (optimum) |" if norms else ""),
             "|---|---|---|---|---|" + ("---|" if norms else "")]
    for c in analysis["columns"]:
        best, std = c.get(f"best_{metric}"), c.get(f"best_{metric}_std")
        row = (f"| {c['init']} | {c['lr_ratio']:g} | {c['optimal_lr']:.3g}{'' if c['interior'] else ' (edge)'} | "
               f"{_fmt(best)}{'' if std is None else f' ± {std:.2g}'} | {_fmt(c.get(f'{test}_at_optimum'))} |")
        if norms:
            fn = c.get("feature_norms_at_optimum") or {}
            row += f" {_fmt(fn.get('z_a_rms'))} / {_fmt(fn.get('z_b_rms'))} |" if fn else " n/a |"
        lines.append(row)
    lines += ["", "| verdict | expected | measured | status | reason |", "|---|---|---|---|---|"]
    marks = {"holds": "holds", "fails": "**fails**", "undecided": "undecided"}
    for v in analysis["verdicts"]:
        lines.append(f"| {v['claim']} | {v['expected']} | {v['measured']} | {marks[v['status']]} | {v.get('reason', '')} |")
    return lines


def results_markdown(out: str | Path) -> str:
    """Markdown tables of a finished experiment directory: the metric per (init, ratio, lr, seed), the optima.

    With a ``secondary`` analysis in ``summary.json`` (e.g. ``val_loss`` next to exact match), its
    tables follow, marked as not counted in the verdicts.
    """
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    df = pd.read_csv(out / "results.csv")
    lines = [f"`{summary['experiment']}`{' --quick' if summary['quick'] else ''}: {summary['n_trials']} trials, "
             f"wall {summary['seconds'] / 60:.1f} min ({summary['executor']}), {summary['machine']}, {summary['date']}.",
             "", *_seed_table(df, summary["metric"]), "", *_optima_and_verdicts(summary, norms=True)]
    second = summary.get("secondary")
    if second:
        lines += ["", f"Secondary metric `{second['metric']}` (reported, not counted in the verdicts above):", "",
                  *_seed_table(df, second["metric"]), "", *_optima_and_verdicts(second, norms=False)]
    return "\n".join(lines) + "\n"
