"""Mixed precision of the real-model tasks: autocast and the fp16 gradient scaler on any device
(:func:`autocast`, :func:`grad_scaler`), and bf16 on the CPU made fast with autocast's numbers.

Under ``torch.autocast("cpu", torch.bfloat16)`` every frozen ``nn.Linear`` casts its float32
weight to bf16 on every call (autocast caches casts only for weights that require grad): for
SmolLM2 that is 135 M parameters re-cast per forward (and, in greedy decoding, the 28 M-parameter
tied ``lm_head`` at every generated token: 34 ms a token). :func:`prepare_half_` stores those
frozen weights in bf16 once. The cast is the same round-to-nearest ``Tensor.to`` autocast applies,
so the forward and backward are bit-identical to plain autocast. A head tied to the input
embedding gets its own bf16 copy (+2 bytes a parameter) and the embedding keeps its float32
weight, because the embedding lookup is not autocast. Trainable parameters (LoRA factors, heads)
stay float32.

It also switches a transformers model's attention to the ``eager`` implementation: on this CPU
(torch 2.13) the bf16 backward of ``scaled_dot_product_attention`` took 0.73 s of a 6.6 s SmolLM2
step, eager's matmul + softmax a third of that (``benchmarks/bench_causal_step.py``). Eager
attention rounds differently from SDPA (bf16 scores, float32 softmax), within bf16 precision.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["autocast", "grad_scaler", "prepare_half_", "stores_half"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` of ``device``'s type in ``precision``'s dtype; a null context for fp32."""
    dtype = _DTYPES.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A ``torch.amp.GradScaler`` for fp16 (``None`` otherwise: bf16 keeps float32's exponent range)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def stores_half(device: torch.device, precision: str) -> bool:
    """Whether frozen Linear weights are stored in bf16 (:func:`prepare_half_`): bf16 on the CPU only,
    where autocast re-casts them at every call; on a GPU the cast is cheap next to the matmul."""
    return precision == "bf16" and device.type == "cpu"


def prepare_half_(model: nn.Module, dtype: torch.dtype = torch.bfloat16, *, eager_attention: bool = True) -> int:
    """Store frozen Linear weights in ``dtype`` (untying a tied head); eager attention.

    Call it on a model that will only run under ``torch.autocast(dtype=dtype)``: outside autocast a
    float32 input would meet a bf16 weight.

    Returns:
        The number of weights cast.
    """
    cast = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype == dtype:
            continue
        # a new tensor: an embedding that shared this weight keeps its float32 one
        module.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
        cast += 1
    if eager_attention:
        from transformers import PreTrainedModel

        for module in model.modules():
            if isinstance(module, PreTrainedModel):  # the outermost one; its config is shared
                module.set_attn_implementation("eager")
                break
    return cast


_SLOWDOWN: float | None = None


def bf16_matmul_slowdown() -> float:
    """How many times slower a bf16 GEMM is than a float32 one on this CPU (measured once, ~0.1 s).

    Where oneDNN has no fast bf16 kernel for the CPU, bf16 autocast is not 2x faster but 5-40x
    slower (seen on another host of the same cloud, docs/results/real-models.md); specs that turn
    ``train.bf16`` on check this first.
    """
    global _SLOWDOWN
    if _SLOWDOWN is None:
        import time

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(512, 576, generator=gen)
        w = torch.randn(1536, 576, generator=gen)
        times = {}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = x.to(dtype), w.to(dtype)
            a @ b.t()  # warm-up (kernel creation)
            t0 = time.perf_counter()
            for _ in range(3):
                a @ b.t()
            times[dtype] = time.perf_counter() - t0
        _SLOWDOWN = times[torch.bfloat16] / max(times[torch.float32], 1e-9)
    return _SLOWDOWN
