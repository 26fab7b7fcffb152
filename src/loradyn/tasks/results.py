"""Reading a finished real-model sweep: optima per column, the papers' verdicts, tables, figure.

A *column* is one (init, lr_ratio) pair; its optimal lr is the grid lr with the best seed-mean
validation metric (a diverged or failed trial counts as the worst value; ties go to the lower
seed-mean ``tiebreak`` metric, e.g. ``val_loss``). :func:`analyse` returns the optima and the two
verdicts of arXiv 2406.08447 on the plain-LoRA column (lr_ratio = 1); :func:`results_markdown`
renders an experiment directory (``results.csv`` + ``summary.json``) as Markdown tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["analyse", "plot_metric_vs_lr", "results_markdown"]

_KEYS = ["lora.init", "optim.lr_ratio", "optim.lr_a"]


def _column_table(df, metric: str, mode: str):
    """Seed-mean / std / count of ``metric`` per (init, lr_ratio, lr_a); failures count as worst."""
    import numpy as np

    worst = -np.inf if mode == "max" else np.inf
    frame = df.copy()
    values = frame[metric].astype(float).to_numpy() if metric in frame else np.full(len(frame), np.nan)
    ok = (frame["status"] == "done").to_numpy() & np.isfinite(values)
    frame["_value"] = np.where(ok, values, worst)
    return frame.groupby(_KEYS, sort=True)["_value"].agg(["mean", "std", "count"]).reset_index()


def analyse(df, *, metric: str, mode: str, test_metric: str, tiebreak: str | None = None) -> dict[str, Any]:
    """Optimal lr per (init, lr_ratio), the best seed-mean metric, test metric there, and verdicts."""
    import numpy as np

    table = _column_table(df, metric, mode)
    tie = _column_table(df, tiebreak, "min") if tiebreak and tiebreak in df else None
    test = _column_table(df, test_metric, mode) if test_metric in df else None
    columns = []
    for (init, ratio), g in table.groupby(["lora.init", "optim.lr_ratio"], sort=True):
        g = g.sort_values("optim.lr_a")
        score = g["mean"].to_numpy() * (1 if mode == "max" else -1)
        best = np.flatnonzero(score == score.max())
        if tie is not None and len(best) > 1:
            t = tie[(tie["lora.init"] == init) & (tie["optim.lr_ratio"] == ratio)].sort_values("optim.lr_a")
            best = [best[int(np.argmin(t["mean"].to_numpy()[best]))]]
        i = int(best[0])
        lr = float(g["optim.lr_a"].iloc[i])
        row = {"init": str(init), "lr_ratio": float(ratio), "optimal_lr": lr,
               f"best_{metric}": _finite(g["mean"].iloc[i]), f"best_{metric}_std": _finite(g["std"].iloc[i]),
               "interior": 0 < i < len(g) - 1,
               "curve": {float(a): _finite(m) for a, m in zip(g["optim.lr_a"], g["mean"])}}
        if test is not None:
            t = test[(test["lora.init"] == init) & (test["optim.lr_ratio"] == ratio) & (test["optim.lr_a"] == lr)]
            row[f"{test_metric}_at_optimum"] = _finite(t["mean"].iloc[0]) if len(t) else None
        columns.append(row)
    plain = {c["init"]: c for c in columns if c["lr_ratio"] == 1.0}
    verdicts = []
    if "A" in plain and "B" in plain:
        a, b = plain["A"], plain["B"]
        verdicts.append({
            "claim": "Init[A]'s optimal learning rate is larger than Init[B]'s",
            "expected": "optimal lr Init[A] > Init[B]",
            "measured": f"Init[A] {a['optimal_lr']:.3g}, Init[B] {b['optimal_lr']:.3g}",
            "holds": bool(a["optimal_lr"] > b["optimal_lr"]),
        })
        ma, mb = a[f"best_{metric}"], b[f"best_{metric}"]
        better = (ma is not None and mb is not None) and (ma >= mb if mode == "max" else ma <= mb)
        verdicts.append({
            "claim": f"Init[A]'s best {metric} is at least as good as Init[B]'s",
            "expected": f"best {metric} Init[A] {'>=' if mode == 'max' else '<='} Init[B]",
            "measured": f"Init[A] {_fmt(ma)}, Init[B] {_fmt(mb)} (seed means)",
            "holds": bool(better),
        })
    return {"metric": metric, "mode": mode, "test_metric": test_metric, "columns": columns, "verdicts": verdicts}


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def plot_metric_vs_lr(df, *, metric: str, out: str | Path, title: str = "") -> Path:
    """Validation metric vs lr_a, one line (seed mean ± std band) per (init, lr_ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    frame = df[df["status"] == "done"].copy()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (init, ratio), g in frame.groupby(["lora.init", "optim.lr_ratio"], sort=True):
        stats = g.groupby("optim.lr_a")[metric].agg(["mean", "std"]).reset_index()
        label = f"Init[{init}]" + (f", LoRA+ ratio {ratio:g}" if ratio != 1 else "")
        line, = ax.plot(stats["optim.lr_a"], stats["mean"], marker="o", label=label,
                        linestyle="-" if ratio == 1 else "--")
        std = np.nan_to_num(stats["std"].to_numpy())
        ax.fill_between(stats["optim.lr_a"], stats["mean"] - std, stats["mean"] + std, alpha=0.15,
                        color=line.get_color())
    ax.set_xscale("log", base=2)
    if metric.endswith("_ppl"):
        ax.set_yscale("log")
    ax.set_xlabel("lr_a (learning rate of A; lr_b = ratio · lr_a)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def _seed_table(df, metric: str) -> list[str]:
    """``metric`` per (init, ratio, lr) and seed, its seed mean (— if any seed failed) and s/trial."""
    import pandas as pd

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


def _optima_and_verdicts(analysis: dict[str, Any], *, norms: bool) -> list[str]:
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
    lines += ["", "| verdict | expected | measured | holds |", "|---|---|---|---|"]
    for v in analysis["verdicts"]:
        lines.append(f"| {v['claim']} | {v['expected']} | {v['measured']} | {'yes' if v['holds'] else '**no**'} |")
    return lines


def results_markdown(out: str | Path) -> str:
    """Markdown tables of a finished experiment directory: the metric per (init, ratio, lr, seed), the optima.

    With a ``secondary`` analysis in ``summary.json`` (e.g. ``val_loss`` next to exact match), its
    tables follow, marked as not counted in the verdicts.
    """
    import pandas as pd

    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    df = pd.read_csv(out / "results.csv")
    lines = [f"`{summary['experiment']}`{' --quick' if summary['quick'] else ''}: {summary['trials']} trials, "
             f"wall {summary['wall_seconds'] / 60:.1f} min ({summary['executor']}), {summary['machine']}, {summary['date']}.",
             "", *_seed_table(df, summary["metric"]), "", *_optima_and_verdicts(summary, norms=True)]
    second = summary.get("secondary")
    if second:
        lines += ["", f"Secondary metric `{second['metric']}` (reported, not counted in the verdicts above):", "",
                  *_seed_table(df, second["metric"]), "", *_optima_and_verdicts(second, norms=False)]
    return "\n".join(lines) + "\n"
