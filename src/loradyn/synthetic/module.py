"""The synthetic student as a torch ``nn.Module`` with a loradyn LoRA layer, for tools that need a
model rather than the batched engine (the coordinate check, :func:`loradyn.coord_check`).

:func:`make_model` returns a factory ``(width, seed) -> (student, batch)`` for one configuration of
the synthetic family (any form, readout, init, α rule; docs/theory.md §7). The student's forward is
the engine's for one configuration, with autograd::

    P = G + α·(H·Aᵀ)·Bᵀ,   f = φ(P)·W_outᵀ,   loss = mean((f − y)²)

with H = φ(W_in x) (the adapter's input) and the frozen pre-activation G (H·W*ᵀ in the ``hidden``
form, W_in x in the ``residual`` form) precomputed once by :func:`~loradyn.synthetic.frozen_parts`, so
the n × n product is never redone. It uses the same draws (:func:`~loradyn.synthetic.init_student`)
and ``train.device``, so Adam on it follows the engine's trajectory (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..layers import LoRALinear
from ..serialize import spec_from_dict
from ..tasks.device import check_device
from .data import frozen_parts, init_student
from .spec import SyntheticSpec

__all__ = ["SyntheticStudent", "make_model", "student_loss"]


class _GivenBaseLoRA(LoRALinear):
    """A LoRA layer whose base output is given (the precomputed G), not computed from its input.

    Its base layer lives on the ``meta`` device (no n × n storage); ``lora_A`` is called as a module,
    so hooks and :func:`loradyn.iter_lora_layers` see an ordinary loradyn pair. Not mergeable.
    """

    def forward(self, h: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z_a = self.lora_A(h)
        return torch.addmm(base_out, z_a, self.lora_B.weight.T, alpha=self.scaling)


class SyntheticStudent(nn.Module):
    """``f = φ(G + α·B·A·H)·W_outᵀ`` for a batch ``{"h": H, "g": G, "y": targets}``.

    Attributes:
        hidden: the LoRA pair (``hidden.lora_A``: r × n, ``hidden.lora_B``: n × r, ``hidden.scaling`` = α).
        w_out: the frozen readout (d_out × n), a buffer.
    """

    def __init__(self, w_out: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float) -> None:
        super().__init__()
        rank, n = lora_a.shape
        base = nn.Linear(n, n, bias=False, device="meta")
        self.hidden = _GivenBaseLoRA(base, rank=rank, alpha=float(alpha) * rank, dtype=lora_a.dtype)
        self.hidden.scaling = float(alpha)
        self.hidden.lora_A.weight = nn.Parameter(lora_a.clone())
        self.hidden.lora_B.weight = nn.Parameter(lora_b.clone())
        self.register_buffer("w_out", w_out)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.relu(self.hidden(batch["h"], batch["g"])) @ self.w_out.T


def student_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The synthetic family's loss: mean squared error against ``batch["y"]``."""
    return (model(batch) - batch["y"]).square().mean()


def make_model(config: SyntheticSpec | Mapping[str, Any]) -> Callable[[int, int], tuple[SyntheticStudent, dict]]:
    """A factory ``(width, seed) -> (student, batch)`` for ``config`` with ``task.width`` and ``seed``
    replaced (``task.data_seed``, if set, keeps the teacher and data fixed across seeds).

    ``lora.method`` must be ``lora``; the batch is the training split (H, G, targets) on
    ``train.device`` in ``train.dtype``.
    """
    spec = config if isinstance(config, SyntheticSpec) else spec_from_dict(SyntheticSpec, dict(config))
    if spec.lora.method != "lora":
        from ..errors import SpecError

        raise SpecError("the synthetic student module trains a LoRA pair: lora.method must be 'lora'")
    device = check_device(spec.train.device)

    def build(width: int, seed: int) -> tuple[SyntheticStudent, dict]:
        cfg = dataclasses.replace(spec, task=dataclasses.replace(spec.task, width=int(width)), seed=int(seed))
        frozen = frozen_parts(cfg, device=device)
        a, b = init_student(cfg)
        model = SyntheticStudent(frozen.w_out, a.to(device), b.to(device), cfg.lora.alpha)
        return model, {"h": frozen.h_train, "g": frozen.g_train, "y": frozen.y_train}

    return build
