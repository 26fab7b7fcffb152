"""Which CPU half-precision GEMM workarounds :class:`~loradyn.layers.LoRALinear` uses, decided by a
one-time measurement on the running host.

oneDNN's bf16/fp16 GEMM speed depends on the CPU and on the operand layout. On one host (no native
bf16 kernels) ``grad @ W`` with ``W`` contiguous (the "NN" layout autograd's ``F.linear`` backward
uses) ran 4-5x slower than the same product as ``grad @ (W.T contiguous).T``, and GEMMs with a
rank-sized dimension ran 10-100x slower than in float32. On a host with AVX512-BF16 every bf16
layout is fast and both workarounds cost time (loradyn 1.4-1.7x slower than PEFT in bf16), while
fp16 there still has the slow layouts. So each workaround is used only where it measurably wins:

* ``base``: the frozen base GEMM through ``_FrozenHalfLinear`` (backward by a contiguous ``W.T``
  made at backward time) -- used when ``grad @ W`` is more than ``MARGIN`` times slower than
  making ``W.T`` contiguous and multiplying by it;
* ``rank``: the rank-sized adapter GEMMs (``Z_A @ B.T`` and its two backward products) in float32
  -- used when the half-precision products take more than ``MARGIN`` times as long as the
  float32 ones including the casts.

:func:`half_plan` measures once per dtype and process (about 0.05-0.2 s, at the first CPU
half-precision LoRA forward). The environment variables ``LORADYN_HALF_BASE`` and
``LORADYN_HALF_RANK`` (``auto``, the default, ``on`` or ``off``) force either choice.

The module also holds the layers' other CPU half-precision helpers: ``_FrozenHalfLinear``, and
``_shared_half_input``, which casts a float32 input to the autocast dtype once for both the base
GEMM and ``lora_A`` (autocast casts a non-leaf input once per GEMM, and casts both input gradients
back: two extra input-sized passes each way).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LoradynError

__all__ = ["HalfPlan", "half_plan", "measure_half_gemms"]

MARGIN = 1.25
_ENV = {"base": "LORADYN_HALF_BASE", "rank": "LORADYN_HALF_RANK"}
_MEASURED: dict[torch.dtype, dict[str, float]] = {}


@dataclass(frozen=True)
class HalfPlan:
    """``base``: run the frozen base GEMM via ``_FrozenHalfLinear``; ``rank``: adapter GEMMs in float32."""

    base: bool
    rank: bool


def _best_seconds(fn, reps: int = 2) -> float:
    fn()  # warm-up: oneDNN primitive creation
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def measure_half_gemms(dtype: torch.dtype) -> dict[str, float]:
    """Seconds of the GEMMs each workaround replaces and of the workaround, on this CPU, 1 call each.

    Keys: ``nn`` (``grad @ W``), ``nt`` (``grad @ W.T.contiguous().T``, copy included), ``rank_half``
    and ``rank_fp32`` (forward ``Z_A @ B.T`` plus the two backward products at r = 8 and 64, the
    float32 variant including the casts). Shapes: 128 rows, a 768 x 384 weight.
    """
    gen = torch.Generator().manual_seed(0)
    rows, n_in, n_out = 128, 384, 768
    with torch.autocast("cpu", enabled=False), torch.no_grad():
        weight = torch.randn(n_out, n_in, generator=gen).to(dtype)
        grad = torch.randn(rows, n_out, generator=gen).to(dtype)
        out = {
            "nn": _best_seconds(lambda: grad @ weight),
            "nt": _best_seconds(lambda: grad @ weight.T.contiguous().T),
        }
        factors = [
            (torch.randn(rows, r, generator=gen).to(dtype), torch.randn(n_out, r, generator=gen).to(dtype))
            for r in (8, 64)
        ]

        def rank_half() -> None:
            for z_a, lora_b in factors:
                z_a @ lora_b.T, z_a.T @ grad, grad @ lora_b

        def rank_fp32() -> None:
            g32 = grad.float()
            for z_a, lora_b in factors:
                z32, b32 = z_a.float(), lora_b.float()
                z32 @ b32.T, z32.T @ g32, (g32 @ b32).to(dtype)

        out["rank_half"] = _best_seconds(rank_half)
        out["rank_fp32"] = _best_seconds(rank_fp32)
    return out


def _forced(key: str) -> bool | None:
    name = _ENV[key]
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("auto", "on", "off"):
        raise LoradynError(f"{name} must be auto, on or off, got {value!r}")
    return None if value == "auto" else value == "on"


def half_plan(dtype: torch.dtype) -> HalfPlan:
    """The workarounds to use for CPU GEMMs in ``dtype`` (bf16 or fp16); measured once per dtype."""
    base, rank = _forced("base"), _forced("rank")
    if base is None or rank is None:
        times = _MEASURED.get(dtype)
        if times is None:
            times = _MEASURED[dtype] = measure_half_gemms(dtype)
        if base is None:
            base = times["nn"] > MARGIN * times["nt"]
        if rank is None:
            rank = times["rank_half"] > MARGIN * times["rank_fp32"]
    return HalfPlan(base=base, rank=rank)


# --- the layers' CPU half-precision helpers -----------------------------------------------------
def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _shared_half_input(x: torch.Tensor, lora_a: nn.Module) -> torch.Tensor:
    """``x`` cast once to the autocast dtype, for the base GEMM and ``lora_A`` both (autocast would
    cast a non-leaf input once per GEMM, forward and backward); ``x`` itself off the CPU (not
    measured there), when autocast is off, ``x`` is not float32, or hooks on ``lora_A`` could
    observe its input."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not _autocast_on("cpu"):
        return x
    if lora_a._forward_hooks or lora_a._forward_pre_hooks:
        return x
    modules = nn.modules.module
    if modules._global_forward_hooks or modules._global_forward_pre_hooks:
        return x
    try:
        dtype = torch.get_autocast_dtype("cpu")
    except AttributeError:  # torch < 2.4
        dtype = torch.get_autocast_cpu_dtype()
    return x.to(dtype) if dtype in (torch.bfloat16, torch.float16) else x


