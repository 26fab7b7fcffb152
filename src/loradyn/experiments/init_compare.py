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

from ..analysis import optimal_lr, seed_stats
from .framework import (
    Context,
    Experiment,
    Outcome,
    Verdict,
    noise_reason,
    results_frame,
    seeds_reason,
    spread,
)
from .grids import run_grid

__all__ = ["Metric", "Params", "analyse", "init_experiment", "results_markdown", "sweep_spec"]

INIT, RATIO, LR = "lora.init", "optim.lr_ratio", "optim.lr_a"
_KEYS = [INIT, RATIO, LR]


@dataclass(frozen=True)
class Params:
    """Parameters of a real-model init comparison (override with ``experiment.<name>=value``).

    Attributes:
        base: the base trial configuration (without seed; ``task.kind`` names the task).
        lr_log2: the ``optim.lr_a`` grid as ``[lo, hi, step]`` in log2.
        lr_ratios: the LoRA+ ratios (1 = plain LoRA; the verdicts read that column).
        inits: the init schemes.
        seeds: seeds per grid point.
    """

    base: dict[str, Any] = field(default_factory=dict)
    lr_log2: tuple[float, float, float] = (-13.0, -8.0, 1.0)
    lr_ratios: tuple[float, ...] = (1.0, 16.0)
    inits: tuple[str, ...] = ("A", "B")
    seeds: int = 3


@dataclass(frozen=True)
class Metric:
    """The selection metric (validation), its direction and the test metric read at the optimum."""

    name: str
    mode: str
    test: str


def sweep_spec(experiment_id: str, p: Params, metric: Metric, quick: bool) -> dict[str, Any]:
    """The sweep of an init comparison (plain dict, :mod:`loradyn.sweep.spec` format)."""
    return {
        "name": experiment_id + ("-quick" if quick else ""),
        "metric": metric.name,
        "mode": metric.mode,
        "base": p.base,
        "grid": {LR: {"log2": list(p.lr_log2)}, RATIO: list(p.lr_ratios), INIT: list(p.inits)},
        "seeds": p.seeds,
    }


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


CHANCE_MARGIN = 0.01  # an accuracy this close to the majority-class rate is "at chance" when no seed std is known


