"""Where a trial runs: ``train.device`` (``auto | cpu | cuda | cuda:N | mps``) and ``train.precision``.

* :func:`check_device_syntax` — the spec-time check (no hardware is touched: a spec is data).
* :func:`resolve_device` — the :class:`torch.device` a value means *in this process*: ``auto`` is
  CUDA when there is one (the worker's visible device), else MPS when there is one, else the CPU.
* :func:`check_device` — the kind's ``validate``-time check, one line naming the fix: no CUDA, a
  CUDA index past the visible devices, no MPS, or a precision the device cannot run (bf16 where
  ``torch.cuda.is_bf16_supported()`` is false, a reduced precision that CPU autocast lacks).
* batches go to the device through the recipe (:attr:`loradyn.tasks.recipes.Recipe.device`); on the
  CPU nothing moves, so CPU runs are bit-for-bit what they were.
* :func:`oom_line` — the one line of a CUDA (or MPS) out-of-memory error.
"""

from __future__ import annotations

import functools
import gc
import warnings
from typing import Any

import torch

from ..errors import LoradynError
from .spec import DEVICES, PRECISIONS, check_device_syntax

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "check_device",
    "check_device_syntax",
    "device_name",
    "free_device_memory",
    "is_oom",
    "oom_line",
    "precision_dtype",
    "resolve_device",
]



def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``train.precision`` (``None`` for fp32: no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(value: str) -> torch.device:
    """The device ``value`` means here (``auto``: cuda, else mps, else cpu). Touches no CUDA context."""
    check_device_syntax(value)
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    return torch.device(value)


def device_name(device: torch.device) -> str:
    """``cuda:0``, ``cpu``, ``mps``: the device as messages name it."""
    if device.type == "cuda" and device.index is None:
        try:
            return f"cuda:{torch.cuda.current_device()}"
        except (RuntimeError, AssertionError):  # no CUDA runtime here (e.g. a simulated machine)
            return "cuda"
    return str(device)


@functools.cache
def _autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype)`` really runs a matmul in ``dtype`` here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "... the target dtype is not supported. Disabling autocast."
            x = torch.ones(2, 2, device=device_type)
            with torch.autocast(device_type, dtype=dtype):
                y = x @ x
            if dtype == torch.float16:  # fp16 trains with a gradient scaler
                torch.amp.GradScaler(device_type)
        return y.dtype == dtype
    except (RuntimeError, UserWarning, TypeError, ValueError, AttributeError):
        return False


def check_device(device: str, precision: str = "fp32", where: str = "train") -> torch.device:
    """The resolved device, after checking that it exists here and can run ``precision``.

    Raises:
        LoradynError: one line naming the fix.
    """
    check_device_syntax(device, f"{where}.device")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LoradynError(
                f"{where}.device={device}, but this machine has no CUDA device (torch {torch.__version__}): "
                f"use {where}.device=auto or cpu")
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise LoradynError(
                f"{where}.device={device}, but only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1}): "
                f"use {where}.device=cuda or a visible index")
    if device == "mps" and not _mps_available():
        raise LoradynError(f"{where}.device=mps, but MPS is not available on this machine: "
                           f"use {where}.device=auto or cpu")
    resolved = resolve_device(device)
    dtype = precision_dtype(precision)
    if dtype is None:
        return resolved
    if resolved.type == "cuda":
        able = precision != "bf16" or torch.cuda.is_bf16_supported()
    else:
        able = _autocast_works(resolved.type, dtype)
    if not able:
        other = "fp16 or fp32" if precision == "bf16" else "fp32"
        raise LoradynError(f"{where}.precision={precision}, but {device_name(resolved)} cannot run {precision} "
                           f"(torch {torch.__version__}): use {where}.precision={other}")
    return resolved


def is_oom(err: BaseException) -> bool:
    """A CUDA (or MPS) out-of-memory error."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def oom_line(config: Any) -> str:
    """What an out-of-memory failure of ``config``'s trial says (one line, naming the fix)."""
    task, train = config.task, config.train
    length = getattr(task, "seq_len", None) or getattr(task, "max_length", None) or "?"
    try:
        where = device_name(resolve_device(train.device))
    except LoradynError:
        where = train.device
    return (f"out of memory at batch {train.batch_size} × {length} on {where}; "
            "lower train.batch_size or raise train.grad_accum")


def free_device_memory() -> None:
    """Give cached blocks back after an out-of-memory error (the next trial starts clean)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if _mps_available() and mps is not None and hasattr(mps, "empty_cache"):
        mps.empty_cache()
