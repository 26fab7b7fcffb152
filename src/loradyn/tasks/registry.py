"""Task kinds: one record per kind, found in one registry.

A *task kind* (``task.kind`` in a sweep spec) is one :class:`TaskKind` record: the frozen spec
class of a whole trial, how to check the input a trial needs (data, model: ``validate``), how to
train a pack of trials (``run_pack``), which trials may share a pack (``pack_key``,
``max_pack_size``) and the metrics it reports with their direction (``metrics``). The sweep
engine, the CLI and the experiments know nothing else about a kind, and hold no list of kinds.

Where kinds come from (looked up in this order, each only when a kind is not yet known):

1. :func:`register_task` calls (a module registers its record when imported);
2. loradyn's built-in kinds: every module of :mod:`loradyn.tasks.kinds` that defines ``KIND``
   (adding a kind to loradyn is adding one module there);
3. the entry-point group ``loradyn.tasks``: a package adds a kind without editing loradyn by
   declaring ``[project.entry-points."loradyn.tasks"] mykind = "mypkg.tasks:KIND"`` (the entry
   point's name is the kind; its object is a :class:`TaskKind` or a module defining ``KIND``);
4. the modules named in ``LORADYN_TASK_MODULES`` (comma-separated), imported on demand.

Spec classes do no filesystem or package I/O when constructed (a spec is data); every check that
needs I/O belongs in ``validate``, which the sweep engine calls once per distinct pack before any
training.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import LoradynError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Direction",
    "TaskKind",
    "TrialResult",
    "get_task",
    "register_task",
    "task_kinds",
    "task_module",
]

ENTRY_POINT_GROUP = "loradyn.tasks"
Direction = Literal["min", "max"]
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


def _alone(config: Any) -> Hashable:
    """Default pack key: every trial is its own pack."""
    from ..serialize import spec_to_dict

    text = json.dumps(spec_to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _one(config: Any) -> int:
    return 1


@dataclass(frozen=True)
class TaskKind:
    """Everything the sweep engine needs to run one kind of task.

    Attributes:
        kind: the name used as ``task.kind``.
        spec_cls: frozen dataclass of one whole trial (``task``, ``lora``, ``optim``, ``train``,
            ``seed``, ...), built with :func:`loradyn.serialize.spec_from_dict` (unknown keys and
            ill-typed values are rejected with one line). Constructing it does no I/O.
        run_pack: ``run_pack(configs) -> [TrialResult]``, one result per config, in order. It
            must not raise for one bad trial: a trial that diverges or fails is a result with that
            status, and the rest of the pack is unaffected.
        metrics: the metrics a trial reports that a sweep may rank by, each with its direction
            (``"min"`` or ``"max"``); the first is the default. Other (diagnostic) metrics may be
            reported too.
        pack_key: trials whose keys are equal may be trained together in one pack (default:
            every trial alone).
        max_pack_size: the largest pack for a config (default 1).
        validate: optional ``validate(config)``: load or locate what the trial needs (data,
            model, packages) and raise :class:`~loradyn.errors.LoradynError` (one line) for input
            that no trial could run on. Called once per distinct pack key before any training.
        description: one line for listings.
        make_config: optional ``make_config(plain) -> config`` replacing ``spec_from_dict(spec_cls,
            plain)``, for kinds whose trials take free-form keys (the ``python`` kind).
        describe: optional ``describe(config) -> str``: what ``loradyn validate`` shows about the
            resolved task (data found, split sizes, model, device); called after ``validate``.
    """

    kind: str
    spec_cls: type
    run_pack: Callable[[Sequence[Any]], list[TrialResult]]
    metrics: Mapping[str, Direction] = field(default_factory=dict)
    pack_key: Callable[[Any], Hashable] = _alone
    max_pack_size: Callable[[Any], int] = _one
    validate: Callable[[Any], None] | None = None
    description: str = ""
    make_config: Callable[[Any], Any] | None = None
    describe: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise LoradynError(f"a task kind needs a non-empty name, got {self.kind!r}")
        bad = {m: d for m, d in dict(self.metrics).items() if d not in ("min", "max")}
        if bad:
            raise LoradynError(f"task {self.kind!r}: metric directions must be 'min' or 'max', got {bad}")
        object.__setattr__(self, "metrics", dict(self.metrics))

    @property
    def default_metric(self) -> str | None:
        return next(iter(self.metrics), None)

    def build(self, plain: Any) -> Any:
        """A trial configuration from plain data (unknown keys and bad values: one line)."""
        if self.make_config is not None:
            return self.make_config(plain)
        from ..serialize import spec_from_dict

        return spec_from_dict(self.spec_cls, plain)


_REGISTRY: dict[str, TaskKind] = {}
_ORIGIN: dict[str, str] = {}  # kind -> module a fresh worker process must import to know it
_SCANNED = False


def register_task(record: TaskKind) -> TaskKind:
    """Register (or replace) a task kind; returns the record, so a module may write
    ``KIND = register_task(TaskKind(...))``."""
    if not isinstance(record, TaskKind):
        raise LoradynError(f"register_task takes a loradyn.tasks.TaskKind, got {type(record).__name__}")
    _REGISTRY[record.kind] = record
    module = getattr(record.run_pack, "__module__", None) or getattr(record.spec_cls, "__module__", None)
    if module and module != "__main__":
        _ORIGIN[record.kind] = module
    return record


def _record_of(obj: Any, where: str) -> TaskKind:
    record = obj if isinstance(obj, TaskKind) else getattr(obj, "KIND", None)
    if not isinstance(record, TaskKind):
        raise LoradynError(f"{where} is not a loradyn.tasks.TaskKind (nor a module defining KIND)")
    return record


def _scan_builtins() -> None:
    """Import every module of :mod:`loradyn.tasks.kinds` and register its ``KIND`` (once)."""
    global _SCANNED
    if _SCANNED:
        return
    _SCANNED = True
    from . import kinds

    for info in pkgutil.iter_modules(kinds.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{kinds.__name__}.{info.name}")
        record = getattr(module, "KIND", None)
        if isinstance(record, TaskKind) and record.kind not in _REGISTRY:
            register_task(record)
            _ORIGIN[record.kind] = module.__name__


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(kind: str) -> bool:
    ep = _entry_points().get(kind)
    if ep is None:
        return False
    try:
        obj = ep.load()
    except ImportError as err:
        raise LoradynError(f"task {kind!r} (entry point {ep.value}) cannot be imported: {err}") from None
    record = _record_of(obj, f"entry point {kind} = {ep.value}")
    if record.kind != kind:
        raise LoradynError(f"entry point {kind} = {ep.value} defines task kind {record.kind!r}; name them the same")
    register_task(record)
    _ORIGIN[kind] = ep.value.partition(":")[0]
    return True


def _import_env_modules() -> None:
    for name in filter(None, (m.strip() for m in os.environ.get("LORADYN_TASK_MODULES", "").split(","))):
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise LoradynError(f"LORADYN_TASK_MODULES names {name!r}, which cannot be imported: {err}") from None
        record = getattr(module, "KIND", None)
        if isinstance(record, TaskKind) and record.kind not in _REGISTRY:
            register_task(record)
            _ORIGIN[record.kind] = name


def task_kinds() -> list[str]:
    """Every known kind: registered, built-in and declared through entry points."""
    _scan_builtins()
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_task(kind: str) -> TaskKind:
    """The record of ``kind``; an unknown kind gives one line listing the known ones."""
    if kind not in _REGISTRY:
        _scan_builtins()
    if kind not in _REGISTRY and not _load_entry_point(kind):
        _import_env_modules()
    if kind not in _REGISTRY:
        raise LoradynError(f"unknown task {kind!r}; valid tasks: {', '.join(task_kinds())}")
    return _REGISTRY[kind]


def task_module(kind: str) -> str | None:
    """The module a fresh worker process must import to know ``kind`` (None: found by lookup)."""
    return _ORIGIN.get(kind)
