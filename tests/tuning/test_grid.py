"""loradyn.tuning.grid: the coarse one-octave grid and the bracket search's start points."""

from __future__ import annotations

from loradyn.tuning.grid import bracket_starts, coarse_grid


def test_bracket_starts_are_the_middle_and_two_grid_steps_either_side():
    grid = [2.0**e for e in range(-15, -6)]  # 9 one-octave points
    assert bracket_starts(grid) == [2.0**-13, 2.0**-11, 2.0**-9]
    assert bracket_starts(list(reversed(grid))) == [2.0**-13, 2.0**-11, 2.0**-9]  # order does not matter
    assert bracket_starts(grid[:6]) == [2.0**-14, 2.0**-12, 2.0**-10]  # 6 points: middle index 3
    assert bracket_starts(grid[:4]) == grid[:4]  # under 5 points: all of them


def test_coarse_grid_keeps_one_point_per_octave():
    half = [2.0 ** (e / 2) for e in range(-30, -13)]
    assert coarse_grid(half) == [2.0**e for e in range(-15, -6)]
    assert coarse_grid([1e-3]) == [1e-3]
    assert coarse_grid([4e-3, 1e-3, 2e-3, 3e-3]) == [1e-3, 2e-3, 4e-3]  # unsorted; 3e-3 is under an octave above 2e-3
