"""The shape every experiment has, and what running one writes.

An :class:`Experiment` is a record: an id, a one-line description, a frozen ``Params`` dataclass
with ``quick`` and ``full`` presets, and ``run(ctx) -> Outcome``. :func:`run_experiment`
resolves the parameters (preset, ``experiment.<name>=value`` overrides, ``--seeds``), calls
``run`` and writes the outputs into ``ctx.out``:

* ``results.csv`` — one row per trial, in the results schema of ``docs/schema.md`` (the same
  columns as ``loradyn results``, plus ``experiment`` and ``sweep``);
* ``summary.json`` — the common fields (``experiment``, ``description``, ``quick``, ``params``,
  ``n_trials``, ``seconds``, ``figures``, ``verdicts``, …) and the experiment's own;
* one PNG per figure.

Experiments pass results to later ones as typed values: ``Outcome.product`` (any object, e.g. a
frozen dataclass of optima) is kept in ``ctx.products`` under its type, and a later experiment
asks for it with ``ctx.product(ThatType)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from ..errors import LoradynError
from ..overrides import parse_overrides
from ..serialize import spec_from_dict, spec_to_dict
from ..verdicts import (  # noqa: F401 - the experiments' vocabulary, re-exported
    Verdict,
    edge_reason,
    noise_reason,
    seeds_reason,
    spread,
    verdict_counts,
    verdict_table,
)

__all__ = [
    "Context",
    "Experiment",
    "Outcome",
    "Verdict",
    "edge_reason",
    "fmt_lr",
    "machine",
    "plain",
    "results_frame",
    "run_experiment",
    "noise_reason",
    "seeds_reason",
    "split_overrides",
    "spread",
    "verdict_counts",
    "verdict_table",
]

T = TypeVar("T")


@dataclass
class Outcome:
    """What an experiment's ``run`` returns.

    Attributes:
        results: one row per trial (the results schema; :func:`results_frame` builds it).
        summary: the experiment's own JSON-able fields (optima, slopes, …) for ``summary.json``.
        figures: name -> matplotlib Figure, each written as ``<name>.png``.
        verdicts: the claims checked.
        product: a typed value later experiments may use (``ctx.product(type(product))``).
    """

    results: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    product: Any = None


@dataclass
class Context:
    """Where and how an experiment runs."""

    experiment: str
    out: Path
    quick: bool = False
    params: Any = None
    base_overrides: tuple[str, ...] = ()
    executor: str = "process"
    workers: int | None = None
    quiet: bool = False
    gpus: str | None = None
    products: dict[type, Any] = field(default_factory=dict)

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def product(self, kind: type[T]) -> T | None:
        """The value of type ``kind`` an earlier experiment of this run produced, if any."""
        return self.products.get(kind)


@dataclass(frozen=True)
class Experiment:
    """One reproducible experiment.

    Attributes:
        id: the name ``loradyn reproduce`` takes.
        description: one line (``loradyn reproduce --help`` lists it).
        params: the frozen dataclass of its parameters (``experiment.<name>=value`` overrides).
        quick, full: the two presets of ``params``.
        run: ``run(ctx) -> Outcome``; ``ctx.params`` holds the resolved parameters.
        order: position in ``reproduce all`` and in listings (smaller first).
        in_all: whether ``reproduce all`` runs it (the synthetic experiments; the real-model
            ones take hours and run one by one).
    """

    id: str
    description: str
    params: type
    quick: Any
    full: Any
    run: Callable[[Context], Outcome]
    order: float = 100.0
    in_all: bool = False

    def accepts(self, name: str) -> bool:
        return name in {f.name for f in dataclasses.fields(self.params)}


def split_overrides(overrides: Sequence[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Separate ``experiment.*`` parameter overrides from base-configuration overrides."""
    base, params = [], {}
    for item, (key, value) in zip(overrides, parse_overrides(overrides)):
        if key.startswith("experiment."):
            params[key.removeprefix("experiment.")] = value
        else:
            base.append(item)
    return tuple(base), params


