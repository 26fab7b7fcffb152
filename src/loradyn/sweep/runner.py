"""``run_sweep``: expand a sweep, claim packs from the store, run them on an executor, record results.

The driver loop: claim a pack of claimable trials (one transaction), submit it to the executor,
and write each finished pack's results in one transaction. A heartbeat thread renews the leases of
the trials in flight. When nothing is left to claim but another run still holds some of this
sweep's trials, the driver waits for them (or for their leases to expire), so the table it returns
is complete. Interrupting a run (Ctrl-C) cancels the packs in flight and hands their trials back
to ``pending``.

Faults: a pack lost to a dead worker process or Ray node is run again by the executor (at most
``LORADYN_MAX_RETRIES`` times); results are written under the claim's token, so a pack's result
is written once however often it arrives. Every knob (``LORADYN_LEASE_SECONDS``,
``LORADYN_MAX_RETRIES``, ``LORADYN_DB_TIMEOUT``) is checked before anything is written, and SQLite
and OS failures on the store become one line (:mod:`~loradyn.sweep.storefiles`).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import LoradynError
from ..tasks.registry import TaskKind, get_task, task_module
from .env import environment
from .executors import EXECUTORS, make_executor, max_retries
from .fslocks import DriverMark, guard_store
from .jobs import PackJob, PackOutcome, versions
from .leases import new_owner, retire_owner
from .progress import Progress
from .spec import DEFAULT_MAX_TRIALS, SweepSpec, count_line, expand, plan_packs, resolve_sweep
from .store import DB_NAME, FINISHED, Claim, SweepStore
from .storefiles import db_timeout, make_directory, store_errors
from .tables import results_frame

__all__ = ["run_sweep", "validate_inputs", "visible_gpus"]

POLL_SECONDS = 0.25


def lease_seconds() -> float:
    """Lease length (seconds): ``LORADYN_LEASE_SECONDS`` or 60. Heartbeats renew it every quarter."""
    try:
        value = float(os.environ.get("LORADYN_LEASE_SECONDS", "60"))
    except ValueError:
        raise LoradynError("LORADYN_LEASE_SECONDS must be a number of seconds") from None
    if not value > 0:
        raise LoradynError("LORADYN_LEASE_SECONDS must be > 0")
    return value


class _Heartbeat(threading.Thread):
    def __init__(self, store: SweepStore, owner: str, lease: float, mark: DriverMark | None) -> None:
        super().__init__(name="loradyn-heartbeat", daemon=True)
        self._store, self._owner, self._lease, self._mark = store.reader(), owner, lease, mark
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.wait(self._lease / 4):
                if self._mark is not None:
                    self._mark.refresh()
                try:
                    self._store.renew(self._owner, self._lease)
                except sqlite3.Error:
                    pass  # busy or locked: the next beat retries well within the lease
        finally:
            self._store.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _results(claim: Claim, outcome: PackOutcome, metric: str | None) -> list[dict[str, Any]]:
    """Per-trial rows for the store from a pack outcome (whole-pack errors -> ``failed``)."""
    n = len(claim.trial_ids)
    if outcome.results is None:
        return [
            {"trial_id": tid, "status": "failed", "metrics": {}, "error": outcome.error,
             "seconds": outcome.seconds / n}
            for tid in claim.trial_ids
        ]
    rows = []
    for tid, res in zip(claim.trial_ids, outcome.results):
        status = getattr(res, "status", None)
        metrics = dict(getattr(res, "metrics", None) or {})
        error = getattr(res, "error", None)
        if status not in FINISHED:
            status, error = "failed", f"task returned status {status!r}; expected done, diverged or failed"
        checked = [metric] if metric and metric in metrics else list(metrics)
        bad = [k for k in checked if isinstance(metrics[k], float) and not math.isfinite(metrics[k])]
        if status == "done" and bad:
            status, error = "diverged", f"non-finite {bad[0]} = {metrics[bad[0]]}"
        if error is not None:
            error = " ".join(str(error).split())[:500]
        rows.append({
            "trial_id": tid, "status": status, "metrics": metrics, "error": error,
            "seconds": getattr(res, "seconds", 0.0) or outcome.seconds / n,
            "curves": list(getattr(res, "curves", None) or ()),
            "probes": list(getattr(res, "probes", None) or ()),
        })
    return rows


def _check_workers(executor: str, workers: int | None) -> None:
    if executor not in EXECUTORS:
        raise LoradynError(f"unknown executor {executor!r}; valid executors: {', '.join(EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise LoradynError(f"workers must be an integer >= 1, got {workers!r}")


def visible_gpus(gpus: str | Sequence[str] | None, executor: str) -> list[str] | None:
    """The GPU ids of ``--gpus`` (``all`` or ``0,1,…``), checked against this machine (one line)."""
    if gpus is None or gpus == "" or gpus == []:
        return None
    if executor != "process":
        raise LoradynError(f"--gpus places the process executor's workers; with --executor {executor} give "
                           "each pack's resources in the spec instead (resources: {gpus: 1})")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise LoradynError("--gpus: this machine has no CUDA device (torch "
                           f"{torch.__version__}); drop --gpus to run on the CPU")
    ids = [str(i) for i in range(count)] if gpus == "all" else (
        [g.strip() for g in gpus.split(",")] if isinstance(gpus, str) else [str(g) for g in gpus])
    bad = [g for g in ids if not g.isdigit() or int(g) >= count]
    if bad or not ids:
        raise LoradynError(f"--gpus {gpus!r}: this machine has GPUs 0..{count - 1}; give 'all' or ids like 0,1")
    return ids


def validate_inputs(task: TaskKind, packs: Sequence[Any]) -> None:
    """Let a kind reject bad input (missing data, targets matching nothing) before any training.

    The kind's optional ``validate(config)`` is called once per distinct pack key and raises
    ``LoradynError`` (one line, exit code 2) for input that no trial could run on.
    """
    validate = task.validate
    if validate is None:
        return
    seen: set[Any] = set()
    for pack in packs:
        config = pack.trials[0].config
        key = task.pack_key(config)
        if key not in seen:
            seen.add(key)
            validate(config)


def _pack_workers(executor: str, workers: int | None) -> int:
    """The workers packs are balanced over: the given count, else 1 (serial) or the CPU count."""
    if workers:
        return int(workers)
    return 1 if executor == "serial" else os.cpu_count() or 1


def run_sweep(
    spec: SweepSpec | Mapping[str, Any] | str | Path,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    executor: str = "process",
    workers: int | None = None,
    quiet: bool = False,
    ray_address: str | None = None,
    retry_failed: bool = False,
    max_trials: int | None = DEFAULT_MAX_TRIALS,
    gpus: str | Sequence[str] | None = None,
):
    """Run (or resume) a sweep into the directory ``out``; returns its results table.

    Args:
        spec: a YAML path, a plain dict or a :class:`SweepSpec` (see :mod:`loradyn.sweep.spec`).
        out: the sweep directory (created if needed): ``spec.yaml``, ``env.json``, ``sweep.db``.
        overrides: dotted ``key=value`` strings applied to ``base`` (or replacing a grid axis).
        executor: ``serial``, ``process`` (worker processes) or ``ray``.
        workers: parallel packs (default: the CPU count, at most the number of packs).
        quiet: no progress output.
        ray_address: the Ray cluster to connect to (``executor="ray"``); default: a local instance.
        retry_failed: run trials that previously ``failed`` again.
        max_trials: refuse a sweep of more trials (counted before expanding; ``None``: no limit).
        gpus: ``"all"`` or device ids (``"0,1"``): the process executor runs one worker per GPU, each
            seeing only its own (``CUDA_VISIBLE_DEVICES``).

    Returns:
        A DataFrame, one row per trial of this sweep in expansion order: ``trial_id``, the
        flattened configuration (``task.width``, ``lora.init``, ``optim.lr_a``, ...), ``seed``,
        ``status``, metric columns, ``error``, ``seconds``. Finished trials found in the store
        are not re-run. ``df.attrs["out"]`` is the sweep directory.

    Raises:
        LoradynError: bad spec, overrides, executor or workers (one line).
    """
    _check_workers(executor, workers)
    lease, _, _ = lease_seconds(), max_retries(), db_timeout()  # bad knobs: one line before anything is written
    gpu_ids = visible_gpus(gpus, executor)
    if gpu_ids:
        workers = workers or len(gpu_ids)
    if executor == "ray":
        from .ray_backend import connect_timeout

        connect_timeout()  # a bad LORADYN_RAY_CONNECT_TIMEOUT is refused before anything is written
    sweep = resolve_sweep(spec, overrides, max_trials=max_trials)
    if not quiet:
        print(count_line(sweep), flush=True)  # before expanding anything; stderr stays for errors
    task = get_task(sweep.kind)
    trials = expand(sweep, task)
    packs = plan_packs(task, trials, _pack_workers(executor, workers))
    validate_inputs(task, packs)
    pack_of = {t.trial_id: p.pack_id for p in packs for t in p.trials}
    ids = [t.trial_id for t in trials]

    out = Path(out)
    make_directory(out)
    owner = new_owner()
    mark = guard_store(out, owner, lease)
    try:
        with store_errors(out / DB_NAME):
            df = _run(out, sweep, task, trials, packs, pack_of, ids, owner, lease, mark, executor=executor,
                      workers=workers, quiet=quiet, ray_address=ray_address, retry_failed=retry_failed, gpu_ids=gpu_ids)
    finally:
        retire_owner(owner)
        if mark is not None:
            mark.remove()
    if sweep.metric and sweep.metric not in df.columns:  # every trial diverged or failed before its evaluation
        df[sweep.metric] = float("nan")
    df.attrs["out"] = str(out)
    df.attrs["name"] = sweep.name
    return df


def _run(out: Path, sweep: SweepSpec, task: TaskKind, trials: list[Any], packs: list[Any], pack_of: dict[str, str],
         ids: list[str], owner: str, lease: float, mark: DriverMark | None, *, executor: str, workers: int | None,
         quiet: bool, ray_address: str | None, retry_failed: bool, gpu_ids: list[str] | None):
    store = SweepStore.create(out)
    try:
        previous = store.get_meta("name")
        if previous is not None and previous != sweep.name:
            raise LoradynError(
                f"{str(out)!r} holds sweep {previous!r}, not {sweep.name!r}; choose another --out"
            )
        store.set_meta("name", sweep.name)
        _write_atomic(out / "spec.yaml", f"# loradyn sweep {out / 'spec.yaml'} --out {out}\n"
                      f"# {len(trials)} trials in {len(packs)} packs\n"
                      + yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        store.add_trials((t.trial_id, pack_of[t.trial_id], t.data) for t in trials)
        if retry_failed:
            store.reset_failed(ids)
        statuses = store.statuses(ids)
        todo_packs = {pack_of[t] for t, s in statuses.items() if s not in FINISHED}
        n_workers = workers or max(1, min(_pack_workers(executor, None), len(todo_packs)))
        env = environment(executor, n_workers)
        _write_atomic(out / "env.json", json.dumps(env, indent=2, default=str) + "\n")
        if todo_packs:
            configs = {t.trial_id: t.config for t in trials}
            _drive(store, sweep, configs, ids, statuses, executor,
                   n_workers if executor != "ray" else workers, ray_address, quiet, env, pack_of, gpu_ids,
                   owner, lease, mark)
        return results_frame(store, ids)
    finally:
        store.close()


def _drive(store: SweepStore, sweep: SweepSpec, configs: dict[str, Any], ids: list[str], statuses: dict[str, str],
           executor_name: str, workers: int | None, ray_address: str | None, quiet: bool,
           env: dict[str, Any], pack_of: dict[str, str], gpus: list[str] | None, owner: str, lease: float,
           mark: DriverMark | None) -> None:
    wanted = set(ids)
    module = task_module(sweep.kind)
    counts = Counter(s for s in statuses.values() if s in FINISHED)
    progress = Progress(sweep.name, len(ids), sum(counts.values()), quiet=quiet)
    todo = [tid for tid in ids if statuses.get(tid) not in FINISHED]
    packs = len({pack_of[tid] for tid in todo})
    progress.plan(f"plan: {len(todo)} trials to run ({len(ids) - len(todo)} of {len(ids)} already finished) "
                  f"in {packs} pack{'s' if packs != 1 else ''} on the {executor_name} executor"
                  + (f" with {workers} worker{'s' if workers != 1 else ''}" if workers else "")
                  + (f" (GPUs {','.join(gpus)})" if gpus else ""))
    store.begin_run(owner, executor_name, workers or 0, env)
    heartbeat = _Heartbeat(store, owner, lease, mark)
    heartbeat.start()
    executor = None
    clean = False
    driver_versions = versions()
    try:
        executor = make_executor(executor_name, workers, ray_address, quiet=quiet, on_beat=progress.beat,
                                 gpus=gpus, resources=sweep.resources, on_note=progress.plan)
        in_flight: dict[Any, Claim] = {}
        while True:
            while len(in_flight) < executor.capacity:
                claim = store.claim(owner, wanted, lease)
                if claim is None:
                    break
                job = PackJob(claim.pack, sweep.kind, module,
                              tuple(configs[tid] for tid in claim.trial_ids), tuple(sys.path), driver_versions)
                in_flight[executor.submit(job)] = claim
                progress.started(claim.pack)
            progress.tick()
            if not in_flight:
                now = store.statuses(ids)
                if all(s in FINISHED for s in now.values()):
                    break
                _refresh(progress, now)
                time.sleep(POLL_SECONDS)  # another run holds trials of this sweep: wait for it
                continue
            for handle, outcome in executor.wait(list(in_flight), timeout=POLL_SECONDS * 4):
                claim = in_flight.pop(handle, None)
                if claim is None:  # not (or no longer) ours: never written
                    continue
                if outcome.mismatch:
                    raise LoradynError(outcome.mismatch)
                progress.finished(claim.pack)
                store.complete(claim.token, owner, _results(claim, outcome, sweep.metric))
                _refresh(progress, store.statuses(ids))
        clean = True
    finally:
        if executor is not None:
            executor.close(wait=clean)
        heartbeat.stop()
        if not clean:
            try:
                store.release(owner)
            except sqlite3.Error:
                pass  # the lease will expire
        try:
            store.end_run(owner)
        except sqlite3.Error:
            pass  # the run's end time only; the original error (if any) matters more
        progress.close()


def _refresh(progress: Progress, statuses: dict[str, str]) -> None:
    counts = Counter(s for s in statuses.values() if s in FINISHED)
    progress.update(sum(counts.values()), {k: counts.get(k, 0) for k in FINISHED})
