"""What a running sweep shows: the plan at once, and heartbeats from running packs (steps done)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

import sweep_toy
from loradyn.sweep.progress import Progress


def _spec(tmp_path, sleep: float, n_lr: int = 2) -> str:
    spec = sweep_toy.toy_sweep(base={"task": {"kind": "toy", "width": 8, "steps": 30, "sleep": sleep, "pack_size": 2},
                                     "lora": {"rank": 4, "alpha": 4.0}, "optim": {"lr_a": 0.01}},
                               grid={"optim.lr_a": {"log2": [-8, -8 + n_lr - 1, 1]}}, seeds=[0])
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_the_plan_comes_at_once_and_running_packs_send_heartbeats(tmp_path, executor):
    env = sweep_toy.subprocess_env(LORADYN_HEARTBEAT_SECONDS="0.5")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "loradyn", "sweep", _spec(tmp_path, sleep=3.0), "--out",
                             str(tmp_path / "out"), "--executor", executor, "--workers", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append((time.monotonic() - start, line.rstrip()))
    assert proc.wait(timeout=120) == 0
    plan = [(t, text) for t, text in lines if "plan:" in text]
    assert plan, lines
    assert "2 trials to run (0 of 2 already finished) in 1 pack on the " + executor + " executor" in plan[0][1]
    first_result = min(t for t, text in lines if re.search(r"\d+/2 trials", text) and "running" not in text)
    assert plan[0][0] < first_result  # the plan is shown before any pack finishes
    beats = [text for _, text in lines if "running 1 pack: steps" in text]
    assert beats, lines
    assert re.search(r"steps \d+/10", beats[-1])  # the toy reports each trial's 10 sleep steps


def test_heartbeats_are_rate_limited_and_name_the_running_packs(capsys, monkeypatch):
    monkeypatch.setenv("LORADYN_HEARTBEAT_SECONDS", "0")
    progress = Progress("s", total=4)
    progress.plan("plan: 4 trials")
    progress.started("p1")
    progress.beat("p1", 5, 10)
    progress.started("p2")
    progress.tick()
    progress.finished("p1")
    progress.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[s] plan: 4 trials"
    assert any("running 1 pack: steps 5/10" in line for line in err)
    assert any("running 2 packs: steps 5/10, started" in line for line in err)
    monkeypatch.setenv("LORADYN_HEARTBEAT_SECONDS", "60")
    quiet = Progress("s", total=4)
    quiet.beat("p1", 1, 10)
    assert "running" not in capsys.readouterr().err  # not due yet


def test_gpus_need_cuda_and_the_process_executor(tmp_path, capsys, monkeypatch):
    import torch

    from loradyn.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = _spec(tmp_path, sleep=0.0)
    assert main(["sweep", spec, "--out", str(tmp_path / "a"), "--gpus", "all", "--quiet"]) == 2
    assert "this machine has no CUDA device" in capsys.readouterr().err
    assert main(["sweep", spec, "--out", str(tmp_path / "b"), "--gpus", "0", "--executor", "serial", "--quiet"]) == 2
    assert "resources: {gpus: 1}" in capsys.readouterr().err
