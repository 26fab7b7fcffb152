"""Which LoRA init methods exist and how each is applied: :data:`INIT_METHODS`, :func:`apply_init_`.

================== ======================================================= ============ ================
method             what it does                                            rewrites W   B·A at init
================== ======================================================= ============ ================
``A``              Init[A]: A random, B = 0 (:func:`loradyn.init_lora_`)    no           0
``B``              Init[B]: A = 0, B random                                no           0
``AB``             both random: A as under Init[A], B as under Init[B]     no           random, != 0
``gaussian``       PEFT: A ~ N(0, 1/r²), B = 0                             no           0
``orthogonal``     PEFT: A, B random, A's columns ⊥ B's rows (even rank)   no           0 (to float32)
``pissa``          PEFT: s·B·A = top-r SVD part of W; W -= s·B·A           yes          != 0, output same
``pissa_niter_K``  as pissa with a randomised SVD, K power iterations      yes          != 0, output same
``olora``          PEFT: B = Q[:, :r], A = R[:r] (QR of W); W -= s·B·A     yes          != 0, output same
================== ======================================================= ============ ================

**Init[AB]** follows the idea of arXiv 2505.23194 ("Beyond Zero Initialization"): initialise both
factors non-zero, which the paper finds makes LoRA more robust to small learning rates, and do not
compensate the random product in the base weight (its abstract: the noise "generally does not
affect fine-tuning performance"). The variances are loradyn's choice, not taken from the paper:
A is drawn exactly as under Init[A] and B exactly as under Init[B] (``distribution``, ``std_a``,
``std_b`` as in :mod:`loradyn.init`). With the default ``kaiming_uniform``: Var(A) = 1/(3·in),
Var(B) = 1/(3·r), so each entry of B·A has variance r·Var(B)·Var(A) = 1/(9·in) and the adapter adds
``s·B·A·x`` with per-coordinate variance ``s²·|x|²/(9·in)`` to a layer's output (``gaussian``:
Var(A) = 1/in, Var(B) = 1/r, B·A entries 1/in).

**PEFT's methods** run PEFT's own per-layer code (``LoraLayer.reset_lora_parameters`` /
``pissa_init`` / ``olora_init`` / ``orthogonal_init``, peft 0.21) for the one adapter, Linear and
Conv1D layers only (``gaussian`` also embeddings, where PEFT sets A = 0, B ~ N(0, 1)). They draw
from torch's global RNG, so :func:`apply_init_` runs them under ``torch.manual_seed(seed)`` inside
``torch.random.fork_rng`` (the caller's RNG state is untouched); ``pissa`` and ``olora`` are
deterministic. The factors keep their parameter objects, dtype and device. For the methods that
rewrite the base weight W, loradyn recomputes the residual ``W - s·B·A`` from the original W and
the final factors in float64 for float64 models (PEFT refuses float64; its SVD/QR then runs on a
float32 copy) and in float32 otherwise, so the model's output at init is unchanged up to rounding.
Such methods cannot share a base model with other adapters (a multi-adapter pack).

**Saving** (:func:`loradyn.peft_save.save_peft_adapter`): an adapter over an untouched base (A, B,
AB, gaussian, orthogonal) is PEFT's plain ``save_pretrained``; one over a rewritten base goes through PEFT's
conversion (``save_pretrained(..., path_initial_model_for_weight_conversion=...)``), which stores
``[A | A0]``, ``[B | -B0]`` at rank 2r, so the file applies to the ORIGINAL base weights.
"""

from __future__ import annotations

import contextlib
import re
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import LoradynError

if TYPE_CHECKING:  # the names part of this module stays torch-free (LoraSpec validates with it)
    import torch
    from torch import nn

__all__ = [
    "INIT_METHODS",
    "apply_init_",
    "capture_initial_state",
    "check_init_method",
    "is_peft_method",
    "modifies_base",
]

#: The init methods; ``pissa_niter_<K>`` stands for ``pissa_niter_1``, ``pissa_niter_2``, ...
INIT_METHODS = ("A", "B", "AB", "gaussian", "pissa", "pissa_niter_<K>", "olora", "orthogonal")
_LORADYN = ("A", "B", "AB")
_FIXED = (*_LORADYN, "gaussian", "pissa", "olora", "orthogonal")
_NITER = re.compile(r"pissa_niter_[1-9][0-9]*")


