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
An experiment may name a ``secondary`` metric (``gsm-init``: ``val_loss``, since exact match of a
135M model stays near 0); its optima and verdicts go to ``summary["secondary"]``, printed and
tabled but not counted. The analysis itself lives in :mod:`loradyn.tasks.results`.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .results import analyse, plot_metric_vs_lr, results_markdown

__all__ = ["EXPERIMENTS", "analyse", "plot_metric_vs_lr", "reproduce_real", "results_markdown", "sweep_spec"]

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
        # a 135M model solves ~0-3 % of gsm_symbolic after 80 steps, so exact match barely moves:
        # the answer-token loss is analysed too and reported next to the verdicts (not counted).
        "secondary": {"metric": "val_loss", "mode": "min", "test": "test_loss"},
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
    if "secondary" in exp:
        second = exp["secondary"]
        summary["secondary"] = analyse(df, metric=second["metric"], mode=second["mode"], test_metric=second["test"])
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
        for v in summary.get("secondary", {}).get("verdicts", []):
            mark = "holds" if v["holds"] else "does not hold"
            print(f"  (secondary, not counted) [{mark}] {v['claim']}: measured {v['measured']}")
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
