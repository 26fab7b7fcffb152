"""The ``python`` kind: any training function of yours as a sweep trial.

::

    base:
      task: {kind: python, entry: "mypkg.train:run_trial"}
      optim: {lr_a: 1.0e-4, lr_ratio: 16}
      lora: {init: A, rank: 8}
    grid:
      optim.lr_a: {log2: [-16, -10, 1]}
      lora.init: [A, B]
    metric: eval_loss
    mode: min

Every key but ``task.kind`` / ``task.entry`` is yours: the grid may name any dotted key. For each
trial loradyn calls ``run_trial(config, report)`` with the resolved configuration as a nested dict
(``config["optim"]["lr_a"]``, …, and ``config["seed"]``) and ``report(step, **metrics)``, which
records per-step curves; the function returns the trial's metrics as a dict of numbers. The sweep
engine gives it what built-in kinds get: the store and resume, every executor, divergence handling
(a non-finite metric marks the trial ``diverged``), the report.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import LoradynError, SpecError
from .callables import check_reference, load_callable
from .pulse import report_steps
from .registry import TrialResult

__all__ = ["PythonTrial", "make_config", "run_pack", "validate"]


def _plain(value: Any, where: str) -> Any:
    """JSON-like data only (numbers, strings, booleans, null, lists, mappings with string keys)."""
    if value is None or isinstance(value, (bool, str)) or isinstance(value, numbers.Real):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise SpecError(f"{where}: {type(value).__name__} values cannot go into a python trial's config; use "
                    "numbers, strings, lists and mappings")


class PythonTrial(dict):
    """One trial of the ``python`` kind: a plain nested dict with ``task.entry`` and ``seed``."""

    @property
    def entry(self) -> str:
        return self["task"]["entry"]

    @property
    def seed(self) -> int:
        return self["seed"]


def make_config(plain: Any) -> PythonTrial:
    """Check a python trial's configuration: ``task: {kind: python, entry: "module:function"}``,
    an integer ``seed``, JSON-like values elsewhere."""
    if not isinstance(plain, Mapping):
        raise SpecError(f"a python trial is a mapping, got {type(plain).__name__}")
    data = _plain(plain, "config")
    task = data.get("task")
    if not isinstance(task, dict) or task.get("kind") != "python":
        raise SpecError("task.kind must be 'python' for a python trial")
    check_reference(task.get("entry"), "task.entry")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"seed must be an integer >= 0, got {seed!r}")
    data["seed"] = seed
    return PythonTrial(data)


def validate(config: PythonTrial) -> None:
    """The entry can be imported and called (before any trial runs)."""
    load_callable(config.entry, what="task.entry")


def _metrics(value: Any, entry: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise LoradynError(f"task.entry {entry!r} returned {type(value).__name__}, not a dict of numbers "
                           "(e.g. return {'eval_loss': 0.53})")
    out = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            if hasattr(number, "item") and isinstance(number.item(), numbers.Real):  # numpy / torch scalars
                number = number.item()
            else:
                raise LoradynError(f"task.entry {entry!r} returned {key!r}: {type(number).__name__}, not a number")
        out[str(key)] = float(number)
    return out


def _reporter(curves: list[dict[str, Any]], total_steps: int):
    """``report(step, **metrics)``: the callback a trial gets for its per-step curves (also the
    sweep's heartbeat)."""

    def report(step: int, **metrics: Any) -> None:
        for name, value in metrics.items():
            curves.append({"step": int(step), "metric": str(name), "value": float(value)})
        report_steps(int(step), total_steps)

    return report


def run_pack(configs: Sequence[PythonTrial]) -> list[TrialResult]:
    """Call the entry once per trial; an exception or a bad return value fails that trial only."""
    results = []
    for config in configs:
        start = time.perf_counter()
        curves: list[dict[str, Any]] = []
        steps = config.get("train", {}).get("steps") if isinstance(config.get("train"), dict) else None
        report = _reporter(curves, steps if isinstance(steps, int) else 0)
        try:
            fn = load_callable(config.entry, what="task.entry")
            metrics = _metrics(fn(dict(config), report), config.entry)
        except Exception as err:  # the user's code: any error fails this trial, the sweep goes on
            text = str(err).strip().splitlines()
            message = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
            results.append(TrialResult("failed", curves=curves, error=message, seconds=time.perf_counter() - start))
            continue
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        status = "diverged" if bad else "done"
        error = f"non-finite {bad[0]} = {metrics[bad[0]]}" if bad else None
        results.append(TrialResult(status, metrics, curves, error=error, seconds=time.perf_counter() - start))
    return results
