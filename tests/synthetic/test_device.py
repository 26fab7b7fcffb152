"""``train.device`` of the synthetic engine: syntax, the pack key, one-line errors for a device this
machine lacks, and the same numbers wherever the engine runs. On this CPU-only machine ``auto`` is
the CPU (bitwise equal); a GPU's larger row blocks (another summation order) are simulated on the
CPU against the stated float64 tolerance; benchmarks/gpu_check.py compares a real GPU."""

from __future__ import annotations

import pytest
import torch

from loradyn.errors import LoradynError, SpecError
from loradyn.synthetic import SyntheticSpec, engine, frozen_parts, pack_key, run_pack
from loradyn.synthetic.task import chunk_size, validate
from loradyn.tasks import device as dev

RTOL_F64 = 1e-9  # float64, another summation order (GPU blocks): the bound gpu_check.py applies too


def spec(device="auto", seed=0, **lora) -> SyntheticSpec:
    return SyntheticSpec.from_dict({
        "task": {"width": 96, "n_train": 300, "n_test": 40},
        "lora": {"init": "A", **lora},
        "optim": {"lr_a": 1e-2, "lr_ratio": 4.0},
        "train": {"steps": 12, "dtype": "float64", "device": device, "record_every": 4, "curve_every": 6},
        "seed": seed,
    })


def _cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


def test_device_syntax_and_default():
    assert spec().train.device == "auto"
    with pytest.raises(SpecError, match=r"train\.device must be one of auto \| cpu \| cuda \| cuda:N \| mps, got 'gpu'"):
        spec(device="gpu")


def test_the_device_is_part_of_the_pack_key():
    assert pack_key(spec("cpu")) != pack_key(spec("cuda"))
    assert pack_key(spec("cpu", seed=0)) == pack_key(spec("cpu", seed=0, init="B"))


def test_cuda_on_a_machine_without_it_is_one_line(monkeypatch):
    _cpu_only(monkeypatch)
    with pytest.raises(LoradynError, match="^train.device=cuda:0, but this machine has no CUDA device"):
        validate(spec("cuda:0"))
    validate(spec("auto"))
    results = run_pack([spec("cuda"), spec("cpu")])
    assert results[0].status == "failed" and results[1].status == "done"
    assert results[0].error.startswith("LoradynError: train.device=cuda, but this machine has no CUDA device")
    assert "\n" not in results[0].error


def test_cpu_and_auto_are_bitwise_equal_here(monkeypatch):
    _cpu_only(monkeypatch)
    configs = [spec("cpu", 0), spec("cpu", 1, init="B", alpha_rule="1/r")]
    auto = [spec("auto", 0), spec("auto", 1, init="B", alpha_rule="1/r")]
    res_cpu, par_cpu = run_pack(configs, return_params=True)
    res_auto, par_auto = run_pack(auto, return_params=True)
    for a, b in zip(res_cpu, res_auto):
        assert a.status == b.status == "done"
        assert a.metrics == b.metrics and a.curves == b.curves and a.probes == b.probes
    for (a1, b1), (a2, b2) in zip(par_cpu, par_auto):
        assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert frozen_parts(configs[0]) is frozen_parts(configs[0], device="cpu")  # one cache entry


def test_another_row_block_size_agrees_within_the_float64_tolerance(monkeypatch):
    """A GPU's row blocks differ from the CPU's, so the data are summed in another order: on the CPU,
    blocks of 24 rows instead of one block of 300 stay within ``RTOL_F64`` (the bound a real GPU
    is held to)."""
    _cpu_only(monkeypatch)
    configs = [spec("cpu", s, init=i) for s, i in ((0, "A"), (1, "B"))]
    assert engine.block_rows(96, 300, 8) == 300
    ref, ref_params = run_pack(configs, return_params=True)
    monkeypatch.setattr(engine, "BLOCK_BYTES", 96 * 8 * 24)
    assert engine.block_rows(96, 300, 8) == 24
    other, other_params = run_pack(configs, return_params=True)
    for a, b in zip(ref, other):
        for key in ("final_train_loss", "test_loss"):
            assert abs(a.metrics[key] - b.metrics[key]) <= RTOL_F64 * abs(a.metrics[key])
    for (a1, b1), (a2, b2) in zip(ref_params, other_params):
        torch.testing.assert_close(a2, a1, rtol=RTOL_F64, atol=1e-15)
        torch.testing.assert_close(b2, b1, rtol=RTOL_F64, atol=1e-15)


def test_block_rows_and_chunks_off_the_cpu():
    assert engine.block_rows(65536, 1000, 4, "cuda") == 256
    assert engine.block_rows(65536, 1000, 4, "cpu") == 16  # MIN_ROWS
    assert engine.block_rows(1024, 1000, 4, "cuda") == 1000
    assert chunk_size(65536, device_type="cuda") == 32 and chunk_size(65536) == 8


def test_a_synthetic_sweep_on_a_missing_device_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import torch

    from loradyn.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = tmp_path / "s.yaml"
    spec.write_text("base:\n  task: {kind: synthetic, width: 32, n_train: 16, n_test: 4}\n  train: {steps: 2, device: cuda}\n"
                    "grid:\n  optim.lr_a: [0.001]\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--executor", "serial", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA" in err[0] and not (tmp_path / "out" / "sweep.db").exists()
