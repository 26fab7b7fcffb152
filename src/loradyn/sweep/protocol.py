"""The one small protocol through which tasks plug into the sweep engine.

A *task* trains a pack of trial configurations together and returns one result per trial.
The sweep engine (expansion, store, executors, CLI) knows nothing else about a task.

* A trial configuration is an instance of the task's ``spec_cls``: a frozen dataclass (see
  :mod:`loradyn.serialize`) that holds everything needed to run the trial, including ``seed``.
  The sweep engine builds it with ``spec_from_dict(task.spec_cls, resolved_dict)``, so unknown
  keys and ill-typed values are rejected with one line.
* ``pack_key(config)`` says which trials may share a pack (for the synthetic task: the same
  width, rank, data seed...). The engine groups trials by it and splits groups into packs of at
  most ``max_pack_size(config)``.
* ``run_pack(configs)`` trains them and returns one :class:`TrialResult` per config, in order.
  It must not raise for one bad trial: a trial that diverges or fails is a result with that
  status, and the rest of the pack is unaffected.

Tasks register themselves by kind with :func:`register_task`; :func:`get_task` resolves a kind,
importing the module that defines it on first use (so optional extras stay lazy). Modules named
in the environment variable ``LORADYN_TASK_MODULES`` (comma-separated, e.g. ``mypkg.tasks``) are
imported before an unknown kind is reported: that is how a user's own task (or the tests' toy
task) reaches the CLI and spawned worker processes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import LoradynError

__all__ = ["Task", "TrialResult", "get_task", "register_task", "task_kinds", "task_module"]

Status = Literal["done", "diverged", "failed"]


@dataclass
class TrialResult:
    """What a task reports for one trial.

    Attributes:
        status: ``done``, ``diverged`` (non-finite or blown-up loss; the trial was frozen) or
            ``failed`` (an exception; ``error`` holds the message).
        metrics: scalar metrics, e.g. ``final_train_loss``, ``test_loss``, ``val_accuracy``.
        curves: optional long-format records ``{"step": int, "metric": str, "value": float}``.
        probes: optional long-format records ``{"step", "module", "feature", "stat", "value"}``
            (same columns as :class:`loradyn.FeatureNormProbe`).
        error: the error message for ``failed`` (one line).
        seconds: wall time attributed to this trial (pack time / pack size).
    """

    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@runtime_checkable
class Task(Protocol):
    """A trainable workload the sweep engine can run in packs."""

    kind: str
    spec_cls: type

    def pack_key(self, config: Any) -> Hashable: ...

    def max_pack_size(self, config: Any) -> int: ...

    def run_pack(self, configs: Sequence[Any]) -> list[TrialResult]: ...


_REGISTRY: dict[str, Callable[[], Task]] = {}
# kinds whose defining module is imported on first use
_LAZY: dict[str, str] = {
    "synthetic": "loradyn.synthetic",
    "sentiment": "loradyn.tasks",
    "trec6": "loradyn.tasks",
    "wiki-lm": "loradyn.tasks",
    "gsm": "loradyn.tasks",
}


def register_task(kind: str, factory: Callable[[], Task]) -> None:
    """Register a task factory under ``kind`` (called by the module that defines the task)."""
    _REGISTRY[kind] = factory


def register_lazy_task(kind: str, module: str) -> None:
    """Declare that importing ``module`` registers ``kind``."""
    _LAZY[kind] = module


def task_kinds() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def _import_env_modules() -> None:
    for name in filter(None, (m.strip() for m in os.environ.get("LORADYN_TASK_MODULES", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise LoradynError(f"LORADYN_TASK_MODULES names {name!r}, which cannot be imported: {err}") from None


def task_module(kind: str) -> str | None:
    """The module that registers ``kind`` (what a fresh worker process must import), if known."""
    if kind in _LAZY:
        return _LAZY[kind]
    factory = _REGISTRY.get(kind)
    module = getattr(factory, "__module__", None)
    return None if module in (None, "__main__") else module


def get_task(kind: str) -> Task:
    """The task registered under ``kind``; an unknown kind gives one line listing the valid ones."""
    if kind not in _REGISTRY and kind not in _LAZY:
        _import_env_modules()
    if kind not in _REGISTRY and kind in _LAZY:
        try:
            importlib.import_module(_LAZY[kind])
        except ImportError as err:
            raise LoradynError(
                f"task {kind!r} needs an optional dependency that is missing ({err.name}): "
                "install it with pip install 'loradyn[all]'"
            ) from None
    if kind not in _REGISTRY:
        raise LoradynError(f"unknown task {kind!r}; valid tasks: {', '.join(task_kinds())}")
    return _REGISTRY[kind]()
