"""loradyn.half_gemm: the per-host choice of the CPU half-precision GEMM workarounds."""

from __future__ import annotations

import pytest
import torch

from loradyn import half_gemm
from loradyn.errors import LoradynError


@pytest.fixture
def fake_measure(monkeypatch):
    """Replace the measurement by a counter-wrapped fake; clear the per-process cache and the env."""
    monkeypatch.delenv("LORADYN_HALF_BASE", raising=False)
    monkeypatch.delenv("LORADYN_HALF_RANK", raising=False)
    monkeypatch.setattr(half_gemm, "_MEASURED", {})
    state = {"times": {}, "calls": []}

    def fake(dtype):
        state["calls"].append(dtype)
        return dict(state["times"])

    monkeypatch.setattr(half_gemm, "measure_half_gemms", fake)
    return state


@pytest.mark.parametrize(
    ("nn", "nt", "base"),
    [(4.0, 1.0, True), (1.3, 1.0, True), (1.2, 1.0, False), (1.0, 1.0, False), (0.7, 1.0, False)],
)
def test_auto_base_follows_the_measurement_with_margin(fake_measure, nn, nt, base) -> None:
    fake_measure["times"] = {"nn": nn, "nt": nt, "rank_half": 1.0, "rank_fp32": 1.0}
    plan = half_gemm.half_plan(torch.bfloat16)
    assert plan.base is base
    assert plan.rank is False


@pytest.mark.parametrize(("half", "fp32", "rank"), [(10.0, 1.0, True), (1.3, 1.0, True), (1.2, 1.0, False)])
def test_auto_rank_follows_the_measurement_with_margin(fake_measure, half, fp32, rank) -> None:
    fake_measure["times"] = {"nn": 1.0, "nt": 1.0, "rank_half": half, "rank_fp32": fp32}
    assert half_gemm.half_plan(torch.float16).rank is rank


def test_measured_once_per_dtype(fake_measure) -> None:
    fake_measure["times"] = {"nn": 3.0, "nt": 1.0, "rank_half": 1.0, "rank_fp32": 1.0}
    for _ in range(3):
        half_gemm.half_plan(torch.bfloat16)
        half_gemm.half_plan(torch.float16)
    assert fake_measure["calls"] == [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("value", ["on", "off", " ON "])
def test_env_forces_without_measuring(fake_measure, monkeypatch, value) -> None:
    monkeypatch.setenv("LORADYN_HALF_BASE", value)
    monkeypatch.setenv("LORADYN_HALF_RANK", value)
    plan = half_gemm.half_plan(torch.bfloat16)
    want = value.strip().lower() == "on"
    assert plan == half_gemm.HalfPlan(base=want, rank=want)
    assert fake_measure["calls"] == []


def test_env_forces_one_and_measures_the_other(fake_measure, monkeypatch) -> None:
    fake_measure["times"] = {"nn": 1.0, "nt": 1.0, "rank_half": 5.0, "rank_fp32": 1.0}
    monkeypatch.setenv("LORADYN_HALF_BASE", "on")
    assert half_gemm.half_plan(torch.bfloat16) == half_gemm.HalfPlan(base=True, rank=True)
    assert fake_measure["calls"] == [torch.bfloat16]


def test_bad_env_value_is_one_clear_error(fake_measure, monkeypatch) -> None:
    monkeypatch.setenv("LORADYN_HALF_RANK", "fast")
    with pytest.raises(LoradynError, match=r"LORADYN_HALF_RANK must be auto, on or off, got 'fast'"):
        half_gemm.half_plan(torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_real_measurement_returns_positive_seconds(dtype) -> None:
    times = half_gemm.measure_half_gemms(dtype)
    assert set(times) == {"nn", "nt", "rank_half", "rank_fp32"}
    assert all(0 < t < 10 for t in times.values())
