"""The papers' experiments, reproduced with verdicts: ``loradyn reproduce <id>``.

Every module of this package that defines ``EXPERIMENT`` (an
:class:`~loradyn.experiments.framework.Experiment`) is one experiment; the registry below finds
them by scanning the package, so adding an experiment is adding one module. The synthetic ones
(``width-lr``, ``feature-norms``, ``loraplus-heatmap``, ``rank-lr``) make up ``reproduce all``;
the real-model ones (``sentiment-init``, ``trec6-init``, ``wiki-init``, ``gsm-init``) run one by
one. Each runs on the sweep engine (re-running the same command resumes) and writes
``results.csv``, ``summary.json`` and its figures (:mod:`~loradyn.experiments.framework`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LoradynError
from .framework import (
    Context,
    Experiment,
    plain,
    run_experiment,
    split_overrides,
    verdict_counts,
    verdict_table,
)

__all__ = ["Experiment", "experiments", "get_experiment", "reproduce"]

_FOUND: dict[str, Experiment] | None = None


def experiments() -> dict[str, Experiment]:
    """Every experiment, by id, in ``order``."""
    global _FOUND
    if _FOUND is None:
        found = []
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_"):
                continue
            record = getattr(importlib.import_module(f"{__name__}.{info.name}"), "EXPERIMENT", None)
            if isinstance(record, Experiment):
                found.append(record)
        _FOUND = {e.id: e for e in sorted(found, key=lambda e: (e.order, e.id))}
    return _FOUND


def get_experiment(experiment_id: str) -> Experiment:
    """The experiment ``experiment_id``; an unknown id gives one line listing the valid ones."""
    found = experiments()
    if experiment_id not in found:
        raise LoradynError(f"unknown experiment {experiment_id!r}; valid ids: {', '.join([*found, 'all'])}")
    return found[experiment_id]


def reproduce(
    experiment_id: str,
    *,
    out: str | Path,
    quick: bool = False,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    executor: str = "process",
    workers: int | None = None,
    quiet: bool = False,
    gpus: str | None = None,
) -> dict[str, Any]:
    """Run one experiment (or ``"all"``, the synthetic ones in order, into ``out/<id>/``).

    Args:
        experiment_id: an id of :func:`experiments`, or ``"all"``.
        out: output directory (``results.csv``, ``summary.json``, figures, the sweep stores).
        quick: the reduced presets (``reproduce all --quick`` takes a few minutes on 2 cores).
        seeds: number of seeds (overrides the preset's).
        overrides: dotted ``key=value`` overrides of the base trial configuration
            (``optim.lr_ratio=4``, ``lora.rank=8``, ``train.steps=100``); ``experiment.<name>=value``
            sets an experiment parameter (``experiment.widths=[128,1024]``).
        executor, workers, quiet, gpus: passed to :func:`loradyn.sweep.run_sweep`.

    Returns:
        The summary dict (also written to ``summary.json``) with ``verdicts``: a list of
        ``{"claim", "expected", "measured", "status", "holds", "reason"}`` (``status``: holds, fails
        or undecided; docs/schema.md). For ``"all"``: ``{"experiments": {id: summary},
        "verdicts": [... every verdict, claim prefixed by its id]}``.

    Raises:
        LoradynError: unknown experiment id or bad override (one line).
    """
    base_overrides, params = split_overrides(overrides)
    out = Path(out)
    chosen = [e for e in experiments().values() if e.in_all] if experiment_id == "all" else [get_experiment(experiment_id)]
    for key in params:
        if not any(e.accepts(key) for e in chosen):
            if experiment_id == "all":
                raise LoradynError(f"unknown key experiment.{key}: no experiment has a parameter {key!r}")
            valid = ", ".join(f.name for f in dataclasses.fields(chosen[0].params))
            raise LoradynError(f"unknown key experiment.{key}: {experiment_id} has no parameter {key!r}; "
                               f"its parameters: {valid}")
    products: dict[type, Any] = {}
    summaries = {}
    for exp in chosen:
        ctx = Context(experiment=exp.id, out=out / exp.id if experiment_id == "all" else out, quick=quick,
                      base_overrides=base_overrides, executor=executor, workers=workers, quiet=quiet,
                      gpus=gpus, products=products)
        ctx.say(f"== {exp.id}{' (quick)' if quick else ''} -> {ctx.out}")
        summaries[exp.id] = run_experiment(exp, ctx, {k: v for k, v in params.items() if exp.accepts(k)}, seeds)
    if experiment_id != "all":
        return summaries[experiment_id]
    verdicts = [{**v, "claim": f"[{eid}] {v['claim']}"} for eid, s in summaries.items() for v in s["verdicts"]]
    combined = {"experiments": summaries, "quick": quick, "verdicts": verdicts,
                "seconds": round(sum(s.get("seconds", 0.0) for s in summaries.values()), 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(plain(combined), indent=2) + "\n")
    if not quiet:
        counts = verdict_counts(verdicts)
        print(f"\nall{' (quick)' if quick else ''}: {len(verdicts)} verdicts: {counts['holds']} hold, "
              f"{counts['fails']} fail, {counts['undecided']} undecided; {combined['seconds']} s")
        print(verdict_table(verdicts))
    return combined
