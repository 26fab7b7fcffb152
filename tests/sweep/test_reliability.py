"""Reliability: SIGKILL and resume, two concurrent runs on one store, bad-spec corpus via the CLI.

The CLI runs in subprocesses that find the toy task through ``PYTHONPATH=tests`` and
``LORADYN_TASK_MODULES=sweep_toy`` (see ``tests/sweep_toy.py``); ``LORADYN_TOY_LOG`` records
every trial execution (``<trial_id> <pid>`` per line).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import time

import pandas as pd
import pytest
import yaml

import sweep_toy
from loradyn.cli import main
from loradyn.sweep import load_results, run_sweep


def _spec(tmp_path, **task) -> os.PathLike:
    data = sweep_toy.toy_sweep(grid={"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-9, -4, 1]}})
    data["base"]["task"].update({"sleep": 0.03, "pack_size": 2, **task})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path  # 2 inits x 6 lrs x 2 seeds = 24 trials in 12 packs, ~0.06 s each


def _cli(spec, out, executor, log, workers=1):
    cmd = [sweep_toy.PYTHON, "-m", "loradyn", "sweep", str(spec), "--out", str(out), "--executor", executor,
           "--workers", str(workers), "--quiet"]
    return subprocess.Popen(cmd, env=sweep_toy.subprocess_env(LORADYN_TOY_LOG=str(log)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=sweep_toy.interruptible)


def _finished(out) -> set[str]:
    db = out / "sweep.db"
    if not db.exists():
        return set()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT trial_id FROM trials WHERE status IN ('done', 'diverged', 'failed')")
        return {r[0] for r in rows}
    except sqlite3.OperationalError:  # killed before the schema was committed
        return set()
    finally:
        conn.close()


def _logged(log) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def _wait_for(out, proc, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` trials are finished in the store (or the run ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if count <= 0 or len(_finished(out)) >= count:
            return
        time.sleep(0.02)


def _kill_and_resume(tmp_path, executor: str, rng: random.Random, kills: int, first_delay: float | None) -> None:
    """Kill a CLI run with SIGKILL ``kills`` times, each at a seeded random moment, then resume.

    A moment is "after k more trials finished (k random in 0..4), plus a random 0-150 ms", so the
    kills land mid-sweep (mid-pack, mid-commit, during start-up) whatever the machine's load.
    """
    spec = _spec(tmp_path)
    reference = run_sweep(spec, tmp_path / "ref", executor="serial", quiet=True)
    out = tmp_path / "killed"
    finished_before: set[str] = set()
    partial = 0
    for k in range(kills):
        log = tmp_path / f"run{k}.log"
        proc = _cli(spec, out, executor, log, workers=2)
        if k == 0 and first_delay is not None:
            time.sleep(first_delay)  # during interpreter start-up or store creation
        else:
            _wait_for(out, proc, len(finished_before) + rng.randint(0, 4))
            time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stray workers of this run, if any survived
        except ProcessLookupError:
            pass
        # finished trials are never executed again
        assert not finished_before & set(_logged(log)), f"run {k} re-ran finished trials"
        finished = _finished(out)
        assert finished >= finished_before  # the store never loses a finished trial
        partial += 0 < len(finished) < len(reference)
        finished_before = finished
    log = tmp_path / "final.log"
    proc = _cli(spec, out, executor, log, workers=2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert not finished_before & set(_logged(log))
    assert partial >= 1, "no kill landed mid-sweep; the test did not exercise resume"
    got = load_results(out)
    pd.testing.assert_frame_equal(got.drop(columns="seconds"), reference.drop(columns="seconds"))


def test_sigkill_at_random_moments_then_resume_gives_the_same_table_serial(tmp_path):
    _kill_and_resume(tmp_path, "serial", random.Random(20240611), kills=5, first_delay=0.05)


def test_sigkill_at_random_moments_then_resume_gives_the_same_table_process(tmp_path):
    _kill_and_resume(tmp_path, "process", random.Random(7), kills=3, first_delay=None)


def test_two_concurrent_runs_do_every_trial_exactly_once(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "shared"
    log = tmp_path / "exec.log"
    procs = [_cli(spec, out, "serial", log) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err.decode()
    df = load_results(out)
    assert len(df) == 24 and set(df["status"]) <= {"done", "diverged"}
    counts = collections.Counter(_logged(log))
    assert set(counts) == set(df["trial_id"]) and set(counts.values()) == {1}
    pids = {line.split()[1] for line in log.read_text().splitlines()}
    assert len(pids) == 2, "both runs should have shared the work"


BAD_SPECS = {
    "unknown top-level key": "name: x\nbase: {task: {kind: toy}}\ngrids: {}\n",
    "unknown base key": "base: {task: {kind: toy}, lora: {rnk: 4}}\n",
    "unknown section": "base: {task: {kind: toy}, optimizer: {lr_a: 0.1}}\n",
    "unknown grid key": "base: {task: {kind: toy}}\ngrid: {optim.lr_x: [0.1]}\n",
    "wrong type": "base: {task: {kind: toy}, lora: {rank: four}}\n",
    "wrong type in grid": "base: {task: {kind: toy}}\ngrid: {optim.lr_a: [abc]}\n",
    "lr zero": "base: {task: {kind: toy}, optim: {lr_a: 0}}\n",
    "lr negative in grid": "base: {task: {kind: toy}}\ngrid: {optim.lr_a: [0.1, -0.1]}\n",
    "rank zero": "base: {task: {kind: toy}, lora: {rank: 0}}\n",
    "rank negative in grid": "base: {task: {kind: toy}}\ngrid: {lora.rank: [4, -1]}\n",
    "unknown init": "base: {task: {kind: toy}, lora: {init: C}}\n",
    "unknown init in grid": "base: {task: {kind: toy}}\ngrid: {lora.init: [A, X]}\n",
    "empty grid list": "base: {task: {kind: toy}}\ngrid: {optim.lr_a: []}\n",
    "bad log2": "base: {task: {kind: toy}}\ngrid: {optim.lr_a: {log2: [0, -4]}}\n",
    "malformed yaml": "base: {task: {kind: toy}\ngrid: [\n",
    "tab indentation": "base:\n\ttask: {kind: toy}\n",
    "not a mapping": "- 1\n- 2\n",
    "empty file": "",
    "missing task kind": "base: {lora: {rank: 4}}\n",
    "unknown task": "base: {task: {kind: nope}}\n",
    "empty seeds": "base: {task: {kind: toy}}\nseeds: []\n",
    "seed grid": "base: {task: {kind: toy}}\ngrid: {seed: [1]}\n",
    "bad mode": "base: {task: {kind: toy}}\nmode: best\n",
    "grid not a mapping": "base: {task: {kind: toy}}\ngrid: [1, 2]\n",
    "unknown task field": "base: {task: {kind: toy, widht: 8}}\n",
}


@pytest.mark.parametrize("verb", ["validate", "sweep"])
@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_corpus_exit_2_one_line(case, verb, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SPECS[case])
    argv = [verb, str(path)] + (["--out", str(tmp_path / "out"), "--executor", "serial"] if verb == "sweep" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loradyn: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "MISSING"],
        ["validate", "DIR"],
        ["validate", "GOOD", "optim.lr_a"],
        ["validate", "GOOD", "optim.lr_a=-1"],
        ["validate", "GOOD", "lora.bogus=1"],
        ["validate", "GOOD", "optim.lr_a=[]"],
        ["sweep", "GOOD", "--out", "OUT", "--workers", "0"],
        ["sweep", "GOOD", "--out", "OUT", "--executor", "gpu"],
        ["sweep", "GOOD"],
        ["bogus-verb"],
        ["results", "OUT"],
    ],
)
def test_bad_arguments_exit_2_one_line(argv, tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(sweep_toy.toy_sweep()))
    subst = {"MISSING": str(tmp_path / "missing.yaml"), "DIR": str(tmp_path), "GOOD": str(good),
             "OUT": str(tmp_path / "out")}
    assert main([subst.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("loradyn: error: ") and "Traceback" not in err


def test_bad_spec_in_a_real_process_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SPECS["rank zero"])
    proc = subprocess.run([sweep_toy.PYTHON, "-m", "loradyn", "sweep", str(path), "--out", str(tmp_path / "o")],
                          env=sweep_toy.subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "rank" in proc.stderr


def test_ctrl_c_hands_claimed_trials_back(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "interrupted"
    proc = _cli(spec, out, "serial", tmp_path / "log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _finished(out):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "re-run the same command to resume" in err.decode()
    conn = sqlite3.connect(out / "sweep.db")
    statuses = {s for (s,) in conn.execute("SELECT status FROM trials")}
    conn.close()
    assert "running" not in statuses and "pending" in statuses
