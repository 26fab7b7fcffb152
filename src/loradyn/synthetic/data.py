"""Teacher, data and the frozen parts of the synthetic model, drawn from explicit seeds.

Every random tensor has its own named stream, seeded by a hash of ``(stream, seed)``
(:func:`stream_generator`), so the same seed gives the same teacher, data and student init in any
process, whatever else is drawn (with or without W*, any dtype, any pack). Draws are made on the
CPU in float64, rounded to the run's dtype and only then moved to the run's device
(``train.device``), so every device starts from the same numbers.

The frozen parts ``H = φ(x W_inᵀ)`` (the adapter's input) and ``G`` (the frozen part of the hidden
pre-activation: ``H W*ᵀ`` in the ``hidden`` form, ``Z = x W_inᵀ`` in the ``residual`` form), train and
test, and the teacher's targets are computed once per (task, data seed, dtype, device), on the
device, and kept in a small per-process cache (:func:`frozen_parts`), so consecutive packs in one
worker share them too. The engine only ever sees ``P = G + α·Z_A·Bᵀ``, so both forms train with
the same code.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..init import init_pair_
from .spec import SyntheticSpec, SyntheticTaskSpec

__all__ = ["FrozenParts", "clear_cache", "frozen_parts", "init_student", "stream_generator", "teacher_weights"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_CACHE: OrderedDict[tuple, FrozenParts] = OrderedDict()
_CACHE_SIZE = 2


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named random stream of ``seed`` (stable across processes)."""
    digest = hashlib.sha256(f"loradyn.synthetic:{stream}:{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _normal(shape: tuple[int, ...], std: float, seed: int, stream: str) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.float64)
    return out.normal_(0.0, std, generator=stream_generator(seed, stream))


def teacher_weights(task: SyntheticTaskSpec, data_seed: int) -> dict[str, torch.Tensor]:
    """The frozen network and the teacher's adapter, float64.

    ``w_in`` (n, d) ~ N(0, 1/d); ``w_star`` (n, n) ~ N(0, 1/n) (``hidden`` form only); ``w_out``
    (d_out, n) ~ N(0, 1/n) (``readout=sp``) or the same draw times n^-1/2, i.e. N(0, 1/n²)
    (``mup``); ``w_out_teacher`` (d_out, n): ``w_out`` itself (``teacher_readout=shared``) or its own
    draw ~ N(0, 1/n) (``independent``); ``a_star`` (r*, n) ~ N(0, 1/n); ``b_star`` (n, r*) ~ N(0, 1/r*);
    ``x_train`` (N, d) and ``x_test`` (N_test, d) ~ N(0, 1).
    """
    n, d, r = task.width, task.d_in, task.teacher_rank
    w_out = _normal((task.d_out, n), n**-0.5, data_seed, f"w_out:{n}:{task.d_out}")
    if task.readout == "mup":
        w_out.mul_(n**-0.5)
    w = {
        "w_in": _normal((n, d), d**-0.5, data_seed, f"w_in:{n}:{d}"),
        "w_out": w_out,
        "a_star": _normal((r, n), n**-0.5, data_seed, f"a_star:{n}:{r}"),
        "b_star": _normal((n, r), r**-0.5, data_seed, f"b_star:{n}:{r}"),
        "x_train": _normal((task.n_train, d), 1.0, data_seed, f"x_train:{d}"),
        "x_test": _normal((task.n_test, d), 1.0, data_seed, f"x_test:{d}"),
    }
    if task.teacher_readout == "independent":
        w["w_out_teacher"] = _normal((task.d_out, n), n**-0.5, data_seed, f"w_out_teacher:{n}:{task.d_out}")
    else:
        w["w_out_teacher"] = w_out
    if task.form == "hidden":
        w["w_star"] = _normal((n, n), n**-0.5, data_seed, f"w_star:{n}")
    return w


@dataclass
class FrozenParts:
    """Everything a pack needs that does not depend on the trained adapter (run dtype).

    Attributes:
        h_train, h_test: ``φ(x W_inᵀ)``, (N, n) and (N_test, n): the adapter's input.
        g_train, g_test: the frozen part of the hidden pre-activation, ``H W*ᵀ`` (``hidden`` form)
            or ``x W_inᵀ`` (``residual`` form).
        y_train, y_test: the teacher's outputs, (N, d_out) and (N_test, d_out).
        w_out: (d_out, n).
        w_star: (n, n), kept only when full finetuning needs it.
        w_star_norm: ``‖W*‖_F`` (``hidden`` form; None in the ``residual`` form): the scale of the
            alarm's update size (:mod:`loradyn.alarm`).
    """

    h_train: torch.Tensor
    h_test: torch.Tensor
    g_train: torch.Tensor | None
    g_test: torch.Tensor | None
    y_train: torch.Tensor
    y_test: torch.Tensor
    w_out: torch.Tensor
    w_star: torch.Tensor | None = None
    w_star_norm: float | None = None


def _build(task: SyntheticTaskSpec, data_seed: int, dtype: torch.dtype, keep_w_star: bool,
           device: torch.device) -> FrozenParts:
    w = teacher_weights(task, data_seed)
    # rounded on the CPU, then moved; popping frees each float64 draw (n² of them for W*) at once
    cast = {k: _moved(w.pop(k).to(dtype), device) for k in list(w)}
    parts: dict[str, torch.Tensor | None] = {}
    for split in ("train", "test"):
        z = cast[f"x_{split}"] @ cast["w_in"].T
        h = torch.relu(z)
        g = h @ cast["w_star"].T if task.form == "hidden" else z
        p_star = (h @ cast["a_star"].T) @ cast["b_star"].T + g
        parts[f"h_{split}"], parts[f"g_{split}"] = h, g
        parts[f"y_{split}"] = torch.relu(p_star) @ cast["w_out_teacher"].T
    w_star = cast.get("w_star") if keep_w_star else None
    norm = float(torch.linalg.vector_norm(cast["w_star"], dtype=torch.float64)) if "w_star" in cast else None
    return FrozenParts(**parts, w_out=cast["w_out"].contiguous(), w_star=w_star, w_star_norm=norm)


def _moved(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor if device.type == "cpu" else tensor.to(device)


def frozen_parts(config: SyntheticSpec, *, keep_w_star: bool = False,
                 device: torch.device | str = "cpu") -> FrozenParts:
    """The frozen parts for ``config``'s task, data seed and dtype on ``device`` (cached per process)."""
    task = config.task
    device = torch.device(device)
    key = (
        task.width, task.d_in, task.d_out, task.n_train, task.n_test, task.teacher_rank,
        task.form, task.readout, task.teacher_readout, config.data_seed, config.train.dtype, str(device),
    )
    hit = _CACHE.get(key)
    if hit is not None and (hit.w_star is not None or not keep_w_star or task.form != "hidden"):
        _CACHE.move_to_end(key)
        return hit
    _CACHE.pop(key, None)
    while len(_CACHE) >= _CACHE_SIZE:
        _CACHE.popitem(last=False)
    parts = _build(task, config.data_seed, _DTYPES[config.train.dtype], keep_w_star, device)
    _CACHE[key] = parts
    return parts


def clear_cache() -> None:
    """Drop the per-process cache of frozen parts."""
    _CACHE.clear()


def init_student(config: SyntheticSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's ``lora_A`` (r, n) and ``lora_B`` (n, r) at init, in the run dtype.

    Drawn in float64 from the trial seed's ``student`` stream with :func:`loradyn.init.init_pair_`
    (Init[A]: A random, B = 0; Init[B]: A = 0, B random), then rounded.
    """
    n, r = config.task.width, config.lora.rank
    a = torch.empty(r, n, dtype=torch.float64)
    b = torch.empty(n, r, dtype=torch.float64)
    init_pair_(
        a, b, config.lora.init, fan_in=n, std_a=config.lora.std_a, std_b=config.lora.std_b,
        distribution=config.lora.distribution, generator=stream_generator(config.seed, f"student:{n}:{r}"),
    )
    dtype = _DTYPES[config.train.dtype]
    return a.to(dtype), b.to(dtype)
