"""The ``ray`` executor on a local Ray instance (one ``ray.init`` for the module)."""

from __future__ import annotations

import socket
import subprocess
import time

import pandas as pd
import pytest
import yaml

import sweep_toy
from loradyn.errors import LoradynError
from loradyn.sweep import load_results, run_sweep

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.mark.slow
def test_ray_starts_and_stops_a_local_instance(tmp_path):
    # runs first, before the module's shared instance exists
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    df = run_sweep(sweep_toy.toy_sweep(), tmp_path, executor="ray", workers=2, quiet=True)
    assert set(df["status"]) == {"done"} and len(df) == 16
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _spec():
    spec = sweep_toy.toy_sweep(grid={"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-7, -2, 1]}})
    spec["base"]["task"].update(pack_size=3, fail_lr_above=0.2)  # 0.25 fails, 0.125 diverges
    return spec


def test_ray_gives_the_same_results_as_serial_and_process(local_ray, tmp_path):
    serial = run_sweep(_spec(), tmp_path / "serial", executor="serial", quiet=True)
    on_ray = run_sweep(_spec(), tmp_path / "ray", executor="ray", workers=2, quiet=True)
    assert set(serial["status"]) == {"done", "diverged", "failed"}
    pd.testing.assert_frame_equal(serial.drop(columns="seconds"), on_ray.drop(columns="seconds"))
    assert ray.is_initialized()  # an instance we did not start is left running


def test_ray_pack_crash_fails_only_that_pack(local_ray, tmp_path):
    spec = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.001, 0.01]})
    spec["base"]["task"].update(crash_pack_lr_above=0.005, pack_size=2)
    df = run_sweep(spec, tmp_path / "s", executor="ray", quiet=True)
    assert set(df[df["optim.lr_a"] == 0.01]["status"]) == {"failed"}
    assert (df[df["optim.lr_a"] == 0.01]["error"] == "RuntimeError: toy pack crashed").all()
    assert set(df[df["optim.lr_a"] == 0.001]["status"]) == {"done"}


def test_cli_connects_to_a_ray_address(local_ray, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    proc = subprocess.run(
        [sweep_toy.PYTHON, "-m", "loradyn", "sweep", str(path), "--out", str(tmp_path / "o"),
         "--executor", "ray", "--ray-address", local_ray, "--quiet"],
        env=sweep_toy.subprocess_env(), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 1, proc.stderr  # the configured failures
    assert "sweep toy: 24 trials" in proc.stdout
    serial = run_sweep(_spec(), tmp_path / "serial", executor="serial", quiet=True)
    pd.testing.assert_frame_equal(load_results(tmp_path / "o").drop(columns="seconds"),
                                  serial.drop(columns="seconds"))


# ---- connecting to an address is bounded ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_cli(tmp_path, address: str, timeout: str):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep_toy.toy_sweep()))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sweep_toy.PYTHON, "-m", "loradyn", "sweep", str(path), "--out", str(tmp_path / "o"),
         "--executor", "ray", "--ray-address", address, "--quiet"],
        env=sweep_toy.subprocess_env(LORADYN_RAY_CONNECT_TIMEOUT=timeout), capture_output=True, text=True,
        timeout=90,
    )
    return proc, time.monotonic() - t0


def _error_line(proc) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_nobody_listens_on_fails_at_once_with_one_line(tmp_path, scheme):
    address = f"{scheme}127.0.0.1:{_free_port()}"
    proc, seconds = _sweep_cli(tmp_path, address, "20")
    line = _error_line(proc)
    assert line.startswith(f"loradyn: error: could not reach the Ray cluster at {address} within 20 s: ")
    assert line.endswith("start it with 'ray start --head' or check --ray-address")
    assert seconds < 20  # refused: no need to wait for the deadline


def test_an_address_that_never_answers_fails_at_the_deadline(tmp_path):
    with socket.socket() as server:  # accepts connections but never speaks Ray's protocol
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        proc, seconds = _sweep_cli(tmp_path, address, "3")
    line = _error_line(proc)
    assert line.startswith(f"loradyn: error: could not reach the Ray cluster at {address} within 3 s: no answer;")
    assert seconds < 3 + 30  # the deadline plus interpreter and Ray start-up on a busy machine


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_connect_timeout_is_refused_before_anything_is_written(tmp_path, monkeypatch, value):
    monkeypatch.setenv("LORADYN_RAY_CONNECT_TIMEOUT", value)
    with pytest.raises(LoradynError, match=f"LORADYN_RAY_CONNECT_TIMEOUT must be a number of seconds > 0, got '{value}'"):
        run_sweep(sweep_toy.toy_sweep(), tmp_path / "o", executor="ray", ray_address="127.0.0.1:1", quiet=True)
    assert not (tmp_path / "o").exists()


def test_endpoints_of_addresses():
    from loradyn.sweep.ray_backend import _endpoint

    assert _endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert _endpoint("ray://head:10002") == ("head", 10002)
    assert _endpoint("ray://head") == ("head", 10001)
    assert _endpoint("[::1]:6379") == ("::1", 6379)
    assert _endpoint("auto") is None and _endpoint("local") is None and _endpoint("http://h:8265") is None
