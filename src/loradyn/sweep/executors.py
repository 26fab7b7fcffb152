"""Executors: where packs run. ``serial`` (this process), ``process`` (worker processes), ``ray``.

The unit of work is a :class:`~loradyn.sweep.jobs.PackJob`; :func:`make_executor` is the one
factory. Workers only compute; the driver writes each pack's results as it finishes.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import LoradynError
from .jobs import PackJob, PackOutcome, execute_pack, one_line, set_worker_beats, single_thread

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

    def __init__(self, on_beat: Callable[[str, int, int], None] | None = None) -> None:
        self._jobs: dict[int, PackJob] = {}
        self._next = 0
        self._on_beat = on_beat

    def submit(self, job: PackJob) -> int:
        self._next += 1
        self._jobs[self._next] = job
        return self._next

    def wait(self, handles: Sequence[int], timeout: float) -> list[tuple[int, PackOutcome]]:
        handle = handles[0]
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
        try:
            outcome = execute_pack(self._jobs.pop(handle), self._on_beat)
        finally:
            torch = sys.modules.get("torch")
            if threads is not None and torch is not None and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        return [(handle, outcome)]

    def close(self, wait: bool = True) -> None:
        self._jobs.clear()


def _worker_init(beats: Any = None, gpus: Any = None) -> None:
    """Worker set-up: one thread for every BLAS/OpenMP pool; heartbeats to ``beats``; with ``gpus``
    (a queue of device ids) this worker takes one and sees only it; die with the driver (Linux)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if gpus is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get(timeout=60))
    set_worker_beats(beats)
    single_thread()
    try:  # PR_SET_PDEATHSIG: a SIGKILLed driver takes its workers with it
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class ProcessExecutor:
    """``workers`` spawned processes (one torch thread each), one pack per process at a time.

    With ``gpus`` (device ids), there is one worker per GPU and each sees only its own
    (``CUDA_VISIBLE_DEVICES``), so ``train.device: auto`` or ``cuda`` puts every pack on its worker's GPU.
    """

    name = "process"

    def __init__(self, workers: int, on_beat: Callable[[str, int, int], None] | None = None,
                 gpus: Sequence[str] | None = None) -> None:
        import multiprocessing as mp

        self.capacity = len(gpus) if gpus else workers
        self._ctx = mp.get_context("spawn")
        self._gpus = list(gpus or ())
        self._on_beat = on_beat
        self._beats = self._ctx.Queue() if on_beat is not None else None
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        gpus = None
        if self._gpus:
            gpus = self._ctx.Queue()
            for gpu in self._gpus:
                gpus.put(gpu)
        return cf.ProcessPoolExecutor(self.capacity, mp_context=self._ctx, initializer=_worker_init,
                                      initargs=(self._beats, gpus))

    def _drain(self) -> None:
        """Hand the heartbeats the workers sent to the driver's display."""
        if self._beats is None:
            return
        while True:
            try:
                pack, done, total = self._beats.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            self._on_beat(pack, done, total)

    def submit(self, job: PackJob) -> cf.Future:
        try:
            return self._pool.submit(execute_pack, job)
        except cf.process.BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(execute_pack, job)

    def wait(self, handles: Sequence[cf.Future], timeout: float) -> list[tuple[cf.Future, PackOutcome]]:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        self._drain()
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
        else:
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in processes:
                if proc.is_alive():
                    proc.terminate()
        if self._beats is not None:
            self._beats.cancel_join_thread()  # never block the driver on heartbeats left unread
            self._beats.close()


def make_executor(name: str, workers: int | None, ray_address: str | None = None, *, quiet: bool = True,
                  on_beat: Callable[[str, int, int], None] | None = None, gpus: Sequence[str] | None = None,
                  resources: dict[str, float] | None = None) -> Executor:
    """The executor ``name`` with ``workers`` parallel packs (Ray: default the cluster's CPUs).

    ``on_beat(pack, done, total)`` receives the running packs' heartbeats; ``gpus`` (process
    executor) places one worker per GPU; ``resources`` (Ray) is what each pack asks for.
    """
    if name == "serial":
        return SerialExecutor(on_beat)
    if name == "process":
        return ProcessExecutor(workers or 1, on_beat, gpus)
    if name == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(workers, ray_address, quiet=quiet, on_beat=on_beat, resources=resources)
    raise LoradynError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