def _half_compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The CPU half-precision dtype the base GEMM would run in, or None (fp32, GPU, mixed dtypes)."""
    if x.device.type != "cpu":
        return None
    if _autocast_on("cpu"):
        try:
            dtype = torch.get_autocast_dtype("cpu")
        except AttributeError:  # torch < 2.4
            dtype = torch.get_autocast_cpu_dtype()
        if x.dtype not in (torch.float32, dtype) or weight.dtype not in (torch.float32, dtype):
            return None  # autocast leaves float64 alone
    elif x.dtype == weight.dtype:
        dtype = x.dtype
    else:
        return None
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


class _FrozenHalfLinear(torch.autograd.Function):
    """``x2d @ W.T + b`` for a frozen CPU weight in half precision, using the GEMM layouts oneDNN runs fast.

    ``weight`` is (out, in), or (in, out) with ``fan_in_fan_out`` (Conv1D). Both GEMMs multiply by
    the transpose of a contiguous matrix: the forward by ``W`` (out, in), the backward (input
    gradient only -- the weight and bias are frozen) by a contiguous ``W.T`` (in, out). The output
    dtype is the compute dtype, as under autocast; the input gradient has the input's dtype.
    """

    @staticmethod
    def forward(ctx, x2d, weight, bias, dtype, fan_in_fan_out):  # noqa: D102
        with torch.autocast("cpu", enabled=False):
            w_out_in = weight.T if fan_in_fan_out else weight
            w_out_in = w_out_in.to(dtype, memory_format=torch.contiguous_format)
            b = None if bias is None else bias.to(dtype)
            y = F.linear(x2d.to(dtype), w_out_in, b)
        ctx.save_for_backward(weight)
        ctx.dtype, ctx.x_dtype, ctx.fan_in_fan_out = dtype, x2d.dtype, fan_in_fan_out
        return y

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (weight,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            with torch.autocast("cpu", enabled=False):
                w_in_out = weight if ctx.fan_in_fan_out else weight.T
                w_in_out = w_in_out.to(ctx.dtype, memory_format=torch.contiguous_format)
                grad_x = F.linear(grad.to(ctx.dtype), w_in_out).to(ctx.x_dtype)
        return grad_x, None, None, None, None
