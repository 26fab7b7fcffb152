"""Multi-adapter packs: K LoRA adapters trained at once on ONE shared frozen base model.

The K adapters live in one PEFT model (``peft_model.add_adapter``), each with its own A, B,
classification head (``modules_to_save``), learning rates and init. The batch is repeated K times
along the batch dimension; inside :class:`AdapterPack` every PEFT LoRA ``Linear`` layer computes
the frozen base layer once on the whole K-fold batch and adds adapter k's update to slice k only,
and every ``ModulesToSaveWrapper`` applies adapter k's copy to slice k. Adapter k therefore sees
exactly the computation of a solo run on the same batch; the K losses are summed, so each
adapter's gradient is its own loss's gradient.

PEFT's own mixed-batch path (``adapter_names=``) refuses to train, hence this module. Because the
pack still calls ``lora_A[name]`` as a module, :class:`loradyn.FeatureNormProbe` records Z_A/Z_B per
adapter (module names ``layer[adapter]``).

Differences from K solo runs (what the equality test allows for): the frozen base layers run one
GEMM over K·b rows instead of K GEMMs over b rows, which may round differently in float32;
LoRA dropout and base-model dropout draw from one stream for the whole pack (equal only with
dropout 0). DoRA and other LoRA variants are not supported.

Example:
    >>> model = peft.get_peft_model(base, config, adapter_name="t0")        # doctest: +SKIP
    >>> add_adapters(model, ["t1", "t2"], config)                           # doctest: +SKIP
    >>> with AdapterPack(model, ["t0", "t1", "t2"]) as pack:                # doctest: +SKIP
    ...     logits = model(**pack.repeat(batch)).logits                      # (3·b, ...)
    ...     losses = [loss_fn(lg, batch) for lg in pack.split(logits)]
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import LoradynError
from .optim import loraplus_param_groups

__all__ = [
    "AdapterPack",
    "add_adapters",
    "adapter_parameters",
    "pack_param_groups",
]


def _is_modules_to_save(module: nn.Module) -> bool:
    return type(module).__name__ == "ModulesToSaveWrapper" and hasattr(module, "modules_to_save")


def _is_peft_linear(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(module, "scaling", None), dict)
        and hasattr(module, "base_layer")
        and len(module.lora_A) > 0
    )


def add_adapters(model: nn.Module, names: Sequence[str], config: Any) -> None:
    """Add adapters ``names`` (same PEFT ``config``) to a PEFT model and make them all trainable."""
    for name in names:
        if name not in model.peft_config:
            model.add_adapter(name, config)
    for name in adapter_names(model):
        for param in adapter_parameters(model, name):
            param.requires_grad_(True)


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters of a PEFT model, in creation order."""
    return list(getattr(model, "peft_config", {}) or [])


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    """Every parameter that belongs to ``adapter`` (LoRA factors and its ``modules_to_save`` copies)."""
    token = f".{adapter}."
    return [p for n, p in model.named_parameters() if token in n]


def _adapter_of(name: str, adapters: Sequence[str]) -> str | None:
    hits = [a for a in adapters if f".{a}." in name]
    return hits[0] if len(hits) == 1 else None


@torch.no_grad()
def pack_param_groups(
    model: nn.Module, settings: Mapping[str, Mapping[str, float]]
) -> list[dict[str, Any]]:
    """LoRA+ param groups per adapter, for ONE optimizer over a pack.

    Each adapter gets the groups :func:`loradyn.loraplus_param_groups` gives it (``A``, ``B``,
    ``B_no_decay``...) with its own ``lr``, ``lr_ratio`` and ``weight_decay``; a group is named
    ``"<adapter>/<group>"``. Torch optimizers update every parameter independently, so one
    optimizer over these groups equals K optimizers, one per adapter.

    Args:
        model: a PEFT model holding the adapters.
        settings: adapter -> ``{"lr": ..., "lr_ratio": ..., "weight_decay": ...}``.

    Raises:
        LoradynError: a trainable parameter that belongs to no adapter of ``settings``.
    """
    adapters = list(settings)
    template = loraplus_param_groups(model, lr=1.0, lr_ratio=1.0)
    groups = []
    for adapter in adapters:
        s = settings[adapter]
        lr, ratio, wd = float(s["lr"]), float(s.get("lr_ratio", 1.0)), float(s.get("weight_decay", 0.0))
        for g in template:
            pairs = [(n, p) for n, p in zip(g["param_names"], g["params"]) if _adapter_of(n, adapters) == adapter]
            if not pairs:
                continue
            g_lr = {"A": lr, "embedding": lr, "B": lr * ratio, "B_no_decay": lr * ratio}[g["name"]]
            groups.append(
                {
                    "name": f"{adapter}/{g['name']}",
                    "params": [p for _, p in pairs],
                    "param_names": [n for n, _ in pairs],
                    "lr": g_lr,
                    "weight_decay": 0.0 if g["name"] == "B_no_decay" else wd,
                }
            )
    stray = [n for g in template for n in g["param_names"] if _adapter_of(n, adapters) is None]
    if stray:
        raise LoradynError(f"trainable parameter {stray[0]!r} belongs to no adapter of the pack; freeze it")
    return groups


