"""Learning-rate transfer across width n and rank r: the scaling rules as functions (docs/theory.md §6).

A learning rate tuned on a small proxy (width n0, rank r0) is moved to the target (n1, r1) by the
power laws ``lr ∝ n^w · r^k`` below. They are statements about orders of magnitude (Adam-type
optimisers, large width), so the result is a starting point for a short sweep, not a constant the
theory fixes.

**Alpha rules: the one vocabulary** (shared by :func:`suggest_lr` and the synthetic model's
``lora.alpha_rule``). PEFT writes the adapter as ``W0 + scaling · B @ A``; μA (arXiv 2602.06204)
calls the total multiplier α and writes α = r^-γ. A rule names how α moves when r changes::

    alpha_rule    α = scaling   γ     PEFT configuration when r changes          alias
    "1"           constant      0     lora_alpha ∝ r (e.g. lora_alpha = 2r)
    "1/sqrt(r)"   ∝ 1/sqrt(r)   1/2   fixed lora_alpha, use_rslora=True          "rslora"
    "1/r"         ∝ 1/r         1     fixed lora_alpha (PEFT's default usage)    "alpha/r"

The aliases are accepted everywhere a rule is and mean exactly the canonical rule.

Rules (docs/theory.md §2-§5)::

    init     alpha_rule     optimal lr              4x rank ->      status
    Init[A]  any (α=r^-γ)   n^-1/2 · r^-(1-γ)/2                     published (2406.08447, 2602.06204)
    Init[A]  "1"            n^-1/2 · r^-1/2         lr / 2          published (2602.06204)
    Init[A]  "1/sqrt(r)"    n^-1/2 · r^-1/4         lr / sqrt(2)    published (2602.06204)
    Init[A]  "1/r"          n^-1/2                  lr (invariant)  published (2406.08447, 2602.06204)
    Init[B]  "1"            n^-1                    lr (invariant)  published (2406.08447, 2602.06204)
    Init[B]  "1/sqrt(r)"    n^-1 · r^1/2 (1/(α n))  lr · 2          derived here, not published (§5.1)
    Init[B]  "1/r"          n^-1 · r (1/(α n))      lr · 4          derived here, not published (§5.1)
    LoRA+    ratio λ        λ = lr_b/lr_a ∝ n                       published (2402.12354)

Width: Init[A] admits ``lr ∝ n^-1/2`` (arXiv 2406.08447; Z_A = A x then grows ∝ n^1/2), Init[B]
needs ``lr ∝ n^-1``. Rank (μA, arXiv 2602.06204): under Init[A] the rank exponent is -(1-γ)/2;
under Init[B] with α = 1 the optimal lr is rank-invariant (and of the order of full
finetuning's). For Init[B] with another α, the rule ``lr ~ 1/(α n)`` is **derived here, not
published** (docs/theory.md §5.1): treat a rank transfer under Init[B] with ``alpha_rule != "1"``
as a hypothesis to check with a sweep; width transfer under Init[B] (lr ∝ n^-1) does not depend
on α.

LoRA+ (arXiv 2402.12354): with separate learning rates, ``lr_a ∝ n^-1`` and ``lr_b ∝ 1`` make both
factors learn efficiently, so the optimal ratio λ = lr_b / lr_a grows ∝ n; the theory gives the
order only, not the constant (λ = 2^4 is the usual default).
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

from .errors import LoradynError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "ALPHA_RULES",
    "ALPHA_RULE_ALIASES",
    "canonical_alpha_rule",
    "alpha_value",
    "is_published",
    "lr_exponents",
    "lr_rules_table",
    "suggest_lr",
    "suggest_lr_ratio",
]

#: alpha_rule -> γ, where the total multiplier α (PEFT's ``scaling``) is ∝ r^-γ.
ALPHA_RULES: dict[str, float] = {"1": 0.0, "1/sqrt(r)": 0.5, "1/r": 1.0}
#: PEFT-flavoured names of the same rules.
ALPHA_RULE_ALIASES: dict[str, str] = {"rslora": "1/sqrt(r)", "alpha/r": "1/r"}

_ALPHA_RULE_HELP = (
    "'1' (lora_alpha proportional to r: constant multiplier), '1/sqrt(r)' (alias 'rslora': fixed "
    "lora_alpha with use_rslora=True) or '1/r' (alias 'alpha/r': fixed lora_alpha, PEFT's default usage)"
)

_PEFT_CONFIG = {
    "1": "lora_alpha ∝ r (constant alpha/r)",
    "1/sqrt(r)": "fixed lora_alpha, use_rslora=True",
    "1/r": "fixed lora_alpha, use_rslora=False",
}
_SOURCES = {
    ("A", "1/r"): "arXiv 2406.08447, 2602.06204",
    ("A", "1/sqrt(r)"): "arXiv 2602.06204",
    ("A", "1"): "arXiv 2602.06204",
    ("B", "1"): "arXiv 2406.08447, 2602.06204",
    ("B", "1/sqrt(r)"): "derived here, not published (docs/theory.md §5.1)",
    ("B", "1/r"): "derived here, not published (docs/theory.md §5.1)",
}


def _init(init: Any) -> str:
    value = getattr(init, "value", init)  # accepts loradyn.InitScheme without importing it
    text = str(value).upper() if isinstance(value, str) else None
    if text not in ("A", "B"):
        raise LoradynError(
            f"unknown init {init!r}: use 'A' (Init[A]: B=0, A random) or 'B' (Init[B]: A=0, B random)"
        )
    return text


def canonical_alpha_rule(rule: Any) -> str:
    """The canonical name of an alpha rule (``"1"``, ``"1/sqrt(r)"``, ``"1/r"``); aliases resolved.

    Raises:
        LoradynError: an unknown rule (one line listing the rules).
    """
    if isinstance(rule, (int, float)) and not isinstance(rule, bool) and rule == 1:
        return "1"  # YAML reads 1 as a number
    key = ALPHA_RULE_ALIASES.get(rule, rule) if isinstance(rule, str) else None
    if key not in ALPHA_RULES:
        raise LoradynError(f"unknown alpha_rule {rule!r}: use {_ALPHA_RULE_HELP}")
    return key


def alpha_value(rule: str, rank: int) -> float:
    """The multiplier α = r^-γ of a rule at ``rank``: 1, 1/sqrt(r) or 1/r."""
    return {"1": 1.0, "1/sqrt(r)": 1.0 / math.sqrt(rank), "1/r": 1.0 / rank}[canonical_alpha_rule(rule)]


def is_published(init: str, rule: str) -> bool:
    """False for the rules this project derived (Init[B] with α ≠ 1): docs/theory.md §5.1."""
    return not (_init(init) == "B" and canonical_alpha_rule(rule) != "1")


def _gamma(rule: Any) -> float:
    return ALPHA_RULES[canonical_alpha_rule(rule)]


def _pair(value: Any, name: str, symbol: str) -> tuple[int, int] | None:
    """Validate a ``(from, to)`` pair of positive integers; None means unchanged."""
    if value is None:
        return None
    usage = f"pass {name}=({symbol}0, {symbol}1) with positive integers, e.g. {name}=(256, 1024)"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise LoradynError(f"{name} must be a (from, to) pair, got {value!r}: {usage}")
    out = []
    for item in value:
        if isinstance(item, bool):
            raise LoradynError(f"{name} must hold positive integers, got {value!r}: {usage}")
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        try:
            item = operator.index(item)
        except TypeError:
            raise LoradynError(f"{name} must hold positive integers, got {value!r}: {usage}") from None
        if item < 1:
            raise LoradynError(f"{name} must hold positive integers, got {value!r}: {usage}")
        out.append(item)
    return out[0], out[1]


def _positive(value: Any, name: str) -> float:
    """A finite number > 0 as a float (numpy scalars accepted; bools and strings are not)."""
    if isinstance(value, (bool, str, bytes)):
        raise LoradynError(f"{name} must be a finite number > 0, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise LoradynError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise LoradynError(f"{name} must be a finite number > 0, got {value!r}")
    return out


def lr_exponents(init: str = "A", alpha_rule: str = "1/r") -> tuple[float, float]:
    """The exponents ``(w, k)`` of the optimal learning rate ``lr ∝ width^w · rank^k``.

    Args:
        init: ``"A"`` (Init[A]) or ``"B"`` (Init[B]).
        alpha_rule: how the multiplier moves with the rank: ``"1/r"``, ``"1/sqrt(r)"`` or ``"1"``
            (aliases ``"alpha/r"``, ``"rslora"``; see the module docstring).

    Returns:
        ``(-1/2, -(1-γ)/2)`` for Init[A]; ``(-1, γ)`` for Init[B] (γ = 0 for ``"1"``: published;
        otherwise derived here, see the module docstring).

    Example:
        >>> lr_exponents("A", "1")
        (-0.5, -0.5)
    """
    gamma = _gamma(alpha_rule)
    if _init(init) == "A":
        return -0.5, (gamma - 1.0) / 2.0 + 0.0  # + 0.0: no negative zero
    return -1.0, gamma


def suggest_lr(
    lr: float,
    *,
    width: tuple[int, int] | None = None,
    rank: tuple[int, int] | None = None,
    init: str = "A",
    alpha_rule: str = "1/r",
) -> float:
    """Transfer a learning rate tuned at (width n0, rank r0) to (n1, r1).

    ``lr1 = lr · (n1/n0)^w · (r1/r0)^k`` with ``(w, k) = lr_exponents(init, alpha_rule)``:
    Init[A]: ``w = -1/2``, ``k = -(1-γ)/2``; Init[B]: ``w = -1``, ``k = γ`` (``k = 0`` published
    for ``alpha_rule="1"``; ``"1/sqrt(r)"``/``"1/r"`` use the rule lr ~ 1/(α n) derived here, see
    the module docstring). The rules are about orders of magnitude: sweep around the result.

    Args:
        lr: the learning rate tuned at (n0, r0) (for LoRA+, the rate of ``lora_A``), finite and > 0.
        width: ``(n0, n1)``, the model width (hidden size) where ``lr`` was tuned and the target
            width; None keeps the width.
        rank: ``(r0, r1)``, the LoRA rank where ``lr`` was tuned and the target rank; None keeps it.
        init: ``"A"`` (Init[A]: B = 0, A random; PEFT's default) or ``"B"`` (Init[B]: A = 0).
        alpha_rule: how the multiplier changes with the rank: ``"1/r"`` (alias ``"alpha/r"``: fixed
            lora_alpha, PEFT's default usage), ``"1/sqrt(r)"`` (alias ``"rslora"``: fixed lora_alpha,
            ``use_rslora=True``) or ``"1"`` (lora_alpha ∝ r, a constant multiplier).

    Returns:
        The suggested learning rate at (n1, r1).

    Raises:
        LoradynError: a non-positive or non-finite ``lr``, a malformed pair, an unknown ``init``
            or ``alpha_rule``.

    Example:
        >>> suggest_lr(1e-3, width=(1024, 4096))            # Init[A]: 4x width -> lr / 2
        0.0005
        >>> suggest_lr(1e-3, width=(1024, 4096), init="B")  # Init[B]: 4x width -> lr / 4
        0.00025
        >>> suggest_lr(1e-3, rank=(8, 32), alpha_rule="1")  # Init[A], alpha = r: 4x rank -> lr / 2
        0.0005
    """
    lr = _positive(lr, "lr")
    widths = _pair(width, "width", "n")
    ranks = _pair(rank, "rank", "r")
    w_exp, r_exp = lr_exponents(init, alpha_rule)
    factor = 1.0
    if widths is not None:
        factor *= (widths[1] / widths[0]) ** w_exp
    if ranks is not None:
        factor *= (ranks[1] / ranks[0]) ** r_exp
    return lr * factor


def suggest_lr_ratio(
    ratio: float,
    *,
    width: tuple[int, int] | None = None,
    init: str = "A",
) -> float:
    """Transfer a LoRA+ ratio λ = lr_b / lr_a tuned at width n0 to width n1: λ ∝ n.

    LoRA+ (arXiv 2402.12354, docs/theory.md §3): ``lr_a ∝ n^-1`` and ``lr_b ∝ 1``, so the optimal
    ratio grows linearly with width; the one-step argument gives the same order for Init[A] and
    Init[B]. The rank dependence of λ is not published and not modelled.

    To move a whole LoRA+ configuration, scale ``lr_a`` by ``n0/n1`` (``lr_a ∝ n^-1``) and λ with
    this function, which keeps ``lr_b = λ · lr_a`` fixed. The rules of :func:`suggest_lr` are for
    one learning rate shared by A and B: combining its Init[A] rule (``n^-1/2``) with λ ∝ n would
    make ``lr_b`` grow ∝ n^1/2, which is not what LoRA+ prescribes.

    Args:
        ratio: λ tuned at width n0, finite and > 0.
        width: ``(n0, n1)``; None keeps the width.
        init: ``"A"`` or ``"B"`` (validated; the exponent is the same for both).

    Returns:
        The suggested ratio at width n1.

    Raises:
        LoradynError: a non-positive or non-finite ``ratio``, a malformed pair or an unknown init.

    Example:
        >>> suggest_lr_ratio(16, width=(768, 3072))
        64.0
    """
    ratio = _positive(ratio, "ratio")
    _init(init)
    widths = _pair(width, "width", "n")
    if widths is None:
        return ratio
    return ratio * (widths[1] / widths[0])


def _fmt_power(symbol: str, exponent: float) -> str:
    if exponent == 0:
        return ""
    if exponent == 1:
        return symbol
    frac = {0.5: "1/2", 0.25: "1/4", 0.75: "3/4"}.get(abs(exponent))
    text = frac if frac is not None else f"{abs(exponent):g}"
    return f"{symbol}^{'-' if exponent < 0 else ''}{text}"


def lr_rules_table() -> pd.DataFrame:
    """The rule table as a tidy DataFrame, one row per (quantity, init, alpha_rule).

    Columns: ``quantity`` (``"lr"`` or ``"lr_ratio"``), ``init``, ``alpha_rule``, ``peft_config``,
    ``gamma``, ``width_exponent``, ``rank_exponent``, ``rule`` (e.g. ``"n^-1/2 · r^-1/4"``),
    ``published`` (False for the rules derived here, docs/theory.md §5.1) and ``source``.
    """
    import pandas as pd

    rows = []
    for init in ("A", "B"):
        for alpha_rule, gamma in ALPHA_RULES.items():
            w_exp, r_exp = lr_exponents(init, alpha_rule)
            rule = " · ".join(p for p in (_fmt_power("n", w_exp), _fmt_power("r", r_exp)) if p)
            source = _SOURCES[(init, alpha_rule)]
            rows.append(
                {
                    "quantity": "lr",
                    "init": init,
                    "alpha_rule": alpha_rule,
                    "peft_config": _PEFT_CONFIG[alpha_rule],
                    "gamma": gamma,
                    "width_exponent": w_exp,
                    "rank_exponent": r_exp,
                    "rule": rule,
                    "published": is_published(init, alpha_rule),
                    "source": source,
                }
            )
    for init in ("A", "B"):
        rows.append(
            {
                "quantity": "lr_ratio",
                "init": init,
                "alpha_rule": "any",
                "peft_config": "LoRA+ (lr_b = ratio · lr_a)",
                "gamma": float("nan"),
                "width_exponent": 1.0,
                "rank_exponent": float("nan"),
                "rule": "n",
                "published": True,
                "source": "arXiv 2402.12354",
            }
        )
    return pd.DataFrame(rows)
