"""Running an experiment's grids on the sweep engine, and the synthetic experiments' base trial.

Every grid is one sweep directory (``<out>/sweeps/<name>`` unless given), so an interrupted
``reproduce`` resumes where it stopped. The context's dotted overrides apply to the base trial
configuration of every sweep (``optim.lr_ratio=4``, ``lora.rank=8``; a key that is a grid axis
replaces that axis).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..overrides import apply_overrides
from ..serialize import spec_from_dict
from .framework import Context

__all__ = ["BASE", "base_config", "half_octaves", "load_sweep_records", "run_grid"]

#: The synthetic experiments' base trial (without seed): docs/theory.md §7.
BASE: dict[str, Any] = {
    "task": {"kind": "synthetic"},
    "lora": {"rank": 4, "alpha_rule": "1", "distribution": "gaussian"},
    "optim": {"name": "adam", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "train": {"steps": 200, "dtype": "float32"},
}

SERIAL_BELOW_S = 6.0  # a synthetic sweep estimated below this much CPU runs in-process


def base_config(ctx: Context, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """The synthetic base trial configuration (without seed), checked with the overrides applied."""
    from ..synthetic import SyntheticSpec

    base = copy.deepcopy(BASE)
    for name, values in sections.items():
        base.setdefault(name, {}).update(copy.deepcopy(dict(values)))
    check = apply_overrides(base, ctx.base_overrides)
    check["seed"] = 0
    spec_from_dict(SyntheticSpec, check)  # one-line error before any work
    return base


def half_octaves(lo: float, hi: float, step: float = 0.5) -> list[float]:
    """``2**e`` for e = lo, lo+step, ..., hi (exponents rounded to multiples of ``step``)."""
    lo_i, hi_i = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [2.0 ** round(i * step, 9) for i in range(lo_i, hi_i + 1)]


def _synthetic_seconds(base: Mapping[str, Any], grid: Mapping[str, Any], seeds: int) -> float:
    """Rough single-core cost of a synthetic grid (for choosing the executor of tiny sweeps)."""
    from ..synthetic import seconds_per_step

    keys = list(grid)
    total = 0.0
    for point in itertools.product(*(grid[k] for k in keys)):
        cfg = copy.deepcopy(dict(base))
        for key, value in zip(keys, point):
            section, _, field_ = key.partition(".")
            cfg.setdefault(section, {})[field_] = value
        task, lora, train = cfg.get("task", {}), cfg.get("lora", {}), cfg.get("train", {})
        total += train.get("steps", 200) * seconds_per_step(
            task.get("width", 1024), lora.get("rank", 4), task.get("n_train", 1000), lora.get("method", "lora")
        )
    return total * seeds


def run_grid(ctx: Context, name: str, base: Mapping[str, Any], grid: Mapping[str, Any], seeds: int, *,
             directory: Path | None = None, metric: str | None = None, mode: str | None = None) -> pd.DataFrame:
    """Run one grid on the sweep engine; returns its results table (``attrs["name"]`` = ``name``).

    With the ``process`` executor, a synthetic sweep estimated at under :data:`SERIAL_BELOW_S` of
    CPU runs with the ``serial`` executor instead: starting worker processes would cost more than
    the work (the engine gives the same results under every executor).
    """
    from ..sweep import run_sweep

    spec: dict[str, Any] = {"name": name}
    if metric is not None:
        spec.update(metric=metric, mode=mode or "min")
    spec.update({"base": copy.deepcopy(dict(base)), "grid": dict(grid), "seeds": list(range(seeds))})
    executor, workers = ctx.executor, ctx.workers
    resolved = apply_overrides(base, ctx.base_overrides)
    if (executor == "process" and resolved.get("task", {}).get("kind") == "synthetic"
            and _synthetic_seconds(resolved, grid, seeds) < SERIAL_BELOW_S):
        executor, workers = "serial", None
    t0 = time.perf_counter()
    df = run_sweep(spec, directory or ctx.out / "sweeps" / name, overrides=ctx.base_overrides,
                   executor=executor, workers=workers, quiet=ctx.quiet, gpus=ctx.gpus if executor == "process" else None)
    ctx.say(f"  sweep {name}: {len(df)} trials in {time.perf_counter() - t0:.1f} s")
    return df


def load_sweep_records(ctx: Context, name: str, kind: str) -> pd.DataFrame:
    """Curves or probes of one sweep of this experiment, joined with the configuration."""
    from ..sweep import load_curves, load_probes

    path = ctx.out / "sweeps" / name
    return load_probes(path) if kind == "probes" else load_curves(path)
