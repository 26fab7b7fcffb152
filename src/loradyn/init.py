"""Init[A] and Init[B], the two zero-product LoRA initializations (arXiv 2406.08447), and Init[AB].

This module is the only place where the initialization math lives.

* **Init[A]** (``scheme="A"``; PEFT's default): ``lora_B = 0``, ``lora_A`` random.
* **Init[B]** (``scheme="B"``; the LoRA+ authors' default): ``lora_A = 0``, ``lora_B`` random.
* **Init[AB]** (``scheme="AB"``; the idea of arXiv 2505.23194): both random, A drawn as under
  Init[A] and B as under Init[B], so ``B @ A != 0`` and the model does NOT start from the
  pretrained function (the base weight is left as it is). The variances are loradyn's choice
  (see :mod:`loradyn.init_methods`).

Both start from the pretrained function (``B @ A = 0``) but train differently: Init[A] admits
learning rates ``∝ n^-1/2`` in width n at the price of internal instability (``Z_A = A x`` grows
``∝ n^1/2``); Init[B] is internally stable but needs ``lr ∝ n^-1`` and leaves B undertrained.

Default distributions (``fan_in`` of A is ``in_features``; 1 for embeddings, whose input is
one-hot; ``fan_in`` of B is the rank r):

=================== ============================================ ===============================
distribution        A under Init[A]                              B under Init[B]
=================== ============================================ ===============================
kaiming_uniform     U(±1/sqrt(in)), variance 1/(3 in) (= PEFT)    U(±1/sqrt(r)), variance 1/(3 r)
gaussian            N(0, 1/in)                                    N(0, 1/r)
=================== ============================================ ===============================

An explicit ``std_a`` / ``std_b`` keeps the distribution's family and sets its standard deviation
(a uniform draw then has bound ``sqrt(3) * std``).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Literal

import torch

from .discover import LoraHandle, iter_lora_layers
from .errors import LoradynError

__all__ = ["InitScheme", "default_std", "draw_", "init_lora_", "init_pair_", "make_generator"]

Distribution = Literal["kaiming_uniform", "gaussian"]
DISTRIBUTIONS = ("kaiming_uniform", "gaussian")


class InitScheme(str, Enum):
    """Which LoRA factor starts at zero."""

    A = "A"  # Init[A]: A random, B = 0
    B = "B"  # Init[B]: A = 0, B random
    AB = "AB"  # Init[AB]: A and B random (A as under Init[A], B as under Init[B]), B @ A != 0


def _scheme(scheme: InitScheme | str) -> InitScheme:
    try:
        return InitScheme(scheme.value if isinstance(scheme, InitScheme) else str(scheme).upper())
    except ValueError:
        raise LoradynError(
            f"unknown init scheme {scheme!r}: use 'A' (Init[A]: B=0, A random), 'B' (Init[B]: A=0, B random) or "
            "'AB' (both random); PEFT's inits (gaussian, pissa, olora, orthogonal) go through loradyn.init_methods.apply_init_"
        ) from None


def _distribution(distribution: str) -> str:
    if distribution not in DISTRIBUTIONS:
        raise LoradynError(
            f"unknown distribution {distribution!r}: use 'kaiming_uniform' or 'gaussian'"
        )
    return distribution


def make_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """An int seed becomes a fresh CPU generator; a generator or None passes through."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise LoradynError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")
    return torch.Generator().manual_seed(generator)


def default_std(fan_in: int, distribution: Distribution = "kaiming_uniform") -> float:
    """Standard deviation of the random factor for a given fan-in.

    kaiming_uniform: U(±1/sqrt(fan_in)) has std 1/sqrt(3 fan_in); gaussian: 1/sqrt(fan_in).
    """
    _distribution(distribution)
    if fan_in < 1:
        raise LoradynError(f"fan_in must be >= 1, got {fan_in}")
    return 1.0 / math.sqrt(3.0 * fan_in) if distribution == "kaiming_uniform" else 1.0 / math.sqrt(fan_in)


