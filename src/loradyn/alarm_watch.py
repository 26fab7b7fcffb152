"""The alarm's sensors on a torch model: update sizes and probe records, per adapter.

:mod:`loradyn.alarm` decides; this module measures, on any model with loradyn or PEFT LoRA layers
(one adapter, or every adapter of a :class:`loradyn.packs.AdapterPack`):

* :class:`UpdateSizes`: per layer, ``‖scaling·(B A − B₀ A₀)‖_F / ‖W₀‖_F``, the adapter's update
  against the frozen weight, from the weights alone. ``‖B A‖_F² = Σ (BᵀB) ⊙ (A Aᵀ)`` with two
  (r, r) Gram matrices in float64 (O(r²·(in + out)) per layer, no (out, in) product); an init with
  ``B₀ A₀ ≠ 0`` (AB, PiSSA, ...) uses the stacked factors ``[B, B₀]`` and ``[A; −A₀]``. Layers
  whose frozen weight is not a floating tensor (quantized) or is zero are left out.
* :func:`layer_features`: a probe step's rows (:meth:`loradyn.FeatureNormProbe.take_rows`) as
  ``adapter -> layer -> {feature: rms}``.
* :class:`ModelWatch`: one :class:`loradyn.alarm.AlarmMonitor` per adapter, fed by both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .alarm import Alarm, AlarmMonitor, AlarmSpec
from .discover import iter_lora_layers

__all__ = ["ModelWatch", "UpdateSizes", "layer_features", "split_module"]


def split_module(module: str) -> tuple[str, str]:
    """``"layer[adapter]"`` -> ``("layer", "adapter")``; a loradyn layer's plain name -> ``(name, "default")``."""
    if module.endswith("]") and "[" in module:
        name, _, adapter = module[:-1].rpartition("[")
        return name, adapter
    return module, "default"


class UpdateSizes:
    """``‖scaling·(B A − B₀ A₀)‖_F / ‖W₀‖_F`` per LoRA layer, for the adapters given.

    The frozen weight's norm and (for inits with ``B₀ A₀ ≠ 0``) the initial factors are taken when
    this object is built: build it before training.

    Args:
        model: a model with loradyn or PEFT LoRA layers.
        adapters: the adapters to watch (None: all).
    """

    def __init__(self, model: nn.Module, adapters: Iterable[str] | None = None) -> None:
        wanted = None if adapters is None else set(adapters)
        self._items: list[tuple[str, str, Any, float, torch.Tensor | None, torch.Tensor | None]] = []
        with torch.no_grad():
            for h in iter_lora_layers(model):
                if (wanted is not None and h.adapter not in wanted) or h.lora_A.dim() != 2:
                    continue
                w = getattr(h.base_layer, "weight", None)
                if not isinstance(w, torch.Tensor) or not w.is_floating_point():
                    continue
                norm = float(torch.linalg.vector_norm(w.detach(), dtype=torch.float64))
                if not norm > 0:
                    continue
                b0 = a0 = None
                if not h.delta_is_zero():
                    b0 = h.lora_B.detach().to(torch.float64).clone()
                    a0 = h.lora_A.detach().to(torch.float64).clone()
                self._items.append((h.adapter, h.name, h, norm, b0, a0))

    def __len__(self) -> int:
        return len(self._items)

    @torch.no_grad()
    def ratios(self, adapters: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """``adapter -> layer -> ratio`` now (one device-to-host transfer for all layers)."""
        wanted = None if adapters is None else set(adapters)
        items = [it for it in self._items if wanted is None or it[0] in wanted]
        if not items:
            return {}
        values = []
        for _, _, h, norm, b0, a0 in items:
            b = h.lora_B.detach().to(torch.float64)
            a = h.lora_A.detach().to(torch.float64)
            if b0 is not None:
                b = torch.cat([b, b0.to(b.device)], dim=1)
                a = torch.cat([a, -a0.to(a.device)], dim=0)
            sq = ((b.T @ b) * (a @ a.T)).sum().clamp_min(0.0)
            values.append(sq.sqrt() * (abs(h.scaling) / norm))
        out: dict[str, dict[str, float]] = {}
        for (adapter, name, *_), value in zip(items, torch.stack([v.cpu() for v in values]).tolist()):
            out.setdefault(adapter, {})[name] = value
        return out


def layer_features(rows: Iterable[Sequence[Any]], stat: str = "rms") -> dict[str, dict[str, dict[str, float]]]:
    """``adapter -> layer -> {feature: value}`` of the ``stat`` rows among probe rows
    ``(step, module, feature, stat, value)``; a later step's value replaces an earlier one."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, module, feature, row_stat, value in rows:
        if row_stat == stat:
            name, adapter = split_module(module)
            out.setdefault(adapter, {}).setdefault(name, {})[feature] = float(value)
    return out


class ModelWatch:
    """One :class:`AlarmMonitor` per adapter of a model, fed with losses, probe rows and update sizes.

    Args:
        model: the model (its LoRA layers hold ``adapters``).
        adapters: the adapters watched (one per trial in a pack; ``["default"]`` for one PEFT adapter).
        spec: the thresholds.
    """

    def __init__(self, model: nn.Module, adapters: Sequence[str], spec: AlarmSpec) -> None:
        self.spec = spec
        self.monitors = {a: AlarmMonitor(spec) for a in adapters}
        self.updates = UpdateSizes(model, adapters) if spec.enabled and spec.update_ratio is not None else None

    def observe(self, step: int, losses: Mapping[str, float], rows: Iterable[Sequence[Any]] = (),
                live: Iterable[str] | None = None) -> dict[str, Alarm]:
        """Feed step ``step`` (its losses per adapter and the probe rows closed with it); the alarms
        that fire now, per adapter. ``live``: the adapters still training (default: all)."""
        live = [a for a in (self.monitors if live is None else live) if a in self.monitors]
        if not self.spec.enabled or not live:
            return {}
        feats = layer_features(rows)
        ratios = self.updates.ratios(live) if self.updates is not None and self.spec.checks(step) else {}
        fired = {}
        for adapter in live:
            alarm = self.monitors[adapter].check(step, loss=losses.get(adapter), features=feats.get(adapter),
                                                 updates=ratios.get(adapter))
            if alarm is not None:
                fired[adapter] = alarm
        return fired
