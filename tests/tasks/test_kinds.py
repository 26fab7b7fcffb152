"""The sweep engine with the real synthetic task: YAML -> store -> table -> report, any executor."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from loradyn.cli import main
from loradyn.sweep import load_probes, load_results, run_sweep

pytest.importorskip("loradyn.synthetic")

SPEC = {
    "name": "synthetic-mini",
    "base": {
        "task": {"kind": "synthetic", "width": 32, "n_train": 64, "n_test": 16},
        "lora": {"rank": 2},
        "optim": {"lr_a": 1e-3},
        "train": {"steps": 20, "dtype": "float64", "record_every": 10},
    },
    "grid": {"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-8, 2, 5]}},
    "seeds": [0, 1],
    "metric": "final_train_loss",
}


def test_synthetic_sweep_store_and_report(tmp_path, capsys):
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    assert main(["validate", str(path)]) == 0
    assert "12 trials" in capsys.readouterr().out
    serial = run_sweep(path, tmp_path / "serial", executor="serial", quiet=True)
    assert len(serial) == 12
    assert {"task.width", "lora.init", "optim.lr_a", "seed", "status", "final_train_loss"} <= set(serial.columns)
    assert set(serial["status"]) <= {"done", "diverged"} and (serial["status"] == "done").any()
    assert (serial[serial["optim.lr_a"] == 4.0]["status"] == "diverged").all()  # lr 2^2 blows up
    probes = load_probes(tmp_path / "serial")
    assert {"z_a", "z_b"} <= set(probes["feature"])
    assert main(["report", str(tmp_path / "serial")]) == 0
    md = (tmp_path / "serial" / "report.md").read_text()
    assert "Optimal learning rate" in md and "Z_A and Z_B" in md
    pd.testing.assert_frame_equal(load_results(tmp_path / "serial").drop(columns="seconds"),
                                  serial.drop(columns="seconds"))


@pytest.mark.slow
def test_synthetic_sweep_same_results_serial_and_process(tmp_path):
    serial = run_sweep(SPEC, tmp_path / "serial", executor="serial", quiet=True)
    process = run_sweep(SPEC, tmp_path / "process", executor="process", workers=2, quiet=True)
    pd.testing.assert_frame_equal(serial.drop(columns="seconds"), process.drop(columns="seconds"))
