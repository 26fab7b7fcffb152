"""The ``ray`` executor: each pack is one Ray task (``num_cpus=1``); Ray is imported lazily.

It connects to ``ray_address`` (``auto``, ``ray://host:10001``, ...) or, without one, starts a
local Ray instance (``ray.init(num_cpus=workers, include_dashboard=False)``) that it shuts down
when the sweep ends. If Ray is already initialised in this process, that instance is reused and
left running. The driver keeps the store: Ray tasks only compute and return results, so the
store needs no shared filesystem. Packs should hold >= ~1 s of work (Ray's per-task overhead is
milliseconds).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import LoradynError
from .jobs import PackJob, PackOutcome, execute_pack, one_line

__all__ = ["RayExecutor"]


def _ray():
    try:
        import ray
    except ImportError:
        raise LoradynError("executor 'ray' needs Ray: pip install 'loradyn[ray]'") from None
    return ray


class RayExecutor:
    """Runs packs as Ray tasks, ``capacity`` at a time (``workers`` or the cluster's CPUs)."""

    name = "ray"

    def __init__(self, workers: int | None, address: str | None = None, *, quiet: bool = True) -> None:
        ray = _ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR" if quiet else "WARNING"}
            # the task modules must be importable in Ray's workers: ship the driver's sys.path
            kwargs["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                target = address or "a local Ray instance"
                raise LoradynError(f"could not start or reach {target}: {one_line(err)}") from None
            self._started = True
        self.capacity = int(workers or max(1, ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1, max_retries=0)(execute_pack)

    def submit(self, job: PackJob) -> Any:
        # plain dicts: Ray unpickles arguments before execute_pack can put the driver's sys.path
        # in place, so a task module outside site-packages (tests, scripts) must not be needed there
        from ..serialize import spec_to_dict

        configs = tuple(c if isinstance(c, dict) else spec_to_dict(c) for c in job.configs)
        return self._remote.remote(PackJob(job.pack, job.kind, job.task_module, configs,
                                           job.sys_path or tuple(sys.path)))

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, PackOutcome]]:
        ray = self._ray
        ready, rest = ray.wait(list(handles), num_returns=1, timeout=timeout)
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
