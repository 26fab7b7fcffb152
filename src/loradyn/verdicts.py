"""Three-valued verdicts: a claim checked against measurements *holds*, *fails*, or is *undecided*
when the data cannot decide it, with the reason (docs/theory.md §8). Used by the experiments and by
the best-vs-best comparison of any sweep (:mod:`loradyn.comparison`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "VERDICT_STATUSES",
    "Verdict",
    "edge_reason",
    "fmt_ci",
    "noise_reason",
    "seeds_reason",
    "spread",
    "verdict_counts",
    "verdict_table",
]

VERDICT_STATUSES = ("holds", "fails", "undecided")


@dataclass(frozen=True)
class Verdict:
    """One claim checked against the measurement: it ``holds``, ``fails``, or is ``undecided``
    when the data cannot decide it (``reason`` says why: an optimum on a grid edge, a difference
    within the seed spread, a metric at chance level, too few seeds for a spread, …)."""

    claim: str
    expected: str
    measured: str
    status: str
    reason: str = ""
    ci: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.status not in VERDICT_STATUSES:
            raise ValueError(f"verdict status must be one of {VERDICT_STATUSES}, got {self.status!r}")

    @classmethod
    def check(cls, claim: str, expected: str, measured: str, holds: bool,
              undecided: str | Sequence[str | None] | None = None) -> Verdict:
        """``holds``/``fails`` by ``holds``, unless one of the ``undecided`` reasons applies."""
        reasons = _reasons(undecided)
        if reasons:
            return cls(claim, expected, measured, "undecided", "; ".join(dict.fromkeys(reasons)))
        return cls(claim, expected, measured, "holds" if holds else "fails")

    @classmethod
    def estimate(cls, claim: str, predicted: float, tol: float, estimate: float, ci: tuple[float, float],
                 undecided: str | Sequence[str | None] | None = None, *, unit: str = "") -> Verdict:
        """A predicted value (an exponent) against the estimate and its CI: ``holds`` when the
        prediction lies inside the CI and the CI's half-width is within ``tol``; ``fails`` when it
        lies outside the CI; ``undecided`` when the CI is wider (or undefined), or for one of the
        ``undecided`` reasons (docs/theory.md §8)."""
        reasons = _reasons(undecided)
        lo, hi = map(float, ci)
        expected, measured = f"{predicted:+.2f} ± {tol:g}{unit}", f"{estimate:+.2f}{unit}"
        if not (math.isfinite(lo) and math.isfinite(hi)):
            reasons.append("no bootstrap CI (the statistic is undefined in too many resamples)")
        elif not reasons and not lo <= predicted <= hi:
            return cls(claim, expected, measured, "fails", "", (lo, hi))
        elif (hi - lo) / 2 > tol * (1 + 1e-9):
            reasons.append(f"CI {fmt_ci((lo, hi))} (±{(hi - lo) / 2:.2f}) wider than the tolerance ±{tol:g}")
        if reasons:
            return cls(claim, expected, measured, "undecided", "; ".join(dict.fromkeys(reasons)), (lo, hi))
        return cls(claim, expected, measured, "holds", "", (lo, hi))

    @classmethod
    def bounded(cls, claim: str, expected: str, measured: str, bounds: tuple[float, float],
                ci: tuple[float, float], undecided: str | Sequence[str | None] | None = None) -> Verdict:
        """A claim that a statistic lies in the open interval ``bounds`` (a side may be ±inf):
        ``holds`` when its CI lies inside, ``fails`` when the CI lies wholly outside, ``undecided``
        when the CI straddles a bound (or is undefined), or for one of the ``undecided`` reasons."""
        reasons = _reasons(undecided)
        a, b = map(float, bounds)
        lo, hi = map(float, ci)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            reasons.append("no bootstrap CI (the statistic is undefined in too many resamples)")
        elif not reasons and (hi <= a or lo >= b):
            return cls(claim, expected, measured, "fails", "", (lo, hi))
        elif not (a < lo and hi < b):
            bound = a if lo <= a else b
            reasons.append(f"CI {fmt_ci((lo, hi))} reaches the bound {bound:+.2f}")
        if reasons:
            return cls(claim, expected, measured, "undecided", "; ".join(dict.fromkeys(reasons)), (lo, hi))
        return cls(claim, expected, measured, "holds", "", (lo, hi))

    @property
    def holds(self) -> bool | None:
        """True / False, or None when undecided."""
        return None if self.status == "undecided" else self.status == "holds"

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "expected": self.expected, "measured": self.measured,
                "status": self.status, "holds": self.holds, "reason": self.reason,
                "ci": None if self.ci is None else [float(self.ci[0]), float(self.ci[1])]}


def _reasons(undecided: str | Sequence[str | None] | None) -> list[str]:
    reasons = [undecided] if isinstance(undecided, str) else list(undecided or [])
    return [r for r in reasons if r]


def fmt_ci(ci: Sequence[float] | None) -> str:
    """A CI as ``[lo, hi]`` (empty when there is none)."""
    if ci is None or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return ""
    lo, hi = float(ci[0]), float(ci[1])
    return "[n/a]" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:+.2f}, {hi:+.2f}]"


def edge_reason(rows: Sequence[Mapping[str, Any]], label: Callable[[Mapping[str, Any]], str]) -> str | None:
    """"optimum on a grid edge: …" for the optima (rows of :func:`loradyn.analysis.optimal_lr`) at
    the end of their grid or with every learning rate failed, else None."""
    bad = [f"{label(r)} ({r['edge']})" for r in rows if r.get("edge") in ("low", "high", "none")]
    return f"optimum on a grid edge: {', '.join(bad)}" if bad else None


def seeds_reason(n_seeds: int) -> str | None:
    """"too few seeds for a spread" below 2 seeds, else None."""
    return f"{n_seeds} seed{'s' if n_seeds != 1 else ''}: too few for a spread" if n_seeds < 2 else None


def noise_reason(a: float, b: float, std: float, what: str = "difference") -> str | None:
    """"… within the seed std" when |a - b| does not exceed ``std`` (a NaN std decides nothing)."""
    if not (math.isfinite(a) and math.isfinite(b)) or not math.isfinite(std):
        return None
    if abs(a - b) <= std:
        return f"{what} {abs(a - b):.3g} within the seed std {std:.3g}"
    return None


def spread(*stds: float) -> float:
    """The largest finite seed std among ``stds`` (NaN when none is finite)."""
    finite = [float(x) for x in stds if x is not None and math.isfinite(float(x))]
    return max(finite) if finite else math.nan


def verdict_counts(verdicts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many verdicts hold, fail and are undecided."""
    return {s: sum(1 for v in verdicts if v.get("status") == s) for s in VERDICT_STATUSES}


def verdict_table(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of verdicts (with the 95 % CI of the measured statistic where it has one);
    long cells wrap at word boundaries (never cut)."""
    import textwrap

    head = ("verdict", "claim", "expected", "measured", "95% CI", "reason")
    widths = [9, 56, 22, 32, 16, 36]
    rows = [head] + [(v["status"], v["claim"], v["expected"], v["measured"], fmt_ci(v.get("ci")),
                      v.get("reason", "")) for v in verdicts]
    keep = [i for i in range(len(head)) if i not in (4, 5) or any(r[i] for r in rows[1:])]
    rows = [tuple(r[i] for i in keep) for r in rows]
    widths = [min(widths[i], max(len(str(r[k])) for r in rows)) for k, i in enumerate(keep)]
    lines = []
    for j, row in enumerate(rows):
        cells = [textwrap.wrap(str(c), w, break_on_hyphens=False) or [""] for c, w in zip(row, widths)]
        for k in range(max(len(c) for c in cells)):
            parts = [(c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths)]
            lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
