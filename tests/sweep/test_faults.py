"""Faults on one machine: a worker process killed mid-pack, a driver killed early, a repeated result.

The process executor's workers are spawned processes; one that dies (``kill -9``, the OOM killer)
loses only its own pack, which runs again in a new process while the other worker's pack goes on.
A driver killed at any moment leaves no worker behind.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import yaml

import sweep_toy
from loradyn.sweep import run_sweep
from loradyn.sweep.jobs import PackJob, execute_pack
from loradyn.sweep.leases import new_owner
from loradyn.sweep.store import SweepStore


def _spec(**task) -> dict:
    data = sweep_toy.toy_sweep(grid={"optim.lr_a": {"log2": [-9, -4, 1]}})
    data["base"]["task"].update({"sleep": 0.2, "pack_size": 2, **task})
    return data  # 6 lrs x 2 seeds = 12 trials in 6 packs of 2


def _log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_worker_loses_only_its_own_pack_which_runs_again(tmp_path, monkeypatch, capfd):
    reference = run_sweep(_spec(), tmp_path / "ref", executor="serial", quiet=True)
    log = tmp_path / "exec.log"
    monkeypatch.setenv("LORADYN_TOY_LOG", str(log))
    df = run_sweep(_spec(die_once=str(tmp_path / "flag")), tmp_path / "s", executor="process", workers=2)
    assert (tmp_path / "flag").exists(), "no worker was killed: the test did not exercise the fault"
    assert set(df["status"]) == {"done"}
    cols = ["optim.lr_a", "seed", "status", "final_loss"]  # trial ids differ: die_once is in the config
    pd.testing.assert_frame_equal(df[cols], reference[cols])
    runs = collections.Counter(line[0] for line in _log(log))
    twice = [t for t, n in runs.items() if n > 1]
    assert len(twice) == 1 and set(runs.values()) <= {1, 2}  # only the first trial of the killed pack ran again
    killed = [line[1] for line in _log(log) if line[0] == twice[0]][0]
    assert len({line[1] for line in _log(log)} - {killed}) >= 1  # the sibling worker went on
    err = capfd.readouterr().err
    assert "its worker process died (killed by SIGKILL (out of memory, or kill -9?)); running it again" in err


def test_a_trial_that_raises_is_failed_not_retried(tmp_path, monkeypatch):
    log = tmp_path / "exec.log"
    monkeypatch.setenv("LORADYN_TOY_LOG", str(log))
    spec = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.001, 0.01]})
    spec["base"]["task"].update(crash_pack_lr_above=0.005, pack_size=2)
    df = run_sweep(spec, tmp_path / "s", executor="process", workers=2, quiet=True)
    assert (df[df["optim.lr_a"] == 0.01]["error"] == "RuntimeError: toy pack crashed").all()
    assert collections.Counter(line[0] for line in _log(log)).most_common(1)[0][1] == 1


def test_a_result_that_cannot_leave_its_worker_fails_its_pack_and_the_worker_goes_on(tmp_path):
    spec = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.001, 0.01, 0.002, 0.003]})
    spec["base"]["task"].update(unpicklable_lr_above=0.005, pack_size=2)
    df = run_sweep(spec, tmp_path / "s", executor="process", workers=1, quiet=True)
    bad = df[df["optim.lr_a"] == 0.01]
    assert set(bad["status"]) == {"failed"}
    assert bad["error"].str.startswith("the pack's result could not be sent to the driver: ").all()
    assert set(df[df["optim.lr_a"] != 0.01]["status"]) == {"done"}


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def test_workers_never_outlive_a_driver_killed_at_any_early_moment(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec(sleep=15.0)))  # a pack takes 30 s: a worker must not finish it first
    rng = random.Random(17)
    for k in range(6):
        log = tmp_path / f"log{k}"
        proc = subprocess.Popen(
            [sweep_toy.PYTHON, "-m", "loradyn", "sweep", str(path), "--out", str(tmp_path / f"o{k}"),
             "--executor", "process", "--workers", "2", "--quiet"],
            env=sweep_toy.subprocess_env(LORADYN_TOY_LOG=str(log)), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        if k % 2:  # while the workers run their first packs
            deadline = time.monotonic() + 60
            while len(_log(log)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(_log(log)) == 2, "the workers never started a pack"
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # interpreter start-up, store creation, workers starting
            time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _group_alive(proc.pid)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"kill {k}: processes {left} outlived their driver"


def test_a_result_arriving_twice_is_written_once_and_never_over_a_later_claim(tmp_path):
    store = SweepStore.create(tmp_path)
    store.add_trials([("t0", "p0", {"seed": 0}), ("t1", "p0", {"seed": 1})])
    ids = {"t0", "t1"}

    def result(tid, value):
        return {"trial_id": tid, "status": "done", "metrics": {"loss": value}, "error": None, "seconds": 0.1}

    first = store.claim(new_owner(), ids, 0.05)
    assert store.complete(first.token, "a", [result("t0", 1.0)]) == 1
    assert store.complete(first.token, "a", [result("t0", 9.0)]) == 0  # the same result again
    time.sleep(0.1)  # t1's lease expires; another driver takes it and writes its own result
    second = store.claim(new_owner(), ids, 60)
    assert second.trial_ids == ("t1",)
    assert store.complete(first.token, "a", [result("t1", 5.0)]) == 0  # late original: not while claimed
    assert store.complete(second.token, "b", [result("t1", 2.0)]) == 1
    assert store.complete(first.token, "a", [result("t1", 5.0)]) == 0  # late original: not over b's
    assert store.complete(second.token, "b", [result("t1", 7.0)]) == 0  # b's retry: written once
    rows = store.fetch("SELECT trial_id, metrics, run_id FROM trials ORDER BY idx")
    assert rows == [("t0", '{"loss": 1.0}', "a"), ("t1", '{"loss": 2.0}', "b")]
    store.close()


def test_the_same_owner_claiming_again_cannot_take_an_older_claims_result(tmp_path):
    store = SweepStore.create(tmp_path)
    store.add_trials([("t0", "p0", {"seed": 0})])
    owner = new_owner()
    old = store.claim(owner, {"t0"}, 60)
    store.release(owner)  # e.g. handed back, then claimed again by the same run
    new = store.claim(owner, {"t0"}, 60)
    assert old.token != new.token
    done = {"trial_id": "t0", "status": "done", "metrics": {"loss": 3.0}, "error": None, "seconds": 0.1}
    assert store.complete(old.token, owner, [done]) == 0
    assert store.complete(new.token, owner, [done]) == 1
    store.close()


def test_a_node_with_other_versions_runs_nothing_and_says_which():
    job = PackJob("p0", "toy", "sweep_toy", (sweep_toy.toy_sweep()["base"] | {"seed": 0},), (),
                  ("0.0.1", "2.7"))
    outcome = execute_pack(job)
    assert outcome.results is None and outcome.mismatch == outcome.error
    assert "runs loradyn 0.1.0 on Python 3." in outcome.mismatch
    assert "the driver loradyn 0.0.1 on Python 2.7: install the same loradyn and Python on every node" in outcome.mismatch


def test_ctrl_c_on_the_process_executor_stops_the_workers_quietly_and_hands_trials_back(tmp_path):
    path, out, log = tmp_path / "s.yaml", tmp_path / "o", tmp_path / "exec.log"
    path.write_text(yaml.safe_dump(_spec(sleep=5.0)))
    proc = subprocess.Popen(
        [sweep_toy.PYTHON, "-m", "loradyn", "sweep", str(path), "--out", str(out), "--executor", "process",
         "--workers", "2", "--quiet"], env=sweep_toy.subprocess_env(LORADYN_TOY_LOG=str(log)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=sweep_toy.interruptible)
    deadline = time.monotonic() + 60
    while len(_log(log)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_log(log)) == 2, "the workers never started a pack"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the driver and its workers
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.decode().strip().splitlines() == ["loradyn: interrupted (re-run the same command to resume)"]
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid)
    conn = sqlite3.connect(out / "sweep.db")
    assert {s for (s,) in conn.execute("SELECT status FROM trials")} == {"pending"}
    conn.close()