class AdapterPack:
    """Route slice k of a K-fold repeated batch through adapter k (a context manager).

    Args:
        model: a PEFT model holding every adapter in ``adapters`` (LoRA Linear layers and,
            optionally, ``modules_to_save`` heads).
        adapters: the adapters of the pack, in slice order.

    Within the ``with`` block the model's batch dimension must be ``K * b``. :meth:`drop` removes a
    diverged adapter: later batches are repeated K-1 times and it no longer trains.
    """

    def __init__(self, model: nn.Module, adapters: Sequence[str]) -> None:
        adapters = list(adapters)
        if not adapters or len(set(adapters)) != len(adapters):
            raise LoradynError(f"a pack needs distinct adapter names, got {adapters!r}")
        self.model = model
        self.adapters: list[str] = adapters
        self._patched: list[nn.Module] = []
        linear = [m for m in model.modules() if _is_peft_linear(m)]
        if not linear:
            raise LoradynError("no PEFT LoRA layers in the model: build it with peft.get_peft_model first")
        for m in linear:
            missing = [a for a in adapters if a not in m.lora_A]
            if missing:
                raise LoradynError(f"adapter {missing[0]!r} is missing from a LoRA layer; add it with add_adapters")
            if getattr(m, "lora_variant", None) and any(a in m.lora_variant for a in adapters):
                raise LoradynError("packs support vanilla LoRA only (no DoRA or other LoRA variants)")
        self._linear = linear
        self._heads = [m for m in model.modules() if _is_modules_to_save(m)]

    @property
    def k(self) -> int:
        return len(self.adapters)

    # --- patching ----------------------------------------------------------------------------
    def __enter__(self) -> AdapterPack:
        if self._patched:
            raise LoradynError("this AdapterPack is already active")
        for m in self._linear:
            m.forward = types.MethodType(_make_linear_forward(self), m)
            self._patched.append(m)
        for m in self._heads:
            m.forward = types.MethodType(_make_head_forward(self), m)
            self._patched.append(m)
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self._patched:
            del m.forward  # back to the class's forward
        self._patched.clear()

    def drop(self, adapter: str) -> None:
        """Stop routing (and training) ``adapter``: its slice disappears from later batches."""
        if adapter in self.adapters:
            self.adapters.remove(adapter)
        for p in adapter_parameters(self.model, adapter):
            p.requires_grad_(False)
            p.grad = None

    # --- batches -----------------------------------------------------------------------------
    def repeat(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor of ``batch`` repeated K times along dim 0 (slice k for adapter k)."""
        return {key: _repeat(v, self.k) for key, v in batch.items()}

    def split(self, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The K slices of a pack output, in adapter order."""
        if tensor.shape[0] % self.k:
            raise LoradynError(f"batch dimension {tensor.shape[0]} is not a multiple of the pack size {self.k}")
        return tensor.chunk(self.k, dim=0)

    def _slices(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[0] % self.k:
            raise LoradynError(
                f"inside an AdapterPack the batch dimension must be a multiple of K={self.k}, got {x.shape[0]}: "
                "feed pack.repeat(batch)"
            )
        return list(x.chunk(self.k, dim=0))


def _repeat(value: Any, k: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.repeat(k, *([1] * (value.dim() - 1)))
    return value


def _make_linear_forward(pack: AdapterPack):
    def forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.merged:
            raise LoradynError("cannot train a pack with merged adapters; unmerge first")
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        deltas = []
        for name, xk in zip(pack.adapters, pack._slices(x)):
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            xk = self._cast_input_dtype(xk, lora_A.weight.dtype)
            deltas.append(lora_B(lora_A(self.lora_dropout[name](xk))) * self.scaling[name])
        return (result + torch.cat(deltas, dim=0)).to(result_dtype)

    return forward


def _make_head_forward(pack: AdapterPack):
    def forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            return self.original_module(x, *args, **kwargs)
        outs = [self.modules_to_save[name](xk, *args, **kwargs) for name, xk in zip(pack.adapters, pack._slices(x))]
        return torch.cat(outs, dim=0)

    return forward


def clip_grad_norm_per_adapter(model: nn.Module, adapters: Sequence[str], max_norm: float) -> dict[str, float]:
    """Clip each adapter's gradient to ``max_norm`` separately; returns the norms before clipping."""
    norms = {}
    for adapter in adapters:
        params = [p for p in adapter_parameters(model, adapter) if p.grad is not None]
        norms[adapter] = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else math.nan
    return norms
