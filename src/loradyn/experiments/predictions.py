"""What the theory predicts for the synthetic toy an experiment runs (docs/theory.md §5.2, §5.3, §6).

The papers state their exponents for the hidden features; the toy is scored on its output. Which
exponents the *loss-optimal* learning rate follows depends on the readout (docs/theory.md §5.2):

* ``sp`` readout (W_out ~ N(0, 1/n)), with a shared or an independent teacher readout: sign-like
  Adam updates line up with W_out and reach the output amplified by n^1/2 — the exponents derived
  here for the toy (η*_A ∝ n^-3/4, η*_B ∝ n^-1·r^-1/2, full finetuning ∝ n^-3/2, λ* ∝ n^1/2, Z_A ∝ n^1/4);
* ``mup`` readout (W_out ~ N(0, 1/n²)) with an independent teacher: no amplification; Init[A] and
  full finetuning follow the papers, Init[B] does not (its feature change, incoherent with the
  readout, is damped by n^-1/2 before it reaches the loss: η*_B ∝ n^-1/2·r^-1/2);
* ``mup`` readout with the shared teacher: rescaling a shared readout rescales the loss only, so
  Adam's trajectory (ε aside) and every exponent are those of ``sp``.

The model form (``hidden`` or ``residual``) changes none of them: the adapter's input φ(W_in x) and
the frozen pre-activation are Θ(1) per coordinate in both (§7). The coordinate check's exponents
(:func:`coord_exponent`) are feature-level and hold for every readout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COORD_LR_EXPONENT",
    "Prediction",
    "coord_exponent",
    "difference",
    "full_ft_width_exponent",
    "lr_rank_exponent",
    "lr_width_exponent",
    "ratio_width_exponent",
    "regime",
    "regime_note",
    "resolved_task",
    "z_a_width_exponent",
]

HG = "arXiv 2406.08447"
PLUS = "arXiv 2402.12354"
MUA = "arXiv 2602.06204"
THEORY = "docs/theory.md"

#: the papers' width exponent of the learning rate, around which the coordinate check varies γ
COORD_LR_EXPONENT = {"A": -0.5, "B": -1.0}


@dataclass(frozen=True)
class Prediction:
    """A predicted exponent: ``value``, whether it is ``published`` or ``derived here``, where it comes
    from, and the papers' value when the toy's differs from it."""

    value: float
    status: str
    source: str
    published: float | None = None

    def label(self) -> str:
        base = f"{self.status}, {self.source}"
        if self.published is not None and self.published != self.value:
            return f"{base}; the papers: {self.published:+g}"
        return base


def _task(task: Any) -> Mapping[str, Any]:
    if isinstance(task, Mapping):
        return task
    return {k: getattr(task, k) for k in ("readout", "teacher_readout", "form")}


def regime(task: Any) -> str:
    """``"sp"`` (the readout amplifies aligned updates: sp, or a shared teacher) or ``"mup"`` (μP
    readout with an independent teacher)."""
    t = _task(task)
    return "mup" if t.get("readout", "sp") == "mup" and t.get("teacher_readout", "shared") == "independent" else "sp"


def regime_note(task: Any) -> str:
    t = _task(task)
    form = t.get("form", "hidden")
    if regime(t) == "mup":
        return (f"{form} form, μP readout N(0, 1/n²) with an independent teacher: no readout amplification "
                f"({THEORY} §5.3)")
    shared = " (a shared μP readout rescales the loss only: the sp exponents apply)" if t.get("readout") == "mup" else ""
    return f"{form} form, readout amplifies Adam's aligned updates by n^1/2 ({THEORY} §5.2){shared}"


def _pick(task: Any, published: float, source: str, sp: float, mup: float) -> Prediction:
    value = sp if regime(task) == "sp" else mup
    section = "§5.2" if regime(task) == "sp" else "§5.3"
    if value == published:
        return Prediction(value, "published", source)
    return Prediction(value, "derived here", f"{THEORY} {section}", published)


def lr_width_exponent(init: str, task: Any) -> Prediction:
    """Exponent of the loss-optimal lr in the width n (lr_b = lr_a, fixed rank)."""
    if init == "A":
        return _pick(task, -0.5, HG, -0.75, -0.5)
    return _pick(task, -1.0, HG, -1.0, -0.5)


def z_a_width_exponent(init: str, task: Any) -> Prediction:
    """Exponent of RMS(Z_A) in n, each init at its own loss-optimal lr."""
    if init == "A":
        return _pick(task, 0.5, HG, 0.25, 0.5)
    return _pick(task, 0.0, HG, 0.0, 0.5)


def lr_rank_exponent(init: str, alpha_rule: str, task: Any) -> Prediction:
    """Exponent of the loss-optimal lr in the rank r (μA: Init[A] −(1−γ)/2 for α = r^-γ; Init[B], α = 1: 0)."""
    if init == "A":
        value = {"1": -0.5, "1/sqrt(r)": -0.25, "1/r": 0.0}[alpha_rule]
        return Prediction(value, "published", MUA)
    if alpha_rule != "1":
        raise ValueError("rank predictions for Init[B] are given for α = 1 only")
    return _pick(task, 0.0, MUA, -0.5, -0.5)


def full_ft_width_exponent(task: Any) -> Prediction:
    """Exponent of full finetuning's loss-optimal lr in n (μP's hidden-weight rule, arXiv 2203.03466)."""
    return _pick(task, -1.0, "arXiv 2203.03466, 2602.06204", -1.5, -1.0)


def ratio_width_exponent(init: str, task: Any) -> Prediction:
    """Exponent of the optimal LoRA+ ratio λ* = lr_b/lr_a in n."""
    if init == "A":
        return _pick(task, 1.0, PLUS, 0.5, 1.0)
    return _pick(task, 1.0, PLUS, 0.5, 0.0)


def coord_exponent(init: str, feature: str, offset: float) -> Prediction:
    """Exponent in n of a coordinate-check feature (t ≥ 2, widths where η·n ≫ 1) at lr ∝ n^(γ + offset),
    γ = :data:`COORD_LR_EXPONENT` (docs/theory.md §5.4). Init[A]: Z_A ∝ n^(1+γ), every Z_B quantity
    ∝ n^(2γ+1) (both factors move by η·(η·n)); Init[B]: Z_A, Z_B, ΔZ_B and A's part ∝ n^(1+γ)
    (B0·ΔA·x), B's part and the cross term ∝ n^(2γ+1)."""
    gamma = COORD_LR_EXPONENT[init] + offset
    grow = 1.0 + gamma
    both = 2.0 * gamma + 1.0
    if init == "A":
        value = grow if feature == "z_a" else both
    else:
        value = both if feature in ("dz_b_b", "dz_b_ab") else grow
    published = offset == 0.0 and feature in (("z_a", "dz_b", "dz_b_a", "dz_b_b") if init == "A" else
                                              ("z_a", "dz_b", "dz_b_b"))
    if published:
        return Prediction(value, "published", HG)
    return Prediction(value, "derived here", f"{THEORY} §5.4")


def difference(a: Prediction, b: Prediction) -> Prediction:
    """The prediction of a log-ratio's exponent (a's minus b's): derived here when either is."""
    pub_a = a.value if a.published is None else a.published
    pub_b = b.value if b.published is None else b.published
    if a.status == b.status == "published":
        return Prediction(a.value - b.value, "published", a.source)
    source = a.source if a.status == "derived here" else b.source
    return Prediction(a.value - b.value, "derived here", source, pub_a - pub_b)


def resolved_task(base: Mapping[str, Any], overrides: Any = ()) -> dict[str, Any]:
    """The ``task`` section of a synthetic base configuration with the run's dotted overrides applied."""
    from ..overrides import apply_overrides

    return dict(apply_overrides(base, tuple(overrides)).get("task", {}))
