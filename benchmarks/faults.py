"""Fault campaign: sweeps of a small synthetic spec, each hit by one kill at a random moment, then checked.

Kinds of kill (``--kinds``):

* ``driver``     — ``kill -9`` of a ``--executor process`` driver; then the same command until it finishes.
* ``worker``     — ``kill -9`` of one of its worker processes; the sweep should finish in the same run.
* ``node``       — a worker node of a local three-node Ray cluster (``ray.cluster_utils.Cluster``: a head
  without CPUs, two one-CPU workers) removed without warning under an ``--executor ray`` driver.
* ``ray-driver`` — ``kill -9`` of an ``--executor ray`` driver; then the same command again.

A moment is uniform between 0 and the duration of an uninterrupted run of that executor, so kills
land in start-up, mid-pack and mid-commit alike; a kill drawn after the sweep already ended counts
as missed, and sweeps go on until ``--n`` kills of each kind landed. After each sweep: ``PRAGMA integrity_check`` right
after the kill and at the end, the resumes it took, completed trials lost (finished before a kill,
missing or changed after), duplicates (a finished trial written again, or curve rows that differ
in number from the reference), and results that differ from an uninterrupted reference run
(status, metrics and curves, exactly). Driver kills also count worker processes left alive, and
Ray driver kills count rows written after the driver died. Prints a table, writes JSON (per sweep
and summary) and a markdown table.

    nice -n 10 .venv/bin/python benchmarks/faults.py --n 20 --kinds driver,worker,node,ray-driver

Run it from a clone that nothing edits while it runs (the reference is computed once, at the
start): ``git clone . /tmp/c && PYTHONPATH=/tmp/c/src python /tmp/c/benchmarks/faults.py``.
Measured table: docs/results/faults.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _host import cpu_model  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
KINDS = ("driver", "worker", "node", "ray-driver")
SPEC = {  # 4 widths x 2 ranks (8 packs) x 2 inits x 2 lrs = 32 trials, a few seconds of compute per pack
    "name": "faults",
    "base": {"task": {"kind": "synthetic", "width": 32, "n_train": 128, "n_test": 64},
             "lora": {"rank": 2}, "train": {"steps": 2000, "curve_every": 250}},
    "grid": {"task.width": [16, 24, 32, 40], "lora.rank": [2, 4], "lora.init": ["A", "B"],
             "optim.lr_a": [0.01, 0.05]},
    "seeds": 1,
}
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
               "health_check_timeout_ms": 300, "health_check_failure_threshold": 3}


def env() -> dict[str, str]:
    out = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    out.pop("LORADYN_TOY_LOG", None)
    return out


def cli(spec: Path, out: Path, executor: str, address: str | None) -> list[str]:
    cmd = [PYTHON, "-m", "loradyn", "sweep", str(spec), "--out", str(out), "--executor", executor]
    cmd += ["--ray-address", address] if address else ["--workers", "2"]
    return cmd


def snapshot(out: Path) -> dict:
    """``{"ok": integrity, "trials": {tid: (status, metrics, finished_at, run_id)}, "curves": {tid: rows}}``."""
    db = out / "sweep.db"
    if not db.exists():
        return {"ok": True, "trials": {}, "curves": {}}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        trials = {r[0]: r[1:] for r in conn.execute(
            "SELECT trial_id, status, metrics, finished_at, run_id FROM trials")}
        curves: dict[str, list] = {}
        for tid, step, metric, value in conn.execute(
                "SELECT trial_id, step, metric, value FROM curves ORDER BY trial_id, metric, step"):
            curves.setdefault(tid, []).append((step, metric, value))
        return {"ok": ok, "trials": trials, "curves": curves}
    except sqlite3.DatabaseError:  # killed before the schema was committed
        return {"ok": conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "trials": {}, "curves": {}}
    finally:
        conn.close()


def finished(snap: dict) -> set[str]:
    return {t for t, row in snap["trials"].items() if row[0] in ("done", "diverged", "failed")}


def group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(entry.name))
    return alive


def workers_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and b"spawn_main" in cmd:
                found.append(int(entry.name))
    return found


def finish(cmd: list[str], limit: int = 3) -> tuple[int, bool]:
    """Run ``cmd`` until it exits 0 (at most ``limit`` times): (runs, finished)."""
    for k in range(1, limit + 1):
        if subprocess.run(cmd, env=env(), capture_output=True, timeout=900).returncode == 0:
            return k, True
    return limit, False


def compare(reference: dict, before: dict, after: dict) -> dict[str, int]:
    """Lost, duplicated and differing trials of ``after`` (``before``: right after the kill)."""
    ref, done_before = reference["trials"], finished(before)
    lost = sum(1 for t in done_before if t not in after["trials"] or after["trials"][t][:2] != before["trials"][t][:2])
    rewritten = sum(1 for t in done_before if t in after["trials"] and after["trials"][t][2:] != before["trials"][t][2:])
    extra_curves = sum(1 for t in ref if len(after["curves"].get(t, [])) != len(reference["curves"].get(t, [])))
    differ = sum(1 for t in ref if t not in after["trials"] or after["trials"][t][:2] != ref[t][:2]
                 or after["curves"].get(t) != reference["curves"].get(t))
    return {"lost": lost, "duplicates": rewritten + extra_curves, "differ": differ,
            "unfinished": len(set(ref) - finished(after))}


class Cluster:
    def __init__(self) -> None:
        from ray.cluster_utils import Cluster as RayCluster

        self.cluster = RayCluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH})
        self.workers: list = []
        self.replenish()
        self.address = self.cluster.address

    def replenish(self) -> None:
        while len(self.workers) < 2:
            self.workers.append(self.cluster.add_node(num_cpus=1))
        self.cluster.wait_for_nodes()

    def remove_one(self, rng: random.Random) -> None:
        node = rng.choice(self.workers)
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def one_sweep(kind: str, i: int, spec: Path, work: Path, reference: dict, durations: dict, rng: random.Random,
              cluster: Cluster | None) -> dict:
    out = work / f"{kind}-{i}"
    executor = "ray" if kind in ("node", "ray-driver") else "process"
    cmd = cli(spec, out, executor, cluster.address if cluster else None)
    delay = rng.uniform(0.0, durations[executor])
    rec: dict = {"kind": kind, "i": i, "delay_s": round(delay, 2)}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(delay)
    target = None
    if kind == "worker":  # the first moment after the delay at which a worker process exists
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not (target := workers_of(proc.pid)):
            time.sleep(0.01)
        target = rng.choice(target) if target else None
    rec["landed"] = proc.poll() is None and (kind != "worker" or target is not None)
    rec["finished_at_kill"] = len(finished(snapshot(out)))
    if rec["landed"]:
        if kind in ("driver", "ray-driver"):
            proc.send_signal(signal.SIGKILL)
        elif kind == "worker":
            os.kill(target, signal.SIGKILL)
        else:
            cluster.remove_one(rng)
    _, err = proc.communicate(timeout=900)
    rec["rc"] = proc.returncode
    rec["retried"] = err.decode(errors="replace").count("its worker process died") + err.decode(
        errors="replace").count("retries remaining")
    if kind == "driver":
        deadline = time.monotonic() + 15
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        rec["orphans"] = len(group_alive(proc.pid))
    for pid in group_alive(proc.pid):
        os.kill(pid, signal.SIGKILL)
    before = snapshot(out)
    if kind == "ray-driver":
        time.sleep(3.0)  # the dead driver's tasks may still run: nothing they return may be written
        rec["writes_after_death"] = len(finished(snapshot(out)) - finished(before))
    if cluster is not None:
        cluster.replenish()
    rec["corrupt"] = int(not before["ok"])
    rec["resumes"], rec["completed"] = (0, True) if proc.returncode == 0 else finish(cmd)
    after = snapshot(out)
    rec["corrupt"] += int(not after["ok"])
    rec.update(compare(reference, before, after))
    rec["seconds"] = round(time.monotonic() - t0, 1)
    shutil.rmtree(out, ignore_errors=True)
    return rec


def summary(records: list[dict]) -> list[dict]:
    rows = []
    for kind in KINDS:
        mine = [r for r in records if r["kind"] == kind]
        if not mine:
            continue
        rows.append({
            "kill": kind, "sweeps": len(mine), "kills": sum(r["landed"] for r in mine),
            "missed (sweep over)": sum(not r["landed"] for r in mine),
            "mid-sweep": sum(r["landed"] and 0 < r["finished_at_kill"] < 32 for r in mine),
            "packs rerun in-run": sum(r["retried"] > 0 for r in mine),
            "resumes": sum(r["resumes"] for r in mine), "incomplete": sum(not r["completed"] for r in mine),
            "lost": sum(r["lost"] for r in mine), "duplicates": sum(r["duplicates"] for r in mine),
            "corrupt": sum(r["corrupt"] for r in mine), "differ": sum(r["differ"] for r in mine),
            "orphans": sum(r.get("orphans", 0) for r in mine) if kind == "driver" else "–",
            "late writes": sum(r.get("writes_after_death", 0) for r in mine) if kind == "ray-driver" else "–",
            "seconds": round(sum(r["seconds"] for r in mine), 1),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> dict:
    model = cpu_model()
    versions = {}
    for name in ("loradyn", "torch", "ray"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001
            versions[name] = None
    return {"cpu": model, "nproc": os.cpu_count(), "python": platform.python_version(), **versions,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="kills per kind (sweeps run until that many landed)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--work", default="/tmp/loradyn-faults", help="scratch folder for the sweeps")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/faults.json"))
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = set(kinds) - set(KINDS)
    if bad:
        parser.error(f"unknown kinds {sorted(bad)}; choose from {', '.join(KINDS)}")
    info, t_start = machine(), time.monotonic()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = work / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    assert subprocess.run(cli(spec, work / "reference", "process", None), env=env(), capture_output=True).returncode == 0
    durations = {"process": time.monotonic() - t0}
    reference = snapshot(work / "reference")
    assert len(finished(reference)) == 32
    cluster = None
    if {"node", "ray-driver"} & set(kinds):
        cluster = Cluster()
        t0 = time.monotonic()
        assert subprocess.run(cli(spec, work / "ray-reference", "ray", cluster.address), env=env(),
                              capture_output=True).returncode == 0
        durations["ray"] = time.monotonic() - t0
        same = compare(reference, {"trials": {}, "curves": {}}, snapshot(work / "ray-reference"))
        info["ray_reference_differs"] = same["differ"]
    info["uninterrupted_seconds"] = {k: round(v, 1) for k, v in durations.items()}
    print(f"# reference runs: {info['uninterrupted_seconds']} s", flush=True)
    records = []
    try:
        for kind in kinds:  # until n kills landed (a kill after the sweep ended is drawn again), at most 3n sweeps
            landed = i = 0
            while landed < args.n and i < 3 * args.n:
                rec = one_sweep(kind, i, spec, work, reference, durations, rng,
                                cluster if kind in ("node", "ray-driver") else None)
                records.append(rec)
                landed, i = landed + rec["landed"], i + 1
                print(json.dumps(rec), flush=True)
    finally:
        if cluster is not None:
            cluster.shutdown()
    info["wall_seconds"] = round(time.monotonic() - t_start, 1)
    info["load_end"] = os.getloadavg()
    rows = summary(records)
    table = markdown(rows)
    print(table)
    target = Path(args.json)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"machine": info, "spec": SPEC, "summary": rows, "sweeps": records}, indent=1) + "\n")
    target.with_suffix(".md").write_text(f"{table}\n\nmachine: {json.dumps(info)}\n")
    print(f"wrote {target} and {target.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
