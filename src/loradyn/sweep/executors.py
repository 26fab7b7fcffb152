"""Executors: where packs run. ``serial`` (this process), ``process`` (worker processes), ``ray``.

The unit of work is a :class:`~loradyn.sweep.jobs.PackJob`; :func:`make_executor` is the one
factory. Workers only compute; the driver writes each pack's results as it finishes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import LoradynError
from .jobs import PackJob, PackOutcome, execute_pack, max_retries

__all__ = ["EXECUTORS", "Executor", "ProcessExecutor", "SerialExecutor", "make_executor", "max_retries"]

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


class ProcessExecutor:
    """``workers`` spawned processes (one torch thread each), one pack per process at a time
    (:class:`~loradyn.sweep.pool.WorkerPool`): a worker that dies loses only its own pack, which
    runs again in a new process (at most :func:`max_retries` times).

    With ``gpus`` (device ids), there is one worker per GPU and each sees only its own
    (``CUDA_VISIBLE_DEVICES``), so ``train.device: auto`` or ``cuda`` puts every pack on its worker's GPU.
    """

    name = "process"

    def __init__(self, workers: int, on_beat: Callable[[str, int, int], None] | None = None,
                 gpus: Sequence[str] | None = None, on_note: Callable[[str], None] | None = None) -> None:
        from .pool import WorkerPool

        self._pool = WorkerPool(workers, gpus=gpus, retries=max_retries(), on_beat=on_beat, on_note=on_note)
        self.capacity = self._pool.size

    def submit(self, job: PackJob) -> int:
        return self._pool.submit(job)

    def wait(self, handles: Sequence[int], timeout: float) -> list[tuple[int, PackOutcome]]:
        return self._pool.wait(handles, timeout)

    def close(self, wait: bool = True) -> None:
        """Stop the workers; ``wait=False`` (interrupted run) terminates busy ones."""
        self._pool.close(wait)


def make_executor(name: str, workers: int | None, ray_address: str | None = None, *, quiet: bool = True,
                  on_beat: Callable[[str, int, int], None] | None = None, gpus: Sequence[str] | None = None,
                  resources: dict[str, float] | None = None, on_note: Callable[[str], None] | None = None) -> Executor:
    """The executor ``name`` with ``workers`` parallel packs (Ray: default the cluster's CPUs).

    ``on_beat(pack, done, total)`` receives the running packs' heartbeats; ``on_note(text)`` what
    the driver should tell the user (lost packs running again, the Ray cluster found); ``gpus``
    (process executor) places one worker per GPU; ``resources`` (Ray) is what each pack asks for.
    """
    if name == "serial":
        return SerialExecutor(on_beat)
    if name == "process":
        return ProcessExecutor(workers or 1, on_beat, gpus, on_note)
    if name == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(workers, ray_address, quiet=quiet, on_beat=on_beat, resources=resources,
                           on_note=on_note)
    raise LoradynError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
