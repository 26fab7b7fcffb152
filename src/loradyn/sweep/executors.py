"""Executors: where packs run. ``serial`` (this process), ``process`` (worker processes), ``ray``.

The unit of work is a :class:`PackJob`: a task kind, the module that registers it, and the plain
configurations of one pack. :func:`execute_pack` runs it anywhere (this process, a spawned worker,
a Ray task) and never raises: if ``run_pack`` itself raises, the outcome carries the one-line
message and the driver marks the pack's trials ``failed``. Workers never touch the store; the
driver writes each pack's results as it finishes.

Every pack runs with one torch thread (performance.md §5.4: process-level parallelism beats
intra-op threads on small CPUs), so results are identical under every executor.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import LoradynError
from .protocol import TrialResult, get_task

__all__ = [
    "Executor",
    "PackJob",
    "PackOutcome",
    "ProcessExecutor",
    "SerialExecutor",
    "execute_pack",
    "make_executor",
    "one_line",
]

EXECUTORS = ("serial", "process", "ray")
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


def _single_thread() -> None:
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


def execute_pack(job: PackJob) -> PackOutcome:
    """Build the configs and run one pack; never raises."""
    start = time.perf_counter()
    try:
        from ..serialize import spec_from_dict

        _import_task_module(job)
        task = get_task(job.kind)
        configs = [spec_from_dict(task.spec_cls, c) if isinstance(c, dict) else c for c in job.configs]
        _single_thread()
        start = time.perf_counter()
        results = list(task.run_pack(configs))
        seconds = time.perf_counter() - start
    except Exception as err:  # the whole pack failed: the driver records it, the sweep goes on
        return PackOutcome(None, one_line(err), time.perf_counter() - start)
    if len(results) != len(configs):
        return PackOutcome(
            None, f"run_pack returned {len(results)} results for {len(configs)} configs", seconds
        )
    return PackOutcome(results, None, seconds)


class Executor(Protocol):
    """Runs packs: ``capacity`` packs at once; ``wait`` returns the finished ones."""

    name: str
    capacity: int

    def submit(self, job: PackJob) -> Any: ...

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, PackOutcome]]: ...

    def close(self, wait: bool = True) -> None: ...


class SerialExecutor:
    """Runs each pack in this process (one torch thread while it runs)."""

    name = "serial"
    capacity = 1

    def __init__(self) -> None:
        self._jobs: dict[int, PackJob] = {}
        self._next = 0

    def submit(self, job: PackJob) -> int:
        self._next += 1
        self._jobs[self._next] = job
        return self._next

    def wait(self, handles: Sequence[int], timeout: float) -> list[tuple[int, PackOutcome]]:
        handle = handles[0]
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
        try:
            outcome = execute_pack(self._jobs.pop(handle))
        finally:
            torch = sys.modules.get("torch")
            if threads is not None and torch is not None and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        return [(handle, outcome)]

    def close(self, wait: bool = True) -> None:
        self._jobs.clear()


def _worker_init() -> None:
    """Worker set-up: one thread for every BLAS/OpenMP pool; die with the driver (Linux)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    _single_thread()
    try:  # PR_SET_PDEATHSIG: a SIGKILLed driver takes its workers with it
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class ProcessExecutor:
    """``workers`` spawned processes (one torch thread each), one pack per process at a time."""

    name = "process"

    def __init__(self, workers: int) -> None:
        import multiprocessing as mp

        self.capacity = workers
        self._ctx = mp.get_context("spawn")
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.capacity, mp_context=self._ctx, initializer=_worker_init)

    def submit(self, job: PackJob) -> cf.Future:
        try:
            return self._pool.submit(execute_pack, job)
        except cf.process.BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(execute_pack, job)

    def wait(self, handles: Sequence[cf.Future], timeout: float) -> list[tuple[cf.Future, PackOutcome]]:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            try:
                outcome = fut.result()
            except cf.process.BrokenProcessPool as err:
                outcome = PackOutcome(
                    None, f"a worker process died while this pack was in flight ({one_line(err)}); "
                    "rerun with --retry-failed"
                )
            except Exception as err:  # e.g. an unpicklable result
                outcome = PackOutcome(None, one_line(err))
            out.append((fut, outcome))
        return out

    def close(self, wait: bool = True) -> None:
        """Shut the pool down; ``wait=False`` (interrupted run) also terminates busy workers."""
        if wait:
            self._pool.shutdown(wait=True)
            return
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()


def make_executor(name: str, workers: int, ray_address: str | None = None) -> Executor:
    if name == "serial":
        return SerialExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(workers, ray_address)
    raise LoradynError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
