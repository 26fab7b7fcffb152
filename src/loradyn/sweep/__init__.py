"""Learning-rate sweeps as a product: YAML specs, a resumable SQLite store, executors.

* :mod:`~loradyn.sweep.spec` — ``SweepSpec``, ``log2`` grids, deterministic expansion, trial ids.
* :mod:`~loradyn.sweep.protocol` — the ``Task`` protocol through which workloads plug in.
* :mod:`~loradyn.sweep.store` — the sweep directory's SQLite store; ``load_results`` & co.
* :mod:`~loradyn.sweep.executors` / :mod:`~loradyn.sweep.ray_backend` — serial, process, ray.
* :mod:`~loradyn.sweep.runner` — ``run_sweep``.

Example:
    >>> df = run_sweep("sweep.yaml", "runs/my-sweep", executor="process")   # doctest: +SKIP
    >>> df.groupby(["lora.init", "optim.lr_a"]).final_train_loss.mean()       # doctest: +SKIP
"""

from __future__ import annotations

from .protocol import Task, TrialResult, get_task, register_task
from .runner import run_sweep
from .spec import SweepSpec, Trial, expand, log2_grid, resolve_sweep
from .store import load_curves, load_probes, load_results

__all__ = [
    "SweepSpec",
    "Task",
    "Trial",
    "TrialResult",
    "expand",
    "get_task",
    "load_curves",
    "load_probes",
    "load_results",
    "log2_grid",
    "register_task",
    "resolve_sweep",
    "run_sweep",
]
