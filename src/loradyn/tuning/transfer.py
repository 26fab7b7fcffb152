"""Moving the proxy's optimum to the target: the μA rank rules, the width rules and the LoRA+ ratio
rule of :mod:`loradyn.scaling` (docs/theory.md §2-§6), each step recorded with its status.

* **Rank** r0 -> r1 (a LoRA target): ``suggest_lr(lr, rank=(r0, r1), init, alpha_rule)``. Published
  (arXiv 2602.06204) for Init[A] with every alpha rule and for Init[B] with α = 1 (``"1"``); the
  Init[B] rules for ``"1/sqrt(r)"`` and ``"1/r"`` are derived in docs/theory.md §5.1, not published.
* **Width** n0 -> n1: plain LoRA (λ = 1): ``suggest_lr(lr, width=(n0, n1), init)`` (arXiv 2406.08447:
  n^-1/2 for Init[A], n^-1 for Init[B]). LoRA+ (λ ≠ 1): ``lr_a ∝ n^-1`` and ``λ ∝ n``
  (``suggest_lr_ratio``, arXiv 2402.12354), which keeps lr_b fixed.
* **LoRA+ ratio across ranks**: no paper models it (LoRA+ works at a fixed rank); loradyn keeps λ and
  moves lr_a by the rank rule — an assumption of this project, marked as such.
* **LoRA -> full finetuning** (``lora.method=full``): μA's claim for Init[B] with α = 1: the optimal
  lr is the same order as full finetuning's (published, arXiv 2602.06204); any other proxy is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..scaling import (
    canonical_alpha_rule,
    is_published,
    lr_exponents,
    lr_rules_table,
    suggest_lr,
    suggest_lr_ratio,
)

__all__ = ["Transfer", "transfer"]


@dataclass(frozen=True)
class Transfer:
    """The transferred configuration and every rule that moved it."""

    lr_a: float
    lr_ratio: float
    factor: float                    # lr_a(target) / lr_a(proxy)
    rules: tuple[dict[str, Any], ...]

    @property
    def lr_b(self) -> float:
        return self.lr_a * self.lr_ratio

    @property
    def derived(self) -> bool:
        """Whether a rule used is not stated in a paper (derived here, or assumed)."""
        return any(r["status"] != "published" for r in self.rules)


def _power(symbol: str, exponent: float) -> str:
    return f"{symbol}^{exponent:g}" if exponent else "1"


def _source(init: str, rule: str) -> str:
    table = lr_rules_table()
    row = table[(table["quantity"] == "lr") & (table["init"] == init) & (table["alpha_rule"] == rule)].iloc[0]
    return str(row["source"])


def transfer(lr_a: float, *, lr_ratio: float | None = 1.0, init: str = "A", alpha_rule: str | None = "1/r",
             rank: tuple[int, int] | None = None, width: tuple[int, int] | None = None,
             target_method: str = "lora", multiplier: float | None = None) -> Transfer:
    """Move ``lr_a`` (and the LoRA+ ratio ``lr_ratio``) from the proxy to the target.

    Args:
        lr_a: the proxy's optimal lr of ``lora_A``.
        lr_ratio: the proxy's λ = lr_b / lr_a (None or 1: plain LoRA).
        init: ``"A"`` or ``"B"``.
        alpha_rule: how the multiplier moves with the rank (``"1"``, ``"1/sqrt(r)"``, ``"1/r"``; aliases).
        rank: ``(r0, r1)``, or None when the rank does not change.
        width: ``(n0, n1)``, or None when the width does not change.
        target_method: ``"lora"``, or ``"full"`` for a full-finetuning target.
        multiplier: the proxy's total multiplier α (needed for a full-finetuning target: μA's rule is for α = 1).

    Raises:
        SpecError: a transfer no rule covers (one line).
    """
    ratio = 1.0 if lr_ratio is None else float(lr_ratio)
    init = str(init).upper()
    rules: list[dict[str, Any]] = []
    lr, factor = float(lr_a), 1.0
    if target_method == "full":
        if init != "B" or multiplier is None or not math.isclose(multiplier, 1.0, rel_tol=1e-9):
            raise SpecError(f"no rule moves Init[{init}] with multiplier {multiplier} to full finetuning: μA's transfer "
                            "(arXiv 2602.06204) is for Init[B] with alpha/r = 1 (lora.alpha = lora.rank, or alpha_rule 1)")
        if ratio != 1.0:
            raise SpecError("full finetuning has one learning rate: tune the proxy with optim.lr_ratio=1")
        rules.append({"step": "LoRA -> full finetuning", "rule": "lr unchanged (Init[B], α = 1)", "factor": 1.0,
                      "status": "published", "source": "arXiv 2602.06204"})
        if width is not None:
            f = suggest_lr(1.0, width=width, init="B")
            rules.append({"step": f"width {width[0]} -> {width[1]}", "rule": "n^-1", "factor": f,
                          "status": "published", "source": "arXiv 2406.08447, 2203.03466"})
            factor *= f
        return Transfer(lr * factor, 1.0, factor, tuple(rules))
    if rank is not None and rank[0] != rank[1]:
        if alpha_rule is None:
            raise SpecError("a rank transfer needs the alpha convention (1, 1/sqrt(r) or 1/r)")
        rule = canonical_alpha_rule(alpha_rule)
        f = suggest_lr(1.0, rank=rank, init=init, alpha_rule=rule)
        k = lr_exponents(init, rule)[1]
        published = is_published(init, rule)
        rules.append({"step": f"rank {rank[0]} -> {rank[1]}", "rule": f"{_power('r', k)} (Init[{init}], alpha rule {rule})",
                      "factor": f, "status": "published" if published else "derived here (docs/theory.md §5.1)",
                      "source": _source(init, rule)})
        if ratio != 1.0:
            rules.append({"step": f"LoRA+ ratio, rank {rank[0]} -> {rank[1]}", "rule": "λ kept, lr_a by the rank rule",
                          "factor": 1.0, "status": "assumed (the ratio's rank dependence is not modelled)",
                          "source": "arXiv 2402.12354 is at a fixed rank"})
        factor *= f
    if width is not None and width[0] != width[1]:
        if ratio == 1.0:
            f = suggest_lr(1.0, width=width, init=init, alpha_rule=alpha_rule or "1/r")
            w = lr_exponents(init, alpha_rule or "1/r")[0]
            rules.append({"step": f"width {width[0]} -> {width[1]}", "rule": f"{_power('n', w)} (Init[{init}])",
                          "factor": f, "status": "published", "source": "arXiv 2406.08447"})
        else:
            f = width[0] / width[1]
            new_ratio = suggest_lr_ratio(ratio, width=width, init=init)
            rules.append({"step": f"width {width[0]} -> {width[1]} (LoRA+)",
                          "rule": f"lr_a ∝ n^-1, λ ∝ n: λ {ratio:g} -> {new_ratio:g}, lr_b kept", "factor": f,
                          "status": "published", "source": "arXiv 2402.12354"})
            ratio = new_ratio
        factor *= f
    if not rules:
        rules.append({"step": "no rank or width change", "rule": "lr kept (no rule moves it across training "
                      "length or data)", "factor": 1.0, "status": "published", "source": "-"})
    return Transfer(lr * factor, ratio, factor, tuple(rules))
