"""Executors: where packs run. ``serial`` (this process), ``process`` (worker processes), ``ray``.

The unit of work is a :class:`~loradyn.sweep.jobs.PackJob`; :func:`make_executor` is the one
factory. Workers only compute; the driver writes each pack's results as it finishes.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import LoradynError
from .jobs import PackJob, PackOutcome, execute_pack, one_line, single_thread

__all__ = ["EXECUTORS", "Executor", "ProcessExecutor", "SerialExecutor", "make_executor"]

EXECUTORS = ("serial", "process", "ray")


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
    single_thread()
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


def make_executor(name: str, workers: int | None, ray_address: str | None = None, *,
                  quiet: bool = True) -> Executor:
    """The executor ``name`` with ``workers`` parallel packs (Ray: default the cluster's CPUs)."""
    if name == "serial":
        return SerialExecutor()
    if name == "process":
        return ProcessExecutor(workers or 1)
    if name == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(workers, ray_address, quiet=quiet)
    raise LoradynError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
