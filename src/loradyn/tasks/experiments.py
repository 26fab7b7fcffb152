"""Init[A] vs Init[B] (and LoRA+) on real pretrained models: ``loradyn reproduce <id>``.

=================  ==========================================  =====================  ===========
id                 sweep                                        selection metric       test metric
=================  ==========================================  =====================  ===========
``sentiment-init``  MiniLM, RT polarity: lr × init × ratio × seed  ``val_accuracy`` (max)   ``test_accuracy``
``trec6-init``      MiniLM, TREC-6: the same                      ``val_accuracy`` (max)   ``test_accuracy``
``wiki-init``       SmolLM2, Wikipedia chunks                     ``val_ppl`` (min)        ``test_ppl``
``gsm-init``        SmolLM2, reasoning-gym (chain_sum when quick)  ``val_exact_match`` (max) ``test_exact_match``
=================  ==========================================  =====================  ===========

Each runs on :func:`loradyn.run_sweep` (resumable: the sweep lives in ``OUT/sweep``) and writes
``OUT/results.csv`` (one row per trial), ``OUT/summary.json`` (optimal lr, best validation metric
and test metric at the optimum per (init, lr_ratio), and ``verdicts``) and ``OUT/metric_vs_lr.png``.

The optimal lr of a column is the grid lr with the best seed-mean validation metric (a diverged or
failed trial counts as the worst value). Verdicts, on the plain-LoRA column (lr_ratio = 1):
Init[A]'s optimal lr is larger than Init[B]'s (arXiv 2406.08447), and Init[A]'s best validation
metric is at least as good as Init[B]'s. A verdict that does not hold is reported as it is.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENTS", "analyse", "reproduce_real", "sweep_spec"]

_MINILM_LORA = {"rank": 8, "alpha": 16.0, "target_modules": ["query", "key", "value", "dense"]}
_SMOL_LORA = {"rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
# sentiment-init and trec6-init share training and grid settings; only the task differs
_MINILM_FULL = {"train": {"steps": 100, "batch_size": 16, "eval_batch_size": 50, "warmup_steps": 10, "probe_every": 25},
                "grid": {"optim.lr_a": {"log2": [-13, -8, 1]}, "optim.lr_ratio": [1.0, 16.0], "lora.init": ["A", "B"]}}
_MINILM_QUICK = {"train": {"steps": 40, "batch_size": 16, "eval_batch_size": 50, "warmup_steps": 8, "probe_every": 10},
                 "grid": {"optim.lr_a": {"log2": [-11, -7, 2]}, "optim.lr_ratio": [1.0, 16.0], "lora.init": ["A", "B"]}}

EXPERIMENTS: dict[str, dict[str, Any]] = {
    "sentiment-init": {
        "metric": "val_accuracy", "mode": "max", "test": "test_accuracy",
        "full": {
            "base": {"task": {"kind": "sentiment", "n_val": 1000, "n_test": 1000}, "lora": _MINILM_LORA,
                     "optim": {"name": "adamw"}, "train": _MINILM_FULL["train"]},
            "grid": _MINILM_FULL["grid"],
            "seeds": 3,
        },
        "quick": {
            "base": {"task": {"kind": "sentiment", "n_train": 640, "n_val": 300, "n_test": 300},
                     "lora": _MINILM_LORA, "optim": {"name": "adamw"}, "train": _MINILM_QUICK["train"]},
            "grid": _MINILM_QUICK["grid"],
            "seeds": 2,
        },
    },
    "trec6-init": {
        "metric": "val_accuracy", "mode": "max", "test": "test_accuracy",
        "full": {
            "base": {"task": {"kind": "trec6"}, "lora": _MINILM_LORA, "optim": {"name": "adamw"},
                     "train": _MINILM_FULL["train"]},
            "grid": _MINILM_FULL["grid"],
            "seeds": 3,
        },
        "quick": {
            "base": {"task": {"kind": "trec6", "n_train": 640, "n_val": 300, "n_test": 300},
                     "lora": _MINILM_LORA, "optim": {"name": "adamw"}, "train": _MINILM_QUICK["train"]},
            "grid": _MINILM_QUICK["grid"],
            "seeds": 2,
        },
    },
    "wiki-init": {
        "metric": "val_ppl", "mode": "min", "test": "test_ppl",
        # bf16: 2.4x faster than float32 on an avx512_bf16 CPU (benchmarks/bench_causal_step.py)
        "full": {
            "base": {"task": {"kind": "wiki-lm", "n_val": 64, "n_test": 64}, "lora": _SMOL_LORA,
                     "optim": {"name": "adamw"},
                     "train": {"steps": 100, "batch_size": 8, "eval_batch_size": 16, "warmup_steps": 10,
                               "bf16": True, "max_pack": 4, "probe_every": 10}},
            "grid": {"optim.lr_a": {"log2": [-14, -6, 2]}, "optim.lr_ratio": [1.0, 16.0], "lora.init": ["A", "B"]},
            "seeds": 3,
        },
        "quick": {
            "base": {"task": {"kind": "wiki-lm", "seq_len": 64, "n_train": 400, "n_val": 16, "n_test": 16},
                     "lora": _SMOL_LORA, "optim": {"name": "adamw"},
                     "train": {"steps": 20, "batch_size": 4, "eval_batch_size": 8, "max_pack": 3,
                               "probe_every": 10}},
            "grid": {"optim.lr_a": {"log2": [-12, -8, 2]}, "optim.lr_ratio": [1.0], "lora.init": ["A", "B"]},
            "seeds": 1,
        },
    },
    "gsm-init": {
        "metric": "val_exact_match", "mode": "max", "test": "test_exact_match", "tiebreak": "val_loss",
        # a short sweep (no LoRA+ column): greedy decoding of 128 problems costs ~4 min a trial.
        # max_pack 1: a K=2 pack measured 0.78x as fast as solo runs (gsm batches are long and
        # ragged), so every trial is its own claim and is stored as soon as it finishes.
        "full": {
            "base": {"task": {"kind": "gsm", "dataset": "gsm_symbolic", "n_train": 2000, "n_val": 64, "n_test": 64},
                     "lora": _SMOL_LORA, "optim": {"name": "adamw"},
                     "train": {"steps": 80, "batch_size": 8, "eval_batch_size": 16, "warmup_steps": 8,
                               "bf16": True, "max_pack": 1, "probe_every": 20}},
            "grid": {"optim.lr_a": {"log2": [-13, -9, 2]}, "optim.lr_ratio": [1.0], "lora.init": ["A", "B"]},
            "seeds": 3,
        },
        "quick": {
            "base": {"task": {"kind": "gsm", "dataset": "chain_sum", "n_train": 400, "n_val": 24, "n_test": 24,
                              "max_length": 128},
                     "lora": _SMOL_LORA, "optim": {"name": "adamw"},
                     "train": {"steps": 30, "batch_size": 4, "eval_batch_size": 12, "max_pack": 3,
                               "probe_every": 10}},
            "grid": {"optim.lr_a": {"log2": [-11, -7, 2]}, "optim.lr_ratio": [1.0], "lora.init": ["A", "B"]},
            "seeds": 1,
        },
    },
}


def sweep_spec(experiment_id: str, *, quick: bool, seeds: int | None = None) -> dict[str, Any]:
    """The sweep (plain dict, :mod:`loradyn.sweep.spec` format) of an experiment."""
    from ..errors import LoradynError

    if experiment_id not in EXPERIMENTS:
        raise LoradynError(f"unknown experiment {experiment_id!r}; valid: {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[experiment_id]
    spec = copy.deepcopy(exp["quick" if quick else "full"])
    if seeds is not None:
        if seeds < 1:
            raise LoradynError(f"--seeds must be >= 1, got {seeds}")
        spec["seeds"] = seeds
    return {"name": experiment_id + ("-quick" if quick else ""), "metric": exp["metric"], "mode": exp["mode"], **spec}


def reproduce_real(
    experiment_id: str,
    *,
    out: str | Path,
    quick: bool = False,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    executor: str = "process",
    workers: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one real-model experiment and write results.csv, summary.json and the figure into ``out``.

    Bad input (missing wheel, unknown model path, target modules that match nothing, a split too
    small) is found before any training, by building the first trial's data and model, and raises
    :class:`~loradyn.errors.LoradynError` (exit code 2 in the CLI).

    Returns:
        The summary dict (also written to ``summary.json``), with its ``verdicts``.
    """
    from ..sweep import run_sweep
    from ..sweep.protocol import get_task
    from ..sweep.spec import expand, resolve_sweep

    spec = sweep_spec(experiment_id, quick=quick, seeds=seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_sweep(spec, overrides)
    task = get_task(resolved.kind)
    task.validate(expand(resolved, task)[0].config)
    t0 = time.perf_counter()
    df = run_sweep(spec, out / "sweep", overrides=overrides, executor=executor, workers=workers, quiet=quiet)
    wall = time.perf_counter() - t0
    df = df.copy()
    df.insert(0, "experiment", experiment_id)
    df.to_csv(out / "results.csv", index=False)
    exp = EXPERIMENTS[experiment_id]
    summary = analyse(df, metric=exp["metric"], mode=exp["mode"], test_metric=exp["test"], tiebreak=exp.get("tiebreak"))
    _add_feature_norms(summary, out / "sweep", df)
    summary.update({
        "experiment": experiment_id,
        "quick": quick,
        "trials": len(df),
        "status_counts": {str(k): int(v) for k, v in df["status"].value_counts().items()},
        "wall_seconds": round(wall, 1),
        "trial_seconds_sum": round(float(df["seconds"].fillna(0).sum()), 1),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "executor": executor,
        "overrides": list(overrides),
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
    try:
        plot_metric_vs_lr(df, metric=exp["metric"], out=out / "metric_vs_lr.png", title=experiment_id)
    except ImportError:  # matplotlib is optional
        pass
    if not quiet:
        for v in summary["verdicts"]:
            mark = "holds" if v["holds"] else "DOES NOT HOLD"
            print(f"[{mark}] {v['claim']}: expected {v['expected']}; measured {v['measured']}")
    return summary


def _add_feature_norms(summary: dict[str, Any], sweep_dir: Path, df) -> None:
    """Seed/layer-mean rms of Z_A and Z_B at the last probed step, for each column's optimal lr."""
    from ..sweep import load_probes

    try:
        probes = load_probes(sweep_dir, with_config=False)
    except Exception:  # no probes recorded
        return
    if probes.empty:
        return
    probes = probes[(probes["stat"] == "rms") & probes["feature"].isin(["z_a", "z_b"])]
    last = probes[probes["step"] == probes.groupby("trial_id")["step"].transform("max")]
    norms = last.groupby(["trial_id", "feature"])["value"].mean().unstack()
    for column in summary["columns"]:
        ids = df[(df["lora.init"] == column["init"]) & (df["optim.lr_ratio"] == column["lr_ratio"])
                 & (df["optim.lr_a"] == column["optimal_lr"]) & (df["status"] == "done")]["trial_id"]
        rows = norms.loc[norms.index.intersection(ids)]
        if len(rows):
            column["feature_norms_at_optimum"] = {f"{f}_rms": float(rows[f].mean()) for f in rows.columns}


def machine() -> str:
    """CPU model and count, e.g. ``AMD EPYC 9B14, 2 CPUs``."""
    import os

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count() or 1} CPUs"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _column_table(df, metric: str, mode: str):
    """Seed-mean / std / count of ``metric`` per (init, lr_ratio, lr_a); failures count as worst."""
    import numpy as np

    worst = -np.inf if mode == "max" else np.inf
    frame = df.copy()
    values = frame[metric].astype(float).to_numpy() if metric in frame else np.full(len(frame), np.nan)
    ok = (frame["status"] == "done").to_numpy() & np.isfinite(values)
    frame["_value"] = np.where(ok, values, worst)
    keys = ["lora.init", "optim.lr_ratio", "optim.lr_a"]
    return frame.groupby(keys, sort=True)["_value"].agg(["mean", "std", "count"]).reset_index()


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


def results_markdown(out: str | Path) -> str:
    """Markdown tables of a finished experiment directory: the metric per (init, ratio, lr, seed), the optima."""
    import pandas as pd

    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    df = pd.read_csv(out / "results.csv")
    metric, test = summary["metric"], summary["test_metric"]
    seeds = sorted(df["seed"].unique())
    lines = [f"`{summary['experiment']}`{' --quick' if summary['quick'] else ''}: {summary['trials']} trials, "
             f"wall {summary['wall_seconds'] / 60:.1f} min ({summary['executor']}), {summary['machine']}, {summary['date']}.",
             "", f"{metric} per seed (— = diverged/failed):", "",
             "| init | lr_ratio | lr_a | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | s/trial |",
             "|---|---|---|" + "---|" * len(seeds) + "---|---|"]
    for (init, ratio, lr), g in df.groupby(["lora.init", "optim.lr_ratio", "optim.lr_a"], sort=True):
        vals = []
        for s in seeds:
            row = g[g["seed"] == s]
            ok = len(row) and row["status"].iloc[0] == "done" and pd.notna(row[metric].iloc[0])
            vals.append(f"{row[metric].iloc[0]:.4g}" if ok else "—")
        done = g[g["status"] == "done"][metric]
        mean = f"{done.mean():.4g}" if len(done) == len(g) else "—"
        lines.append(f"| {init} | {ratio:g} | {lr:.3g} | " + " | ".join(vals) + f" | {mean} | {g['seconds'].mean():.0f} |")
    lines += ["", f"| init | lr_ratio | optimal lr_a | best {metric} (± seed std) | {test} at the optimum | "
              "Z_A rms / Z_B rms at the end (optimum) |", "|---|---|---|---|---|---|"]
    for c in summary["columns"]:
        best, std = c.get(f"best_{metric}"), c.get(f"best_{metric}_std")
        t = c.get(f"{test}_at_optimum")
        fn = c.get("feature_norms_at_optimum") or {}
        norms = f"{_fmt(fn.get('z_a_rms'))} / {_fmt(fn.get('z_b_rms'))}" if fn else "n/a"
        lines.append(f"| {c['init']} | {c['lr_ratio']:g} | {c['optimal_lr']:.3g}{'' if c['interior'] else ' (edge)'} | "
                     f"{_fmt(best)}{'' if std is None else f' ± {std:.2g}'} | {_fmt(t)} | {norms} |")
    lines += ["", "| verdict | expected | measured | holds |", "|---|---|---|---|"]
    for v in summary["verdicts"]:
        lines.append(f"| {v['claim']} | {v['expected']} | {v['measured']} | {'yes' if v['holds'] else '**no**'} |")
    return "\n".join(lines) + "\n"
