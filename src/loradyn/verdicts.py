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

    def __post_init__(self) -> None:
        if self.status not in VERDICT_STATUSES:
            raise ValueError(f"verdict status must be one of {VERDICT_STATUSES}, got {self.status!r}")

    @classmethod
    def check(cls, claim: str, expected: str, measured: str, holds: bool,
              undecided: str | Sequence[str | None] | None = None) -> Verdict:
        """``holds``/``fails`` by ``holds``, unless one of the ``undecided`` reasons applies."""
        reasons = [undecided] if isinstance(undecided, str) else list(undecided or [])
        reasons = [r for r in reasons if r]
        if reasons:
            return cls(claim, expected, measured, "undecided", "; ".join(dict.fromkeys(reasons)))
        return cls(claim, expected, measured, "holds" if holds else "fails")

    @property
    def holds(self) -> bool | None:
        """True / False, or None when undecided."""
        return None if self.status == "undecided" else self.status == "holds"

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "expected": self.expected, "measured": self.measured,
                "status": self.status, "holds": self.holds, "reason": self.reason}


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
    """A plain-text table of verdicts; long cells wrap at word boundaries (never cut)."""
    import textwrap

    head = ("verdict", "claim", "expected", "measured", "reason")
    widths = (9, 56, 28, 40, 40)
    rows = [head] + [(v["status"], v["claim"], v["expected"], v["measured"], v.get("reason", "")) for v in verdicts]
    if not any(r[4] for r in rows[1:]):
        rows, widths = [r[:4] for r in rows], widths[:4]
    widths = [min(w, max(len(str(r[i])) for r in rows)) for i, w in enumerate(widths)]
    lines = []
    for j, row in enumerate(rows):
        cells = [textwrap.wrap(str(c), w, break_on_hyphens=False) or [""] for c, w in zip(row, widths)]
        for k in range(max(len(c) for c in cells)):
            parts = [(c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths)]
            lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