def check_init_method(method: Any) -> str:
    """The method's name (``InitScheme.A`` -> ``"A"``); one LoradynError line for an unknown one."""
    name = method.value if isinstance(method, Enum) else method
    if isinstance(name, str) and (name in _FIXED or _NITER.fullmatch(name)):
        return str(name)
    raise LoradynError(
        f"unknown init method {method!r}: use A, B, AB, gaussian, pissa, pissa_niter_<K> (K >= 1), olora or orthogonal"
    )


def is_peft_method(method: Any) -> bool:
    """True for the methods applied by PEFT's own code (all but A, B and AB)."""
    return check_init_method(method) not in _LORADYN


def modifies_base(method: Any) -> bool:
    """True for the methods that rewrite the base weight (pissa, pissa_niter_K, olora).

    Adapters that share one base model (a multi-adapter pack) cannot each rewrite it.
    """
    name = check_init_method(method)
    return name in ("pissa", "olora") or bool(_NITER.fullmatch(name))


# --- applying -------------------------------------------------------------------------------------

def _seed(generator: Any) -> int | None:
    import torch

    from .init import make_generator

    if generator is None:
        return None
    gen = make_generator(generator)  # validates
    if isinstance(generator, int):
        return int(generator)
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))


@contextlib.contextmanager
def _seeded(model: nn.Module, seed: int | None):
    """torch's global RNG (CPU and the model's CUDA devices) seeded with ``seed``, restored afterwards."""
    import torch

    if seed is None:
        yield
        return
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


def _check_handles(handles: list, method: str, force: bool) -> None:
    for h in handles:
        where = h.qualname
        if h.source != "peft":
            raise LoradynError(f"init {method!r} is PEFT's: build the model with peft.get_peft_model ({where} is loradyn's)")
        if h.magnitude is not None or getattr(h.module, "lora_variant", {}).get(h.adapter) is not None:
            raise LoradynError(f"init {method!r} is not supported with DoRA or other LoRA variants ({where})")
        if h.kind == "embedding" and method != "gaussian":
            raise LoradynError(f"PEFT has no {method!r} init for embedding layers ({where}): target Linear layers only")
        if method == "olora" and h.fan_in_fan_out:
            raise LoradynError(f"PEFT's olora does not handle Conv1D (fan_in_fan_out) layers ({where})")
        if bool(getattr(h.module, "merged", False)):
            raise LoradynError(f"LoRA adapter {where} is merged: unmerge it before re-initialising")
        if not force and not h.delta_is_zero():
            raise LoradynError(
                f"LoRA adapter {where} has B @ A != 0 (trained, or a non-zero init); "
                "re-initialising would change the model's function: pass force=True to do it anyway"
            )
        if modifies_base(method):
            others = sorted(a for a in (*h.module.lora_A, *getattr(h.module, "lora_embedding_A", {})) if a != h.adapter)
            if others:
                raise LoradynError(
                    f"init {method!r} rewrites the base weight of {h.name}, which adapter(s) {', '.join(others)} "
                    "share: give a base-rewriting adapter its own model (its own pack)"
                )


def _restore(module: nn.Module, old: nn.Parameter, dtype: torch.dtype, device: torch.device) -> None:
    """Put PEFT's new values into the original Parameter object, in its original dtype and device."""
    values = module.weight.detach().to(device=device, dtype=dtype).contiguous()
    if module.weight is not old:
        module.weight = old
    old.data = values


def _peft_init_layer(h: Any, method: str) -> None:
    import torch

    layer, adapter = h.module, h.adapter
    if h.kind == "embedding":  # gaussian only: PEFT re-draws A = 0, B ~ N(0, 1) in place
        layer.reset_lora_parameters(adapter, "gaussian")
        return
    mods = (layer.lora_A[adapter], layer.lora_B[adapter])
    olds = [(m.weight, m.weight.dtype, m.weight.device) for m in mods]
    base = h.base_layer
    rewrite = modifies_base(method)
    w0 = base.weight.detach().clone() if rewrite else None
    if rewrite and w0.dtype == torch.float64:
        base.weight.data = w0.float()  # PEFT's pissa/olora refuse float64; their SVD/QR run in float32 anyway
    try:
        if method == "gaussian":
            layer.reset_lora_parameters(adapter, "gaussian")
        elif method == "orthogonal":
            layer.orthogonal_init(adapter)
        elif method == "olora":
            layer.olora_init(adapter)
        else:
            layer.pissa_init(adapter, method)
    except (TypeError, ValueError, RuntimeError) as err:
        if rewrite:
            base.weight.data = w0
        message = " ".join(str(err).split())[:200]
        raise LoradynError(f"PEFT's {method!r} init failed on {h.qualname}: {message}") from None
    for m, (old, dtype, device) in zip(mods, olds):
        _restore(m, old, dtype, device)
    if rewrite:
        compute = torch.float64 if w0.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            delta = h.scaling * (h.lora_B.detach().to(compute) @ h.lora_A.detach().to(compute))
            base.weight.data = (w0.to(compute) - (delta.T if h.fan_in_fan_out else delta)).to(w0.dtype)