def _chance(df: pd.DataFrame, metric: Metric) -> float | None:
    """The majority-class accuracy of the selection split (classification kinds report it)."""
    column = metric.name.replace("accuracy", "chance_accuracy")
    if not metric.name.endswith("accuracy") or column not in df:
        return None
    values = pd.to_numeric(df[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def _column_reasons(row: Mapping[str, Any], curve: pd.DataFrame, chance: float | None, who: str) -> dict[str, str]:
    """Why this column's optimum cannot decide a claim, by kind of reason."""
    reasons: dict[str, str] = {}
    if row["edge"] in ("low", "high", "none"):
        reasons["edge"] = f"{who}'s optimum on a grid edge ({row['edge']})"
    best, std = float(row["metric_opt"]), float(row["metric_opt_std"])
    if chance is not None and math.isfinite(best):
        margin = std if math.isfinite(std) else CHANCE_MARGIN
        if best - chance <= max(margin, CHANCE_MARGIN):
            reasons["chance"] = f"{who} at chance level ({best:.3g} vs majority class {chance:.3g})"
    others = curve[curve[LR] != row["lr_grid_opt"]]["mean"].to_numpy(dtype=float)
    others = others[pd.notna(others) & (abs(others) != math.inf)]
    if len(others) and math.isfinite(std) and math.isfinite(best):
        runner_up = others.max() if row.get("mode") == "max" else others.min()
        if abs(best - runner_up) <= std:
            reasons["flat"] = f"{who}'s best lr beats the next within the seed std {std:.2g}"
    return reasons


def analyse(df: pd.DataFrame, metric: Metric, tiebreak: str | None = None) -> dict[str, Any]:
    """Optimal lr per (init, lr_ratio), the best seed-mean metric, the test metric there, and the
    three-valued verdicts (docs/theory.md §8)."""
    opt = optimal_lr(df, [INIT, RATIO], lr=LR, metric=metric.name, mode=metric.mode, refine=False,
                     tiebreak=tiebreak if tiebreak in df else None)
    curves = seed_stats(df, _KEYS, metric=metric.name, mode=metric.mode)
    test = seed_stats(df, _KEYS, metric=metric.test, mode=metric.mode) if metric.test in df else None
    chance = _chance(df, metric)
    columns, reasons = [], {}
    for r in opt.to_dict("records"):
        init, ratio, lr = r[INIT], r[RATIO], r["lr_grid_opt"]
        curve = curves[(curves[INIT] == init) & (curves[RATIO] == ratio)].sort_values(LR)
        row = {"init": str(init), "lr_ratio": float(ratio), "optimal_lr": float(lr),
               f"best_{metric.name}": _finite(r["metric_opt"]), f"best_{metric.name}_std": _finite(r["metric_opt_std"]),
               "n_seeds": int(r["n_seeds"]), "interior": r["edge"] in ("", "unstable"), "edge": r["edge"],
               "curve": {float(a): _finite(m) for a, m in zip(curve[LR], curve["mean"])}}
        if chance is not None:
            row["chance"] = chance
        if test is not None:
            t = test[(test[INIT] == init) & (test[RATIO] == ratio) & (test[LR] == lr)]
            row[f"{metric.test}_at_optimum"] = _finite(t["mean"].iloc[0]) if len(t) else None
        columns.append(row)
        reasons[(row["init"], row["lr_ratio"])] = _column_reasons({**r, "mode": metric.mode}, curve, chance,
                                                                  f"Init[{init}]")
    plain = {c["init"]: c for c in columns if c["lr_ratio"] == 1.0}
    verdicts = []
    if "A" in plain and "B" in plain:
        a, b = plain["A"], plain["B"]
        ra, rb = reasons[("A", 1.0)], reasons[("B", 1.0)]
        few = seeds_reason(min(a["n_seeds"], b["n_seeds"]))
        verdicts.append(Verdict.check(
            "Init[A]'s optimal learning rate is larger than Init[B]'s",
            "optimal lr Init[A] > Init[B]",
            f"Init[A] {a['optimal_lr']:.3g}, Init[B] {b['optimal_lr']:.3g}",
            bool(a["optimal_lr"] > b["optimal_lr"]),
            [few, *(x.get(k) for k in ("edge", "chance", "flat") for x in (ra, rb))],
        ))
        ma, mb = a[f"best_{metric.name}"], b[f"best_{metric.name}"]
        better = (ma is not None and mb is not None) and (ma >= mb if metric.mode == "max" else ma <= mb)
        sa, sb = a[f"best_{metric.name}_std"], b[f"best_{metric.name}_std"]
        verdicts.append(Verdict.check(
            f"Init[A]'s best {metric.name} is at least as good as Init[B]'s",
            f"best {metric.name} Init[A] {'>=' if metric.mode == 'max' else '<='} Init[B]",
            f"Init[A] {_fmt(ma)}, Init[B] {_fmt(mb)} (seed means)",
            bool(better),
            [few, ra.get("chance"), rb.get("chance"),
             noise_reason(ma if ma is not None else math.nan, mb if mb is not None else math.nan,
                          spread(sa if sa is not None else math.nan, sb if sb is not None else math.nan))],
        ))
    return {"metric": metric.name, "mode": metric.mode, "test_metric": metric.test, "columns": columns,
            "verdicts": verdicts}


def _add_feature_norms(analysis: dict[str, Any], sweep_dir: Path, df: pd.DataFrame) -> None:
    """Seed/layer-mean rms of Z_A and Z_B at the last probed step, for each column's optimal lr."""
    from ..sweep import load_probes

    probes = load_probes(sweep_dir, with_config=False)
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
    spec = sweep_spec(ctx.experiment, p, metric, ctx.quick)
    df = run_grid(ctx, spec["name"], spec["base"], spec["grid"], p.seeds, directory=ctx.out / "sweep",
                  metric=metric.name, mode=metric.mode)
    results = results_frame([df], ctx.experiment)
    main = analyse(results, metric, tiebreak)
    _add_feature_norms(main, ctx.out / "sweep", results)
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