def _resolve_params(exp: Experiment, quick: bool, params: Mapping[str, Any], seeds: int | None) -> Any:
    data = spec_to_dict(exp.quick if quick else exp.full)
    data.update(params)
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise LoradynError(f"--seeds must be an integer >= 1, got {seeds!r}")
        if "seeds" not in data:
            raise LoradynError(f"{exp.id} has no seeds parameter")
        data["seeds"] = seeds
    try:
        return spec_from_dict(exp.params, data, _where="experiment")
    except LoradynError as err:
        raise LoradynError(f"{exp.id}: {err}") from None


def results_frame(frames: Sequence[pd.DataFrame], experiment: str) -> pd.DataFrame:
    """Sweep tables (from :func:`loradyn.run_sweep`, each with ``attrs["name"]``) as one results
    table: ``experiment``, ``sweep``, then the sweep columns (``docs/schema.md``)."""
    parts = []
    for df in frames:
        part = df.copy()
        part.insert(0, "sweep", df.attrs.get("name", ""))
        part.insert(0, "experiment", experiment)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["experiment", "sweep"])
    tail = [c for c in ("error", "seconds") if c in out.columns]
    return out[[c for c in out.columns if c not in tail] + tail]


def fmt_lr(x: float) -> str:
    """A learning rate as ``2^e`` (``nan`` when missing)."""
    return "nan" if not (isinstance(x, float) and math.isfinite(x)) else f"2^{math.log2(x):.2f}"


def machine() -> str:
    """CPU model and count, e.g. ``AMD EPYC 9B14, 2 CPUs``."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count() or 1} CPUs"


def plain(obj: Any) -> Any:
    """JSON-safe data: tables as records, dataclasses as dicts, numpy scalars as numbers,
    NaN as null and infinities as strings."""
    if isinstance(obj, pd.DataFrame):
        return [plain(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return plain(obj.item())
        except (ValueError, TypeError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_experiment(exp: Experiment, ctx: Context, params: Mapping[str, Any] | None = None,
                   seeds: int | None = None) -> dict[str, Any]:
    """Resolve the parameters, run ``exp`` and write ``results.csv``, the figures and
    ``summary.json`` into ``ctx.out``; print the verdict table; return the summary."""
    from ..plots import save_figure

    ctx.params = _resolve_params(exp, ctx.quick, params or {}, seeds)
    t0 = time.perf_counter()
    outcome = exp.run(ctx)
    seconds = time.perf_counter() - t0
    if outcome.product is not None:
        ctx.products[type(outcome.product)] = outcome.product
    ctx.out.mkdir(parents=True, exist_ok=True)
    results = outcome.results
    results.to_csv(ctx.out / "results.csv", index=False)
    written = []
    for name, fig in outcome.figures.items():
        if fig is None:
            continue
        path = ctx.out / f"{name}.png"
        save_figure(fig, path)
        written.append(path.name)
    verdicts = [v.to_dict() if isinstance(v, Verdict) else dict(v) for v in outcome.verdicts]
    status = results["status"].value_counts() if "status" in results else pd.Series(dtype=int)
    summary = plain({
        "experiment": exp.id,
        "description": exp.description,
        "quick": ctx.quick,
        "params": ctx.params,
        **outcome.summary,
        "figures": written,
        "n_trials": int(len(results)),
        "status_counts": {str(k): int(v) for k, v in status.items()},
        "seconds": round(seconds, 1),
        "trial_seconds_sum": round(float(results["seconds"].fillna(0).sum()), 1) if "seconds" in results else 0.0,
        "executor": ctx.executor,
        "overrides": list(ctx.base_overrides),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "verdicts": verdicts,
    })
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    ctx.say(f"\n{exp.id}{' (quick)' if ctx.quick else ''}: {summary['n_trials']} trials, {summary['seconds']} s")
    ctx.say(verdict_table(verdicts))
    return summary
