"""A pack as a unit of work: :class:`PackJob` in, :class:`PackOutcome` out, :func:`execute_pack` anywhere.

:func:`execute_pack` runs a job in whatever process it lands in (the driver, a spawned worker, a
Ray task) and never raises: if the kind's ``run_pack`` itself raises, the outcome carries the
one-line message and the driver marks the pack's trials ``failed``. Workers never touch the store.

Every pack runs with one torch thread: on small CPUs parallel processes beat intra-op threads,
and a trial's numbers then do not depend on the executor that ran it.

A job carries the driver's loradyn and Python versions (:func:`versions`); a process with other
versions (a Ray node installed differently) runs nothing and answers ``PackOutcome.mismatch``,
which the driver turns into one line naming both.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import LoradynError
from ..tasks.pulse import reporting
from ..tasks.registry import TrialResult, get_task

__all__ = ["PackJob", "PackOutcome", "execute_pack", "max_retries", "one_line", "single_thread", "versions"]

RETRIES_ENV = "LORADYN_MAX_RETRIES"
DEFAULT_RETRIES = 3

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
    versions: tuple[str, str] | None = None  # the driver's (loradyn, Python major.minor)


@dataclass
class PackOutcome:
    """What came back: one :class:`TrialResult` per config, or ``error`` for the whole pack;
    ``mismatch``: this process runs other versions than the driver (nothing was run)."""

    results: list[TrialResult] | None
    error: str | None = None
    seconds: float = 0.0
    pid: int = field(default_factory=os.getpid)
    mismatch: str | None = None


def max_retries() -> int:
    """How often a pack lost to a dead worker process or Ray node runs again: ``LORADYN_MAX_RETRIES`` or 3."""
    raw = os.environ.get(RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRIES
    if not raw.isdigit() or int(raw) > 100:
        raise LoradynError(f"{RETRIES_ENV} must be a whole number 0..100 of retries, got {raw!r}")
    return int(raw)


def versions() -> tuple[str, str]:
    """``(loradyn version, Python major.minor)`` of this process."""
    from .. import __version__

    return __version__, ".".join(platform.python_version_tuple()[:2])


def _mismatch(expected: tuple[str, str]) -> str | None:
    mine = versions()
    if tuple(expected) == mine:
        return None
    return (f"{socket.gethostname()} (pid {os.getpid()}) runs loradyn {mine[0]} on Python {mine[1]}, the driver "
            f"loradyn {expected[0]} on Python {expected[1]}: install the same loradyn and Python on every node")


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


def _sink(pack: str, channel: Any):
    """The heartbeat sink of one pack: a callable channel is called, a queue is put to."""
    if channel is None:
        return None
    if callable(channel):
        return lambda done, total: channel(pack, done, total)
    return lambda done, total: channel.put_nowait((pack, done, total))


def execute_pack(job: PackJob, beats: Any = None) -> PackOutcome:
    """Build the configs and run one pack; never raises. Heartbeats (:mod:`loradyn.tasks.pulse`)
    go to ``beats`` (a callable ``(pack, done, total)`` or a queue)."""
    start = time.perf_counter()
    if job.versions is not None:
        mismatch = _mismatch(job.versions)
        if mismatch is not None:
            return PackOutcome(None, mismatch, 0.0, mismatch=mismatch)
    try:
        _import_task_module(job)
        task = get_task(job.kind)
        configs = [task.build(c) if isinstance(c, dict) else c for c in job.configs]
        single_thread()
        start = time.perf_counter()
        with reporting(_sink(job.pack, beats)):
            results = list(task.run_pack(configs))
        seconds = time.perf_counter() - start
    except Exception as err:  # the whole pack failed: the driver records it, the sweep goes on
        return PackOutcome(None, one_line(err), time.perf_counter() - start)
    if len(results) != len(configs):
        return PackOutcome(
            None, f"run_pack returned {len(results)} results for {len(configs)} configs", seconds
        )
    return PackOutcome(results, None, seconds)
