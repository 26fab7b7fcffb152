"""The Ray executor on a multi-node cluster on this machine (``ray.cluster_utils.Cluster``: a head
without CPUs and two one-CPU worker nodes): a node lost mid-sweep, a driver killed and restarted,
Ctrl-C with tasks in flight, impossible resources, other versions on a node, Ray's banners.

One cluster serves the module (about 15 s to start); node deaths are noticed within about 2 s
(fast health checks). Every test leaves two live worker nodes behind.
"""

from __future__ import annotations

import collections
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import sweep_toy
from loradyn.errors import LoradynError
from loradyn.sweep import load_results, run_sweep

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.ray

FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
               "health_check_timeout_ms": 300, "health_check_failure_threshold": 3}


class Nodes:
    """The test cluster: ``address``, and worker nodes that can be removed and replaced."""

    def __init__(self) -> None:
        self.cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH})
        self.workers = [self.cluster.add_node(num_cpus=1) for _ in range(2)]
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def remove(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def replenish(self) -> None:
        while len(self.workers) < 2:
            self.workers.append(self.cluster.add_node(num_cpus=1))
        self.cluster.wait_for_nodes()

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def nodes():
    if ray.is_initialized():
        ray.shutdown()
    nodes = Nodes()
    ray.init(address=nodes.address, log_to_driver=False, logging_level="ERROR")
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def _spec(sleep: float = 0.4, **task) -> dict:
    data = sweep_toy.toy_sweep(grid={"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-8, -4, 1]}})
    data["base"]["task"].update({"sleep": sleep, "pack_size": 2, **task})
    return data  # 2 inits x 5 lrs x 2 seeds = 20 trials in 10 packs of two seeds


def _log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _finished(out: Path) -> set[str]:
    try:
        conn = sqlite3.connect(f"file:{out / 'sweep.db'}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT trial_id FROM trials WHERE status IN ('done', 'diverged', 'failed')")
            return {r[0] for r in rows}
        finally:
            conn.close()
    except sqlite3.Error:
        return set()


def _table(df: pd.DataFrame) -> pd.DataFrame:
    """Everything but wall time, the log file and the trial id (which hashes the log file's name)."""
    return df.drop(columns=[c for c in ("seconds", "task.log", "trial_id") if c in df.columns]).reset_index(drop=True)


def test_a_node_lost_mid_sweep_reruns_its_packs_on_the_others(nodes, tmp_path):
    log = tmp_path / "exec.log"
    reference = run_sweep(_spec(log=str(tmp_path / "serial.log")), tmp_path / "serial", executor="serial", quiet=True)
    victim = nodes.workers[0]
    out = tmp_path / "ray"
    removed: list[str] = []

    def remove_when_busy() -> None:  # as soon as the victim runs a pack that is not finished
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            mine = [line[0] for line in _log(log) if line[2] == victim.node_id]
            if len(_finished(out)) >= 2 and set(mine) - _finished(out):
                removed.append(mine[-1])
                nodes.remove(victim)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=remove_when_busy)
    killer.start()
    try:
        t0 = time.monotonic()
        df = run_sweep(_spec(log=str(log)), out, executor="ray", ray_address=nodes.address, workers=2, quiet=True)
        seconds = time.monotonic() - t0
    finally:
        killer.join()
        nodes.replenish()
    assert removed, "the node was never removed mid-pack: nothing was exercised"
    pd.testing.assert_frame_equal(_table(df), _table(reference))
    conn = sqlite3.connect(out / "sweep.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT trial_id, status FROM trials").fetchall()
    conn.close()
    assert len(rows) == len(reference) and {r[1] for r in rows} == {"done"}  # each trial once, finished
    runs = collections.Counter(line[0] for line in _log(log))
    assert runs[removed[0]] >= 2  # the lost trial ran again, on the node left
    assert {line[2] for line in _log(log) if line[0] == removed[0]} - {victim.node_id}
    print(f"node-loss sweep: {seconds:.1f} s")


def _cli(spec: Path, out: Path, address: str) -> list[str]:
    return [sweep_toy.PYTHON, "-m", "loradyn", "sweep", str(spec), "--out", str(out), "--executor", "ray",
            "--ray-address", address, "--quiet"]


def test_a_killed_driver_and_the_same_command_again_complete_the_sweep(nodes, tmp_path):
    spec, out, log = tmp_path / "s.yaml", tmp_path / "o", tmp_path / "exec.log"
    spec.write_text(yaml.safe_dump(_spec(sleep=0.3, log=str(log))))
    proc = subprocess.Popen(_cli(spec, out, nodes.address), env=sweep_toy.subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_finished(out)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _finished(out)
    assert 4 <= len(before) < 20, "the kill did not land mid-sweep"
    time.sleep(2.0)  # the dead driver's tasks may still run on the nodes for a moment: they write nothing
    assert _finished(out) == before
    first = len(_log(log))
    again = subprocess.run(_cli(spec, out, nodes.address), env=sweep_toy.subprocess_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not before & {line[0] for line in _log(log)[first:]}  # finished trials never ran again
    reference = run_sweep(_spec(sleep=0.3, log=str(tmp_path / "serial.log")), tmp_path / "serial",
                          executor="serial", quiet=True)
    pd.testing.assert_frame_equal(_table(load_results(out)), _table(reference))
    assert set(reference["status"]) == {"done"}
    assert again.stdout.splitlines() == ["sweep toy: 20 trials (20 done)",
                                         f"wrote {out / 'sweep.db'} (results: loradyn results {out})"]


def test_ctrl_c_cancels_the_tasks_in_flight_and_hands_their_trials_back(nodes, tmp_path):
    spec, out, log = tmp_path / "s.yaml", tmp_path / "o", tmp_path / "exec.log"
    spec.write_text(yaml.safe_dump(_spec(sleep=3.0, log=str(log))))  # a pack takes 6 s
    proc = subprocess.Popen(_cli(spec, out, nodes.address), env=sweep_toy.subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sweep_toy.interruptible)
    deadline = time.monotonic() + 120
    while len(_log(log)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_log(log)) == 2, "no packs started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "re-run the same command to resume" in err.decode()
    conn = sqlite3.connect(out / "sweep.db")
    statuses = collections.Counter(s for (s,) in conn.execute("SELECT status FROM trials"))
    conn.close()
    assert statuses == {"pending": 20}  # the two packs in flight went back to pending
    time.sleep(4.0)  # a task that was not cancelled would now start its pack's second trial
    assert len(_log(log)) == 2


def test_the_cluster_is_printed_and_impossible_resources_are_refused(nodes, tmp_path, capfd):
    df = run_sweep(sweep_toy.toy_sweep(), tmp_path / "ok", executor="ray", ray_address=nodes.address)
    assert set(df["status"]) == {"done"}
    err = capfd.readouterr().err
    assert f"ray cluster at {nodes.address}: 3 nodes, 2 CPUs, 0 GPUs; each pack asks for 1 CPU" in err
    for resources, asked in (({"gpus": 1}, "1 CPU and 1 GPU"), ({"cpus": 2}, "2 CPUs and 0 GPUs")):
        with pytest.raises(LoradynError, match=f"each pack asks for {asked} .* but no node of the Ray cluster at "
                                               f".* has that \\(3 nodes, 2 CPUs, 0 GPUs; the largest node has 1 CPU "
                                               f"and 0 GPUs\\): lower resources: or add such a node"):
            run_sweep({**sweep_toy.toy_sweep(), "resources": resources}, tmp_path / f"no{len(asked)}",
                      executor="ray", ray_address=nodes.address, quiet=True)


def test_a_node_with_other_versions_is_named_at_the_first_pack(nodes, tmp_path, monkeypatch):
    from loradyn.sweep import runner

    monkeypatch.setattr(runner, "versions", lambda: ("9.9.9", "3.11"))  # as if the driver had another loradyn
    with pytest.raises(LoradynError, match=r"runs loradyn 0\.1\.0 on Python 3\.\d+, the driver loradyn 9\.9\.9 on "
                                           r"Python 3\.11: install the same loradyn and Python on every node"):
        run_sweep(sweep_toy.toy_sweep(), tmp_path / "s", executor="ray", ray_address=nodes.address, quiet=True)
    conn = sqlite3.connect(tmp_path / "s" / "sweep.db")
    assert {s for (s,) in conn.execute("SELECT status FROM trials")} == {"pending"}  # nothing ran, nothing held
    conn.close()


def test_quiet_keeps_ray_banners_of_a_dying_node_off_stdout(nodes, tmp_path):
    spec, out = tmp_path / "s.yaml", tmp_path / "o"
    spec.write_text(yaml.safe_dump(_spec(sleep=0.3)))
    proc = subprocess.Popen(_cli(spec, out, nodes.address), env=sweep_toy.subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_finished(out)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes.remove(nodes.workers[0])
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        nodes.replenish()
    assert proc.returncode == 0, stderr
    assert stdout.splitlines() == ["sweep toy: 20 trials (20 done)",
                                   f"wrote {out / 'sweep.db'} (results: loradyn results {out})"], stdout
    assert "raylet" not in stderr and "state-dump" not in stderr, stderr
