"""A pack as a unit of work: :class:`PackJob` in, :class:`PackOutcome` out, :func:`execute_pack` anywhere.

:func:`execute_pack` runs a job in whatever process it lands in (the driver, a spawned worker, a
Ray task) and never raises: if the kind's ``run_pack`` itself raises, the outcome carries the
one-line message and the driver marks the pack's trials ``failed``. Workers never touch the store.

Every pack runs with one torch thread: on small CPUs parallel processes beat intra-op threads,
and a trial's numbers then do not depend on the executor that ran it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..tasks.pulse import reporting
from ..tasks.registry import TrialResult, get_task

__all__ = ["PackJob", "PackOutcome", "execute_pack", "one_line", "set_worker_beats", "single_thread"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class PackJob:
    """One pack to run: ``configs`` are validated trial configs (``task.spec_cls`` instances) or
    plain resolved dicts (validated again where the pack runs)."""

    pack: str
    kind: str
    task_module: str | None
    configs: tuple[Any, ...]
    sys_path: tuple[str, ...] = ()


@dataclass
class PackOutcome:
    """What came back: one :class:`TrialResult` per config, or ``error`` for the whole pack."""

    results: list[TrialResult] | None
    error: str | None = None
    seconds: float = 0.0
    pid: int = field(default_factory=os.getpid)


def one_line(err: BaseException | str, limit: int = 500) -> str:
    """``"TypeName: first line of the message"``, at most ``limit`` characters."""
    if isinstance(err, BaseException):
        text = _ANSI.sub("", str(err)).strip().splitlines()
        text = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    else:
        text = " ".join(_ANSI.sub("", str(err)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def single_thread() -> None:
    """One intra-op thread for the packs of this process (torch only if already imported)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _import_task_module(job: PackJob) -> None:
    for entry in job.sys_path:
        if entry not in sys.path:
            sys.path.append(entry)
    if job.task_module and job.task_module not in sys.modules:
        importlib.import_module(job.task_module)


_WORKER_BEATS: Any = None  # where a worker process sends heartbeats (set by its initialiser)


def set_worker_beats(channel: Any) -> None:
    """Make this process send pack heartbeats to ``channel`` (a queue with ``put_nowait``)."""
    global _WORKER_BEATS
    _WORKER_BEATS = channel


def _sink(pack: str, channel: Any):
    """The heartbeat sink of one pack: a callable channel is called, a queue is put to."""
    if channel is None:
        return None
    if callable(channel):
        return lambda done, total: channel(pack, done, total)
    return lambda done, total: channel.put_nowait((pack, done, total))


def execute_pack(job: PackJob, beats: Any = None) -> PackOutcome:
    """Build the configs and run one pack; never raises. Heartbeats (:mod:`loradyn.tasks.pulse`)
    go to ``beats`` (a callable or a queue), else to this worker process's channel."""
    start = time.perf_counter()
    try:
        _import_task_module(job)
        task = get_task(job.kind)
        configs = [task.build(c) if isinstance(c, dict) else c for c in job.configs]
        single_thread()
        start = time.perf_counter()
        with reporting(_sink(job.pack, beats if beats is not None else _WORKER_BEATS)):
            results = list(task.run_pack(configs))
        seconds = time.perf_counter() - start
    except Exception as err:  # the whole pack failed: the driver records it, the sweep goes on
        return PackOutcome(None, one_line(err), time.perf_counter() - start)
    if len(results) != len(configs):
        return PackOutcome(
            None, f"run_pack returned {len(results)} results for {len(configs)} configs", seconds
        )
    return PackOutcome(results, None, seconds)
