"""Worker processes for the process executor: one pack per process, and a dead process loses only its own pack.

Each worker is a spawned process talking to the driver over its own pipe: the driver sends
``(handle, job)``, the worker sends ``("beat", pack, done, total)`` heartbeats and then
``("done", handle, outcome)``. A worker that dies (``kill -9``, the OOM killer, a crash in native
code) takes only the pack it was running with it: the driver starts a new process in its slot
and runs that pack again there, at most ``retries`` times; the other workers and their packs go on.
A trial that raises is not a death: :func:`~loradyn.sweep.jobs.execute_pack` returns its error.

Workers never outlive their driver: each sets the parent-death signal (``PR_SET_PDEATHSIG``,
Linux) and then checks that its parent is still the driver that started it, so a driver killed
even before that moment leaves nothing behind. Workers ignore Ctrl-C; the driver stops them.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from .jobs import PackJob, PackOutcome, execute_pack, one_line, single_thread

__all__ = ["WorkerPool", "describe_exit", "die_with_parent"]


def die_with_parent(parent_pid: int) -> None:
    """Make this process die with ``parent_pid``; exit now if that parent is already gone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the driver died before the signal was set: we were re-parented
        os._exit(0)


def _worker_main(conn: Connection, parent_pid: int, gpu: str | None) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    single_thread()
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        handle, job = message
        outcome = execute_pack(job, lambda pack, done, total: send(("beat", pack, done, total)))
        try:
            send(("done", handle, outcome))
        except (pickle.PicklingError, TypeError, AttributeError) as err:  # a result that cannot be pickled
            send(("done", handle, PackOutcome(None, f"the pack's result could not be sent to the driver: "
                                                    f"{one_line(err)}", outcome.seconds)))


def describe_exit(code: int | None) -> str:
    """``exit code 3`` or ``killed by SIGKILL (out of memory?)`` for a dead process's exit code."""
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (" (out of memory, or kill -9?)" if -code == signal.SIGKILL else "")


@dataclass
class _Slot:
    gpu: str | None
    process: Any = None
    conn: Connection | None = None
    handle: int | None = None
    job: PackJob | None = None
    deaths: int = 0


class WorkerPool:
    """``size`` worker processes (``spawn``), each running one pack at a time.

    ``on_beat(pack, done, total)`` receives heartbeats; ``on_note(text)`` hears about a worker
    death and the pack's rerun; a pack whose worker died ``retries + 1`` times comes back failed.
    """

    def __init__(self, size: int, *, gpus: Sequence[str] | None = None, retries: int = 3,
                 on_beat: Callable[[str, int, int], None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")
        self._slots = [_Slot(gpu) for gpu in (list(gpus) if gpus else [None] * size)]
        self._retries = retries
        self._on_beat = on_beat
        self._on_note = on_note
        self._next = 0
        self._ready: list[tuple[int, PackOutcome]] = []

    @property
    def size(self) -> int:
        return len(self._slots)

    def _start(self, slot: _Slot) -> None:
        mine, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(theirs, os.getpid(), slot.gpu),
                                 name="loradyn-worker", daemon=True)
        proc.start()
        theirs.close()
        slot.process, slot.conn = proc, mine

    def _send(self, slot: _Slot) -> None:
        if slot.process is not None and not slot.process.is_alive():  # died while idle
            slot.process.join(timeout=5)
            slot.conn.close()
            slot.process, slot.conn = None, None
        if slot.process is None:
            self._start(slot)
        try:
            slot.conn.send((slot.handle, slot.job))
        except (OSError, EOFError):  # died between the check and the send: noticed by wait()
            pass

    def submit(self, job: PackJob) -> int:
        slot = next((s for s in self._slots if s.job is None), None)
        if slot is None:
            raise RuntimeError("every worker is busy: submit at most `size` packs at once")
        self._next += 1
        slot.handle, slot.job, slot.deaths = self._next, job, 0
        self._send(slot)
        return self._next

    def _finish(self, slot: _Slot, outcome: PackOutcome) -> None:
        self._ready.append((slot.handle, outcome))
        slot.handle, slot.job = None, None

    def _read(self, slot: _Slot) -> bool:
        """Take every message waiting on ``slot``'s pipe; False when the pipe is closed."""
        try:
            while slot.conn.poll():
                try:
                    message = slot.conn.recv()
                except (EOFError, OSError):
                    raise
                except Exception as err:  # noqa: BLE001 - a result this process cannot unpickle
                    if slot.job is not None:
                        self._finish(slot, PackOutcome(None, f"could not read the pack's result: {one_line(err)}"))
                    continue
                if message[0] == "beat":
                    if self._on_beat is not None:
                        self._on_beat(*message[1:])
                elif message[1] == slot.handle:
                    self._finish(slot, message[2])
        except (EOFError, OSError):
            return False
        return True

    def _bury(self, slot: _Slot) -> None:
        """``slot``'s process is dead (or its pipe broke): rerun its pack in a new process, or give it up."""
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=5)
        how = describe_exit(slot.process.exitcode)
        slot.conn.close()
        slot.process, slot.conn = None, None
        if slot.job is None:
            return
        slot.deaths += 1
        pack = slot.job.pack
        if slot.deaths > self._retries:
            self._finish(slot, PackOutcome(None, f"the worker process running this pack died {slot.deaths} times "
                                                 f"(last: {how}); --retry-failed runs it again"))
            return
        if self._on_note is not None:
            self._on_note(f"pack {pack}: its worker process died ({how}); running it again in a new process "
                          f"(retry {slot.deaths} of {self._retries})")
        self._send(slot)

    def wait(self, handles: Sequence[int], timeout: float) -> list[tuple[int, PackOutcome]]:
        """Finished packs among ``handles`` (waiting up to ``timeout`` s for the first)."""
        if not self._ready:
            busy = [s for s in self._slots if s.job is not None and s.conn is not None]
            watched = [s.conn for s in busy] + [s.process.sentinel for s in busy]
            if watched:
                wait(watched, timeout)
            for slot in busy:
                open_ = self._read(slot)  # a result sent just before dying still counts
                if not open_ or not slot.process.is_alive():
                    self._bury(slot)
        wanted = set(handles)
        out = [(h, o) for h, o in self._ready if h in wanted]
        self._ready = [(h, o) for h, o in self._ready if h not in wanted]
        return out

    def close(self, wait: bool = True) -> None:
        """Stop the workers: ask them to exit (``wait``) or terminate them (an interrupted run)."""
        for slot in self._slots:
            if slot.process is None:
                continue
            if wait and slot.job is None:
                try:
                    slot.conn.send(None)
                except (OSError, EOFError):
                    pass
            else:
                slot.process.terminate()
        for slot in self._slots:
            if slot.process is None:
                continue
            slot.process.join(timeout=5 if wait else 2)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=2)
            slot.conn.close()
            slot.process, slot.conn, slot.job, slot.handle = None, None, None, None
