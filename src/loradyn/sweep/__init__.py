"""Learning-rate sweeps as a product: YAML specs, a resumable SQLite store, executors.

* :mod:`~loradyn.sweep.spec` — ``SweepSpec``, deterministic expansion, trial ids, packs.
* :mod:`~loradyn.sweep.store` — the sweep directory's SQLite store (claims, leases, results).
* :mod:`~loradyn.sweep.tables` — reading it back: ``load_results``, ``load_curves``, ``load_probes``.
* :mod:`~loradyn.sweep.jobs` — a pack as a unit of work, run anywhere.
* :mod:`~loradyn.sweep.executors` / :mod:`~loradyn.sweep.ray_backend` — serial, process, ray.
* :mod:`~loradyn.sweep.runner` — ``run_sweep``.

Task kinds plug in through :mod:`loradyn.tasks.registry` (one :class:`~loradyn.tasks.TaskKind`
record per kind); the sweep engine holds no list of kinds.

Example:
    >>> df = run_sweep("sweep.yaml", "runs/my-sweep", executor="process")   # doctest: +SKIP
    >>> df.groupby(["lora.init", "optim.lr_a"]).final_train_loss.mean()       # doctest: +SKIP
"""

from __future__ import annotations

from ..overrides import log2_grid
from ..tasks.registry import TaskKind, TrialResult, get_task, register_task
from .runner import run_sweep
from .spec import SweepSpec, Trial, expand, resolve_sweep
from .tables import load_curves, load_probes, load_results

__all__ = [
    "SweepSpec",
    "TaskKind",
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
