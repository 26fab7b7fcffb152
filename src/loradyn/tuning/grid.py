"""The proxy's learning-rate grids: the one-octave coarse grid and the bracket search's start points."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["bracket_starts", "coarse_grid"]


def coarse_grid(values: Sequence[float], spacing: float = 1.0) -> list[float]:
    """Every point of a log2 learning-rate axis at least ``spacing`` octaves from the previous one
    (the smallest is kept): a half-octave axis becomes a one-octave one."""
    out: list[float] = []
    for lr in sorted(float(v) for v in values):
        if not out or math.log2(lr) - math.log2(out[-1]) >= spacing - 1e-9:
            out.append(lr)
    return out


def bracket_starts(lrs: Sequence[float]) -> list[float]:
    """The bracket search's first points: the middle of the coarse grid and two grid steps either side
    (the whole grid when it has fewer than five points)."""
    grid = sorted(lrs)
    c = len(grid) // 2
    return grid if len(grid) < 5 else [grid[c - 2], grid[c], grid[c + 2]]
