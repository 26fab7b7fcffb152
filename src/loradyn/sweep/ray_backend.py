"""The ``ray`` executor: each pack is one Ray task asking for the spec's ``resources:`` (default one
CPU); Ray is imported lazily.

It connects to ``ray_address`` (``auto``, ``ray://host:10001``, ...) or, without one, starts a
local Ray instance (``ray.init(address="local", num_cpus=workers, include_dashboard=False)``: a new
one even where another Ray cluster runs on this machine) that it shuts down
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
from .jobs import PackJob, PackOutcome, execute_pack, max_retries, one_line

__all__ = ["CONNECT_TIMEOUT_ENV", "RayExecutor", "check_cluster", "connect_timeout"]

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


def _silence_until_done(thread: threading.Thread) -> None:
    """Ray's connecting thread goes on after the deadline and its C++ code logs to file descriptor 2
    ("Failed to connect to GCS ..."): send descriptor 2 to /dev/null until that thread ends, and
    Python's own ``sys.stderr`` (the one-line error) to the real stderr meanwhile."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    os.dup2(devnull, 2)
    os.close(devnull)
    previous = sys.stderr
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding=getattr(previous, "encoding", None) or "utf-8")

    def restore() -> None:
        thread.join()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
            os.dup2(real, 2)
            os.close(real)
            sys.stderr = previous

    threading.Thread(target=restore, name="loradyn-ray-connect-watch", daemon=True).start()


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
    if thread.is_alive():
        _silence_until_done(thread)
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


def _route_messages(ray: Any, quiet: bool) -> Any:
    """Ray prints the cluster's error messages (a dead node's banner, a raylet's last 20 log
    lines, "task failed, retrying") on the driver's stdout. Send them to stderr as one line each
    instead, or nowhere with ``quiet``; returns the undo (None where Ray's printer is not found)."""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(module, "print_to_stdstream", None)
    if original is None:
        return None

    def route(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet" or data.get("is_err"):
            original(data, ignore_prefix)
            return
        if quiet:
            return
        for text in data.get("lines") or ():
            first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
            if first:
                print(f"ray: {first[:300]}", file=sys.stderr, flush=True)

    module.print_to_stdstream = route
    return lambda: setattr(module, "print_to_stdstream", original)


def _plural(n: float, word: str) -> str:
    value = f"{n:g}"
    return f"{value} {word}{'' if n == 1 else 's'}"


def check_cluster(nodes: list[dict[str, Any]], cpus: float, gpus: float, address: str | None) -> str:
    """The cluster found (``3 nodes, 6 CPUs, 1 GPU``); one line if no live node can run a pack
    that asks for ``cpus`` CPUs and ``gpus`` GPUs (instead of waiting for one forever)."""
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive", n.get("alive", True))]
    total_cpu = sum(r.get("CPU", 0) for r in alive)
    total_gpu = sum(r.get("GPU", 0) for r in alive)
    found = f"{_plural(len(alive), 'node')}, {_plural(total_cpu, 'CPU')}, {_plural(total_gpu, 'GPU')}"
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in alive):
        largest = max(alive, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        where = f"the Ray cluster at {address}" if address else "the local Ray instance"
        raise LoradynError(
            f"each pack asks for {_plural(cpus, 'CPU')} and {_plural(gpus, 'GPU')} (resources: in the spec), but no "
            f"node of {where} has that ({found}; the largest node has {_plural(largest.get('CPU', 0), 'CPU')} and "
            f"{_plural(largest.get('GPU', 0), 'GPU')}): lower resources: or add such a node")
    return found


_SYSTEM_FAILURES = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OutOfMemoryError",
                    "LocalRayletDiedError", "RaySystemError", "OutOfDiskError", "ObjectStoreFullError")


