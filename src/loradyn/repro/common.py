"""Shared machinery of the paper experiments: context, parameters, sweeps, outputs, verdicts.

Every experiment runs its trials on the sweep engine (:func:`loradyn.sweep.run_sweep`): each
grid is one sweep directory under ``<out>/sweeps/``, so an interrupted ``reproduce`` resumes
where it stopped. Dotted overrides apply to the base trial configuration of every sweep
(``optim.lr_ratio=4``, ``lora.rank=8``, ``train.steps=100``; a key that is a grid axis of the
experiment replaces that axis); keys under ``experiment.`` set the experiment's own parameters
(``experiment.widths=[128,1024]``), validated against its parameter dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import LoradynError
from ..serialize import apply_overrides, parse_override_value, spec_from_dict, spec_to_dict

__all__ = [
    "Context",
    "RESULT_COLUMNS",
    "Verdict",
    "finish",
    "half_octaves",
    "results_table",
    "run_grid",
]

RESULT_COLUMNS = [
    "experiment", "init", "width", "rank", "alpha_rule", "lr_a", "lr_b", "lr_ratio", "seed", "steps",
    "final_train_loss", "test_loss", "diverged",
]

BASE: dict[str, Any] = {
    "task": {"kind": "synthetic"},
    "lora": {"rank": 4, "alpha_rule": "1", "distribution": "gaussian"},
    "optim": {"name": "adam", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "train": {"steps": 200, "dtype": "float32"},
}


@dataclass
class Context:
    """Where and how an experiment runs."""

    experiment: str
    out: Path
    quick: bool = False
    seeds: int | None = None
    base_overrides: tuple[str, ...] = ()
    params_overrides: dict[str, Any] = field(default_factory=dict)
    executor: str = "process"
    workers: int | None = None
    quiet: bool = False
    shared: dict[str, Any] = field(default_factory=dict)  # results handed from earlier experiments

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


def split_overrides(overrides: Sequence[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Separate ``experiment.*`` parameter overrides from base-configuration overrides."""
    base, params = [], {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise LoradynError(f"override {item!r} is not of the form key=value (e.g. optim.lr_ratio=4)")
        key, _, raw = item.partition("=")
        key = key.strip()
        if key.startswith("experiment."):
            params[key.removeprefix("experiment.")] = parse_override_value(raw)
        else:
            base.append(f"{key}={raw}")
    return tuple(base), params


def resolve_params(cls: type, preset: Any, ctx: Context) -> Any:
    """The experiment's parameters: ``preset`` with ``experiment.*`` overrides and ``--seeds``."""
    data = spec_to_dict(preset)
    data.update(ctx.params_overrides)
    if ctx.seeds is not None:
        if isinstance(ctx.seeds, bool) or not isinstance(ctx.seeds, int) or ctx.seeds < 1:
            raise LoradynError(f"--seeds must be an integer >= 1, got {ctx.seeds!r}")
        data["seeds"] = ctx.seeds
    try:
        return spec_from_dict(cls, data, _where="experiment")
    except LoradynError as err:
        raise LoradynError(f"{ctx.experiment}: {err}") from None


def base_config(ctx: Context, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment's base trial configuration (without seed), validated with the overrides applied."""
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


SERIAL_BELOW_S = 6.0  # a sweep estimated below this much CPU runs in-process (no worker start-up)


def estimated_seconds(base: Mapping[str, Any], grid: Mapping[str, Any], seeds: int) -> float:
    """Rough single-core cost of a grid (for choosing the executor of tiny sweeps)."""
    import itertools

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


def run_grid(ctx: Context, name: str, base: Mapping[str, Any], grid: Mapping[str, Any], seeds: int) -> pd.DataFrame:
    """Run one grid on the sweep engine into ``<out>/sweeps/<name>``; returns its results table.

    With the ``process`` executor, a sweep estimated at under :data:`SERIAL_BELOW_S` of CPU runs
    with the ``serial`` executor instead: starting worker processes would cost more than the work
    (the engine gives the same results under every executor).
    """
    from ..sweep import run_sweep

    spec = {"name": name, "base": copy.deepcopy(dict(base)), "grid": dict(grid), "seeds": list(range(seeds))}
    executor, workers = ctx.executor, ctx.workers
    if executor == "process" and estimated_seconds(apply_overrides(base, ctx.base_overrides), grid, seeds) < SERIAL_BELOW_S:
        executor, workers = "serial", None
    t0 = time.perf_counter()
    df = run_sweep(
        spec, ctx.out / "sweeps" / name, overrides=ctx.base_overrides,
        executor=executor, workers=workers, quiet=ctx.quiet,
    )
    ctx.say(f"  sweep {name}: {len(df)} trials in {time.perf_counter() - t0:.1f} s")
    return df


def load_sweep_records(ctx: Context, name: str, kind: str) -> pd.DataFrame:
    """Curves or probes of one sweep, joined with the configuration."""
    from ..sweep import load_curves, load_probes

    path = ctx.out / "sweeps" / name
    return load_probes(path) if kind == "probes" else load_curves(path)


def results_table(df: pd.DataFrame, experiment: str, **extra: Any) -> pd.DataFrame:
    """The sweep table in the issue's ``results.csv`` columns (plus a few useful ones)."""
    full = df["lora.method"].astype(str) == "full"
    out = pd.DataFrame({
        "experiment": experiment,
        "init": df["lora.init"].where(~full, "full").astype(str),
        "width": df["task.width"].astype(int),
        "rank": df["lora.rank"].astype(int),
        "alpha_rule": df["lora.alpha_rule"].astype(str).where(~full, ""),
        "lr_a": df["optim.lr_a"].astype(float),
        "lr_b": (df["optim.lr_a"] * df["optim.lr_ratio"]).astype(float),
        "lr_ratio": df["optim.lr_ratio"].astype(float),
        "seed": df["seed"].astype(int),
        "steps": df["train.steps"].astype(int),
        "final_train_loss": pd.to_numeric(df.get("final_train_loss"), errors="coerce"),
        "test_loss": pd.to_numeric(df.get("test_loss"), errors="coerce"),
        "diverged": df["status"].astype(str) != "done",
        "status": df["status"].astype(str),
        "method": df["lora.method"].astype(str),
        "with_w_star": df["task.with_w_star"].astype(bool),
    })
    for col in ("z_a_rms", "z_b_rms", "diverged_step", "initial_train_loss"):
        if col in df.columns:
            out[col] = pd.to_numeric(df[col], errors="coerce")
    out["trial_id"] = df["trial_id"].astype(str)
    for key, value in extra.items():
        out[key] = value
    return out


@dataclass(frozen=True)
class Verdict:
    """One claim checked against the measurement."""

    claim: str
    expected: str
    measured: str
    holds: bool

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "expected": self.expected, "measured": self.measured, "holds": bool(self.holds)}


def verdict_table(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of verdicts."""
    rows = [("holds", "claim", "expected", "measured")] + [
        ("yes" if v["holds"] else "NO", v["claim"], v["expected"], v["measured"]) for v in verdicts
    ]
    widths = [min(60, max(len(str(r[i])) for r in rows)) for i in range(4)]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(str(c)[: widths[i]].ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plain(obj: Any) -> Any:
    if isinstance(obj, pd.DataFrame):
        return [_plain(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _plain(obj.item())
        except (ValueError, TypeError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def finish(ctx: Context, results: pd.DataFrame, summary: dict[str, Any], figures: Mapping[str, Any], t0: float) -> dict[str, Any]:
    """Write ``results.csv``, the figures (PNG) and ``summary.json``; print the verdict table."""
    from ..plots import save_figure

    ctx.out.mkdir(parents=True, exist_ok=True)
    cols = RESULT_COLUMNS + [c for c in results.columns if c not in RESULT_COLUMNS]
    results[cols].to_csv(ctx.out / "results.csv", index=False)
    written = []
    for name, fig in figures.items():
        path = ctx.out / f"{name}.png"
        save_figure(fig, path)
        written.append(path.name)
    verdicts = [v.to_dict() if isinstance(v, Verdict) else dict(v) for v in summary.get("verdicts", [])]
    summary = {
        "experiment": ctx.experiment,
        "quick": ctx.quick,
        **{k: v for k, v in summary.items() if k != "verdicts"},
        "figures": written,
        "n_trials": int(len(results)),
        "seconds": round(time.perf_counter() - t0, 1),
        "verdicts": verdicts,
    }
    summary = _plain(summary)
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    ctx.say(f"\n{ctx.experiment}{' (quick)' if ctx.quick else ''}: {summary['n_trials']} trials, {summary['seconds']} s")
    ctx.say(verdict_table(verdicts))
    return summary


def fmt_lr(x: float) -> str:
    return "nan" if not (isinstance(x, float) and math.isfinite(x)) else f"2^{math.log2(x):.2f}"
