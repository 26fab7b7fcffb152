"""The ``ray`` executor: each pack is one Ray task (``num_cpus=1``); Ray is imported lazily.

It connects to ``ray_address`` (``auto``, ``ray://host:10001``, ...) or, without one, starts a
local Ray instance (``ray.init(num_cpus=workers, include_dashboard=False)``) that it shuts down
when the sweep ends. If Ray is already initialised in this process, that instance is reused and
left running. The driver keeps the store: Ray tasks only compute and return results, so the
store needs no shared filesystem. Packs should hold >= ~1 s of work (Ray's per-task overhead is
milliseconds).

Connecting to an address is bounded: ``LORADYN_RAY_CONNECT_TIMEOUT`` seconds (default 30). A
``host:port`` or ``ray://host[:port]`` address is first probed over TCP, so a cluster that is not
there fails at once; ``ray.init`` then runs with the rest of that deadline, and Ray's own
connection warnings are held back meanwhile. Failing gives one line naming the address.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import LoradynError
from .jobs import PackJob, PackOutcome, execute_pack, one_line

__all__ = ["CONNECT_TIMEOUT_ENV", "RayExecutor", "connect_timeout"]

CONNECT_TIMEOUT_ENV = "LORADYN_RAY_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 30.0
RAY_CLIENT_PORT = 10001


def connect_timeout() -> float:
    """Seconds to wait for a Ray cluster: ``LORADYN_RAY_CONNECT_TIMEOUT`` or 30; one line if invalid."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise LoradynError(f"{CONNECT_TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def _endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host[:port]``; None for ``auto`` and the like."""
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    if "://" in rest or "/" in rest or not rest:
        return None
    host, sep, port = rest.rpartition(":")
    if not sep and client:
        host, port = rest, str(RAY_CLIENT_PORT)
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def _stderr_into(sink: Any) -> Iterator[None]:
    """Send file descriptor 2 (Python's and Ray's C++ warnings) to ``sink`` meanwhile."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _connect(ray: Any, address: str, kwargs: dict[str, Any], quiet: bool) -> None:
    """``ray.init(address=...)`` within :func:`connect_timeout` seconds, or one line."""
    timeout = connect_timeout()
    outcome: dict[str, BaseException] = {}

    def attempt() -> None:
        try:
            endpoint = _endpoint(address)
            if endpoint is not None:
                with socket.create_connection(endpoint, timeout=timeout):
                    pass
            ray.init(address=address, **kwargs)
        except BaseException as err:  # handed to the driver thread
            outcome["error"] = err

    thread = threading.Thread(target=attempt, name="loradyn-ray-connect", daemon=True)
    with tempfile.TemporaryFile("w+") as held:
        with _stderr_into(held):
            thread.start()
            thread.join(timeout)
        if not thread.is_alive() and "error" not in outcome and not quiet:
            held.seek(0)
            sys.stderr.write(held.read())
    err = outcome.get("error")
    if thread.is_alive() or isinstance(err, OSError):  # OSError: refused, unreachable, no cluster
        why = one_line(err) if err is not None else "no answer"
        raise LoradynError(f"could not reach the Ray cluster at {address} within {timeout:g} s: {why}; "
                           "start it with 'ray start --head' or check --ray-address")
    if isinstance(err, Exception):
        raise LoradynError(f"could not connect to the Ray cluster at {address}: {one_line(err)}")
    if err is not None:
        raise err


def _ray():
    try:
        import ray
    except ImportError:
        raise LoradynError("executor 'ray' needs Ray: pip install 'loradyn[ray]'") from None
    return ray


class RayExecutor:
    """Runs packs as Ray tasks, ``capacity`` at a time (``workers`` or the cluster's CPUs)."""

    name = "ray"

    def __init__(self, workers: int | None, address: str | None = None, *, quiet: bool = True,
                 on_beat: Any = None, resources: dict[str, float] | None = None) -> None:
        ray = _ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR" if quiet else "WARNING"}
            # the task modules must be importable in Ray's workers: ship the driver's sys.path
            kwargs["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
            if address:
                _connect(ray, address, kwargs, quiet)
            else:
                try:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **kwargs)
                except (ConnectionError, RuntimeError, ValueError) as err:
                    raise LoradynError(f"could not start a local Ray instance: {one_line(err)}") from None
            self._started = True
        cpus = float((resources or {}).get("cpus", 1))
        gpus = float((resources or {}).get("gpus", 0))
        cluster = ray.cluster_resources()
        slots = cluster.get("CPU", 1) / max(cpus, 1e-9)
        if gpus:
            slots = min(slots, cluster.get("GPU", 0) / gpus)
        self.capacity = int(workers or max(1, int(slots)))
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute_pack)
        self._on_beat = on_beat
        self._beats = None
        if on_beat is not None:  # heartbeats of running packs, through a small queue actor
            try:
                from ray.util.queue import Queue

                self._beats = Queue(maxsize=10_000)
            except Exception:  # noqa: BLE001 - no heartbeats is not a reason to stop a sweep
                self._beats = None

    def submit(self, job: PackJob) -> Any:
        # plain dicts: Ray unpickles arguments before execute_pack can put the driver's sys.path
        # in place, so a task module outside site-packages (tests, scripts) must not be needed there
        from ..serialize import spec_to_dict

        configs = tuple(c if isinstance(c, dict) else spec_to_dict(c) for c in job.configs)
        return self._remote.remote(PackJob(job.pack, job.kind, job.task_module, configs,
                                           job.sys_path or tuple(sys.path)), self._beats)

    def _drain(self) -> None:
        if self._beats is None:
            return
        try:
            for pack, done, total in self._beats.get_nowait_batch(self._beats.qsize()):
                self._on_beat(pack, done, total)
        except Exception:  # noqa: BLE001 - a lost heartbeat is harmless
            pass

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, PackOutcome]]:
        ray = self._ray
        ready, rest = ray.wait(list(handles), num_returns=1, timeout=timeout)
        self._drain()
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        out = []
        for ref in ready:
            try:
                outcome = ray.get(ref)
            except Exception as err:  # worker crash, task error, lost object
                cause = getattr(err, "cause", None)
                outcome = PackOutcome(None, f"ray task failed: {one_line(cause or err)}")
            out.append((ref, outcome))
        return out

    def close(self, wait: bool = True) -> None:
        if self._started:
            self._ray.shutdown()