def apply_init_(
    model: nn.Module,
    method: str,
    *,
    adapter: str | None = "default",
    generator: torch.Generator | int | None = None,
    std_a: float | None = None,
    std_b: float | None = None,
    distribution: str = "kaiming_uniform",
    force: bool = False,
) -> int:
    """Initialise the LoRA pairs of ``adapter`` with ``method`` (see the module docstring), in place.

    Args:
        model: a ``PeftModel`` (every method) or a model with loradyn layers (A, B, AB).
        method: one of :data:`INIT_METHODS` (``pissa_niter_4`` etc.).
        adapter: the adapter to initialise (``None``: every adapter). A pack adapter is drawn as
            the same adapter of a solo model with the same seed.
        generator: an int seed or ``torch.Generator`` (``None``: torch's global RNG). A, B and AB
            draw from it (:func:`loradyn.init_lora_`); PEFT's methods run under
            ``torch.manual_seed(seed)`` (an int is the seed; a generator gives one draw).
        std_a, std_b, distribution: as for :func:`loradyn.init_lora_`; A, B and AB only.
        force: re-initialise adapters whose ``B @ A`` is non-zero.

    Returns:
        The number of LoRA pairs initialised.

    Raises:
        LoradynError: an unknown method, options a method does not take, a layer PEFT's method
            cannot handle (embeddings, DoRA, a base shared with other adapters for pissa/olora), or
            an adapter with ``B @ A != 0`` without ``force``; nothing is changed then.

    A base-rewriting method records the adapter's initial factors (:func:`capture_initial_state`)
    on ``model``, which :func:`loradyn.peft_save.save_peft_adapter` uses to save for the original base.
    """
    from .discover import iter_lora_layers
    from .init import init_lora_

    name = check_init_method(method)
    store = model.__dict__.setdefault("_loradyn_initial_state", {})
    if name in _LORADYN:
        count = init_lora_(model, name, std_a=std_a, std_b=std_b, distribution=distribution, generator=generator,
                           force=force, adapter=adapter)
        for key in list(store) if adapter is None else [adapter]:
            store.pop(key, None)
        return count
    if std_a is not None or std_b is not None or distribution != "kaiming_uniform":
        raise LoradynError(f"init {name!r} is PEFT's with its own distribution: std_a, std_b and distribution are for A, B, AB")
    handles = list(iter_lora_layers(model))
    if not handles:
        raise LoradynError("no LoRA layers found in the model: wrap it with peft.get_peft_model(...) first")
    adapters = sorted({h.adapter for h in handles})
    if adapter is not None:
        handles = [h for h in handles if h.adapter == adapter]
        if not handles:
            raise LoradynError(f"no LoRA layers of adapter {adapter!r} in the model; its adapters: {', '.join(adapters)}")
    _check_handles(handles, name, force)
    with _seeded(model, _seed(generator)):
        for h in handles:
            _peft_init_layer(h, name)
    for a in sorted({h.adapter for h in handles}):
        if modifies_base(name):
            store[a] = capture_initial_state(model, a)
        else:
            store.pop(a, None)
    return len(handles)


# --- the initial state, for saving (loradyn.peft_save) ------------------------------------------

def capture_initial_state(model: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Copies of ``adapter``'s LoRA factors now, keyed as PEFT saves them (``<module>.lora_A.weight``).

    Take it right after initialising an adapter with a base-rewriting method (``apply_init_`` does
    it for you) and pass it to :func:`loradyn.peft_save.save_peft_adapter` as ``initial_state``.
    """
    from .discover import iter_lora_layers

    state = {}
    for h in iter_lora_layers(model):
        if h.adapter == adapter and h.kind == "linear":
            state[f"{h.name}.lora_A.weight"] = h.lora_A.detach().clone()
            state[f"{h.name}.lora_B.weight"] = h.lora_B.detach().clone()
    if not state:
        raise LoradynError(f"no PEFT LoRA Linear layers of adapter {adapter!r} in the model")
    return state