@torch.no_grad()
def draw_(
    tensor: torch.Tensor,
    std: float,
    distribution: Distribution = "kaiming_uniform",
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """Fill ``tensor`` in place with zero-mean draws of standard deviation ``std``.

    The draw is made on the generator's device (CPU by default) in float32 (float64 for float64
    tensors) and copied in, so the same generator gives the same values whatever the tensor's
    dtype or device. ``generator`` may be an int seed (see :func:`make_generator`).
    """
    _distribution(distribution)
    if not (std > 0 and math.isfinite(std)):
        raise LoradynError(f"std must be a finite number > 0, got {std!r}")
    generator = make_generator(generator)
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    device = generator.device if generator is not None else torch.device("cpu")
    buf = torch.empty(tensor.shape, dtype=dtype, device=device)
    if distribution == "gaussian":
        buf.normal_(0.0, std, generator=generator)
    else:
        bound = math.sqrt(3.0) * std
        buf.uniform_(-bound, bound, generator=generator)
    tensor.copy_(buf)
    return tensor


@torch.no_grad()
def init_pair_(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scheme: InitScheme | str,
    *,
    fan_in: int | None = None,
    std_a: float | None = None,
    std_b: float | None = None,
    distribution: Distribution = "kaiming_uniform",
    generator: torch.Generator | int | None = None,
) -> None:
    """Initialise one pair of raw tensors, ``lora_A`` (..., r, in) and ``lora_B`` (..., out, r).

    ``fan_in`` defaults to ``lora_A.shape[-1]`` (pass 1 for embeddings). Init[A] and Init[B] draw
    exactly one tensor from ``generator`` (a ``torch.Generator`` or an int seed; A for Init[A], B
    for Init[B]) and zero the other; Init[AB] draws A (as Init[A] does), then B (as Init[B] does).
    """
    scheme = _scheme(scheme)
    generator = make_generator(generator)
    rank = int(lora_A.shape[-2])
    if scheme is InitScheme.B:
        lora_A.zero_()
    else:
        std = std_a if std_a is not None else default_std(fan_in or int(lora_A.shape[-1]), distribution)
        draw_(lora_A, std, distribution, generator)
    if scheme is InitScheme.A:
        lora_B.zero_()
    else:
        std = std_b if std_b is not None else default_std(rank, distribution)
        draw_(lora_B, std, distribution, generator)


def _refresh_dora_magnitude(handle: LoraHandle) -> None:
    """Reset DoRA's magnitude to ||W + s·B@A|| row norms (= ||W|| when B@A = 0, i.e. not under Init[AB])."""
    mag = handle.magnitude
    if mag is None:
        return
    dora = handle.module.lora_magnitude_vector[handle.adapter]
    base_weight = handle.base_layer.weight
    # The DoRA layer's own flag decides the orientation: PEFT builds embedding DoRA layers with
    # fan_in_fan_out=True (norms per embedding dimension) although the Embedding module has no such flag.
    fan_in_fan_out = bool(getattr(dora, "fan_in_fan_out", handle.fan_in_fan_out))
    # at least float32 (half-precision norms are inaccurate), float64 for float64 models
    dtype = torch.float64 if base_weight.dtype == torch.float64 else torch.float32
    # B @ A is (out, in) (embeddings: (dim, vocab)), the orientation get_weight_norm adds it in
    lora_weight = handle.lora_B.detach().to(dtype) @ handle.lora_A.detach().to(dtype)
    if hasattr(dora, "get_weight_norm"):
        norm = dora.get_weight_norm(base_weight.to(dtype), lora_weight, handle.scaling)
    else:  # pragma: no cover - older PEFT
        weight = base_weight.T if fan_in_fan_out else base_weight
        norm = torch.linalg.norm(weight.to(dtype) + handle.scaling * lora_weight, dim=1)
    mag.data.copy_(norm.reshape(mag.shape).to(mag.dtype))


def init_lora_(
    model: torch.nn.Module,
    scheme: InitScheme | str,
    *,
    std_a: float | None = None,
    std_b: float | None = None,
    distribution: Distribution = "kaiming_uniform",
    generator: torch.Generator | int | None = None,
    force: bool = False,
    adapter: str | None = None,
) -> int:
    """Re-initialise every LoRA pair in ``model`` in place with Init[A], Init[B] or Init[AB].

    Works on loradyn's own layers and on PEFT LoRA layers (nn.Linear, Conv1D with
    ``fan_in_fan_out``, nn.Embedding's ``lora_embedding_A/B``), for every adapter. Under DoRA the
    magnitude vector is reset to the row norms of ``W + s·B @ A`` (the base weight's under Init[A]
    and Init[B]), which is what DoRA's own init gives.

    Args:
        model: a model holding LoRA layers (a ``PeftModel``, or one prepared by :func:`apply_lora`).
        scheme: ``"A"`` (B = 0, A random), ``"B"`` (A = 0, B random) or ``"AB"`` (both random,
            B @ A != 0: the model no longer computes the pretrained function).
        std_a, std_b: override the default standard deviation of the random factor.
        distribution: ``"kaiming_uniform"`` (default; PEFT-like) or ``"gaussian"`` (N(0, 1/fan_in)).
        generator: a ``torch.Generator`` or an int seed; ``None`` uses torch's default generator.
            Layers are drawn in module order, adapters in name order.
        force: re-initialise adapters whose ``B @ A`` is non-zero (trained adapters). Without it
            such adapters make the call fail before anything is changed.
        adapter: only the pairs of this adapter (e.g. one adapter of a multi-adapter pack); they
            are drawn exactly as on a model holding only this adapter, so a pack adapter and a solo
            run with the same seed start from identical weights.

    Returns:
        The number of LoRA pairs re-initialised.

    Raises:
        LoradynError: no LoRA layers, an unknown scheme/distribution, a non-zero ``B @ A`` without
            ``force=True``, or a merged adapter with a non-zero delta.

    Example:
        >>> import torch, loradyn
        >>> model = loradyn.apply_lora(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                            loradyn.LoraSpec(rank=2, target_modules=("0",)))
        >>> loradyn.init_lora_(model, "B", generator=0)
        1
    """
    scheme = _scheme(scheme)
    _distribution(distribution)
    for name, value in (("std_a", std_a), ("std_b", std_b)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise LoradynError(f"{name} must be a finite number > 0 (or None for the default), got {value!r}")
    handles = list(iter_lora_layers(model))
    if not handles:
        raise LoradynError(
            "no LoRA layers found in the model: wrap it with peft.get_peft_model(...) or loradyn.apply_lora(...) first"
        )
    if adapter is not None:
        names = sorted({h.adapter for h in handles})
        handles = [h for h in handles if h.adapter == adapter]
        if not handles:
            raise LoradynError(f"no LoRA layers of adapter {adapter!r} in the model; its adapters: {', '.join(names)}")
    for h in handles:
        nonzero = not h.delta_is_zero()
        merged = bool(getattr(h.module, "merged", False))
        if nonzero and merged:
            raise LoradynError(
                f"LoRA adapter {h.qualname!r} is merged into its base weight with B @ A != 0: "
                "unmerge it (model.unmerge_adapter() / loradyn.unmerge(model)) before re-initialising"
            )
        if nonzero and not force:
            raise LoradynError(
                f"LoRA adapter {h.qualname!r} has B @ A != 0 (trained, or both factors random); "
                "re-initialising would change the model's function: pass force=True to do it anyway"
            )
    gen = make_generator(generator)
    for h in handles:
        fan_in = 1 if h.kind == "embedding" else h.in_features
        init_pair_(
            h.lora_A, h.lora_B, scheme,
            fan_in=fan_in, std_a=std_a, std_b=std_b, distribution=distribution, generator=gen,
        )
        _refresh_dora_magnitude(h)
    return len(handles)
