"""``LoraSpec``: the frozen description of a LoRA adapter, with YAML as its serialization."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import SpecError
from .serialize import load_spec, save_spec, spec_from_dict, spec_to_dict

__all__ = ["LoraSpec", "OptimSpec"]

Distribution = Literal["kaiming_uniform", "gaussian"]


def _is_number(value: object) -> bool:
    """A real number that is not a bool (YAML's ``true`` must not pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter: ``W = W0 + scaling * lora_B @ lora_A`` with ``lora_A`` (r x in), ``lora_B`` (out x r).

    Attributes:
        rank: r >= 1.
        alpha: PEFT's ``lora_alpha``; ``scaling = alpha / rank`` (``alpha / sqrt(rank)`` with rslora).
        init: ``"A"`` = Init[A] (B = 0, A random; PEFT's default) or ``"B"`` = Init[B] (A = 0, B random).
        distribution: ``"kaiming_uniform"`` (PEFT-like; variance 1/(3 fan_in)) or ``"gaussian"``
            (N(0, 1/fan_in)). See :func:`loradyn.init_lora_`.
        std_a, std_b: explicit standard deviations that override the distribution's default.
        rslora: use ``alpha / sqrt(rank)`` scaling.
        dropout: dropout probability on the adapter input, 0 <= p < 1.
        target_modules: module-name suffixes to adapt, or ``("all-linear",)``.
    """

    rank: int = 8
    alpha: float = 8.0
    init: Literal["A", "B"] = "A"
    distribution: Distribution = "kaiming_uniform"
    std_a: float | None = None
    std_b: float | None = None
    rslora: bool = False
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise SpecError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not _is_number(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise SpecError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        if self.init not in ("A", "B"):
            raise SpecError(f"init must be 'A' (Init[A]: B=0) or 'B' (Init[B]: A=0), got {self.init!r}")
        if self.distribution not in ("kaiming_uniform", "gaussian"):
            raise SpecError(
                f"distribution must be 'kaiming_uniform' or 'gaussian', got {self.distribution!r}"
            )
        for name in ("std_a", "std_b"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not math.isfinite(value) or value <= 0):
                raise SpecError(f"{name} must be a finite number > 0 (or null for the default), got {value!r}")
        if not isinstance(self.rslora, bool):
            raise SpecError(f"rslora must be true or false, got {self.rslora!r}")
        if not _is_number(self.dropout) or not (0.0 <= self.dropout < 1.0):
            raise SpecError(f"dropout must satisfy 0 <= dropout < 1, got {self.dropout!r}")
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        else:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise SpecError("target_modules must be a non-empty list of module names (or ['all-linear'])")

    @property
    def scaling(self) -> float:
        """The forward multiplier of ``B @ A``: alpha/r, or alpha/sqrt(r) with rslora."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @classmethod
    def from_dict(cls, data: dict) -> LoraSpec:
        return spec_from_dict(cls, data)

    def to_dict(self) -> dict:
        return spec_to_dict(self)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoraSpec:
        return load_spec(cls, path, overrides)

    def to_yaml(self, path: str | Path) -> Path:
        return save_spec(self, path)


@dataclass(frozen=True)
class OptimSpec:
    """The optimizer of an experiment: Adam(W) with LoRA+ learning rates.

    ``lr_b = lr_ratio * lr_a`` (LoRA+, arXiv 2402.12354; ``lr_ratio = 1`` is plain LoRA).

    Attributes:
        name: ``"adam"`` or ``"adamw"``.
        lr_a: learning rate of ``lora_A`` (and of every other trainable matrix).
        lr_ratio: λ = lr_b / lr_a.
        betas, eps, weight_decay: the usual Adam(W) hyper-parameters.
    """

    name: Literal["adam", "adamw"] = "adam"
    lr_a: float = 1e-3
    lr_ratio: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr_a) and self.lr_a > 0):
            raise SpecError(f"optim.lr_a must be a finite number > 0, got {self.lr_a!r}")
        if not (math.isfinite(self.lr_ratio) and self.lr_ratio > 0):
            raise SpecError(f"optim.lr_ratio must be a finite number > 0, got {self.lr_ratio!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise SpecError(f"optim.betas must lie in [0, 1), got {self.betas!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise SpecError(f"optim.eps must be a finite number >= 0, got {self.eps!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise SpecError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")

    @property
    def lr_b(self) -> float:
        return self.lr_a * self.lr_ratio