class RayExecutor:
    """Runs packs as Ray tasks, ``capacity`` at a time (``workers`` or the cluster's CPUs).

    A pack lost to a system failure (its node or worker process died, its result was lost) is
    run again by Ray on the nodes left, at most :func:`~loradyn.sweep.jobs.max_retries`
    times (``max_retries``, ``retry_exceptions=False``); an exception of the trial code is a
    result (the trial is ``failed``) and never retried. Closing an interrupted run cancels the
    tasks in flight.
    """

    name = "ray"

    def __init__(self, workers: int | None, address: str | None = None, *, quiet: bool = True,
                 on_beat: Any = None, resources: dict[str, float] | None = None, on_note: Any = None) -> None:
        ray = _ray()
        self._ray = ray
        self._started = False
        self._retries = max_retries()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR" if quiet else "WARNING"}
            kwargs["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
            if address:
                _connect(ray, address, kwargs, quiet)
            else:
                try:
                    ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                             **kwargs)
                except (ConnectionError, RuntimeError, ValueError) as err:
                    raise LoradynError(f"could not start a local Ray instance: {one_line(err)}") from None
            self._started = True
        self._undo_routing = _route_messages(ray, quiet)
        self._inflight: dict[Any, str] = {}
        self._beats = None
        try:
            cpus = float((resources or {}).get("cpus", 1))
            gpus = float((resources or {}).get("gpus", 0))
            found = check_cluster(ray.nodes(), cpus, gpus, address)
            if on_note is not None:
                on_note(f"ray cluster{f' at {address}' if address else ''}: {found}; each pack asks for "
                        f"{_plural(cpus, 'CPU')}" + (f" and {_plural(gpus, 'GPU')}" if gpus else ""))
            cluster = ray.cluster_resources()
            slots = cluster.get("CPU", 1) / max(cpus, 1e-9)
            if gpus:
                slots = min(slots, cluster.get("GPU", 0) / gpus)
            self.capacity = int(workers or max(1, int(slots)))
            self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=self._retries,
                                      retry_exceptions=False)(execute_pack)
            if on_beat is not None:  # heartbeats of running packs, through a small queue actor
                self._beats = self._beat_queue()
        except BaseException:
            self.close(wait=True)
            raise
        self._on_beat = on_beat

    def _beat_queue(self) -> Any:
        try:  # on the driver's node, taking no CPU: it lives as long as the driver
            from ray.util.queue import Queue
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(self._ray.get_runtime_context().get_node_id(), soft=True)
            return Queue(maxsize=10_000, actor_options={"num_cpus": 0, "scheduling_strategy": here})
        except Exception:  # noqa: BLE001 - no heartbeats is not a reason to stop a sweep
            return None

    def submit(self, job: PackJob) -> Any:
        # plain dicts: Ray unpickles arguments before execute_pack can put the driver's sys.path
        # in place, so a task module outside site-packages (tests, scripts) must not be needed there
        from ..serialize import spec_to_dict

        configs = tuple(c if isinstance(c, dict) else spec_to_dict(c) for c in job.configs)
        ref = self._remote.remote(PackJob(job.pack, job.kind, job.task_module, configs,
                                          job.sys_path or tuple(sys.path), job.versions), self._beats)
        self._inflight[ref] = job.pack
        return ref

    def _drain(self) -> None:
        if self._beats is None:
            return
        try:
            for pack, done, total in self._beats.get_nowait_batch(self._beats.qsize()):
                self._on_beat(pack, done, total)
        except Exception:  # noqa: BLE001 - a lost heartbeat is harmless
            pass

    def _outcome(self, ref: Any) -> PackOutcome:
        ray = self._ray
        try:
            return ray.get(ref)
        except Exception as err:
            cause = getattr(err, "cause", None)
            system = tuple(getattr(ray.exceptions, n) for n in _SYSTEM_FAILURES if hasattr(ray.exceptions, n))
            if isinstance(err, system) and not isinstance(err, ray.exceptions.RayTaskError):
                return PackOutcome(None, f"lost to a Ray system failure {self._retries + 1} times "
                                         f"(last: {one_line(err)}); --retry-failed runs it again")
            return PackOutcome(None, f"ray task failed: {one_line(cause or err)}")

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, PackOutcome]]:
        ray = self._ray
        ready, rest = ray.wait(list(handles), num_returns=1, timeout=timeout)
        self._drain()
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        out = []
        for ref in ready:
            out.append((ref, self._outcome(ref)))
            self._inflight.pop(ref, None)
        return out

    def close(self, wait: bool = True) -> None:
        """End the executor; ``wait=False`` (an interrupted run) first cancels the tasks in flight."""
        if not wait:
            for ref in list(self._inflight):
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=True)
        self._inflight.clear()
        if self._undo_routing is not None:
            self._undo_routing()
            self._undo_routing = None
        if self._started:
            self._ray.shutdown()
            self._started = False
