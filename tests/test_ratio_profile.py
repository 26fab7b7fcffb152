"""The optimal LoRA+ ratio (loradyn.ratio_profile) on grids with known answers, and its bootstrap
against a naive loop over the resamples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from loradyn.errors import LoradynError
from loradyn.ratio_profile import RatioBootstrap, profile_optimum

LOG2_A = np.arange(-12.0, -3.0)  # lr_a grid
LOG2_R = np.arange(-2.0, 9.0)  # ratio grid


def bowl(a0, r0, ca=0.05, cr=0.03):
    """log10 loss = -3 + ca (log2 lr_a - a0)^2 + cr (log2 λ - r0)^2 on the grid: (n_lr_a, n_ratio) losses."""
    return 10.0 ** (-3 + ca * (LOG2_A[:, None] - a0) ** 2 + cr * (LOG2_R[None, :] - r0) ** 2)


def test_a_separable_bowl_gives_its_ratio_exactly_and_the_gain_by_hand():
    x, edge, gain = profile_optimum(bowl(-8.0, 3.4), LOG2_R)
    assert edge == "" and x == pytest.approx(3.4, abs=1e-9)  # the profile is an exact parabola in log2 λ
    # the gain by hand: best cell at λ = 2^3 (nearest 3.4), diagonal at λ = 1, same lr_a row
    want = (0.03 * (0 - 3.4) ** 2 - 0.03 * (3 - 3.4) ** 2) * math.log2(10)
    assert gain == pytest.approx(want, abs=1e-12)


def test_edges_of_either_axis_are_flagged():
    assert profile_optimum(bowl(-8.0, 11.0), LOG2_R)[1] == "high"
    assert profile_optimum(bowl(-8.0, -4.0), LOG2_R)[1] == "low"
    assert profile_optimum(bowl(-14.0, 3.0), LOG2_R)[1] == "lr_a low"
    assert profile_optimum(bowl(-2.0, 3.0), LOG2_R)[1] == "lr_a high"
    failed = np.full((len(LOG2_A), len(LOG2_R)), np.inf)
    x, edge, gain = profile_optimum(failed, LOG2_R)
    assert edge == "none" and math.isnan(x) and math.isnan(gain)
    no_diag = profile_optimum(bowl(-8.0, 3.4)[:, 3:], LOG2_R[3:])  # λ from 2: no diagonal column
    assert no_diag[1] == "" and math.isnan(no_diag[2])


def test_a_diverged_cell_counts_as_failed_and_moves_the_optimum():
    losses = bowl(-8.0, 3.0, cr=0.02)
    losses[:, 5] = np.inf  # every lr_a diverged at λ = 2^3
    x, edge, _ = profile_optimum(losses, LOG2_R)
    assert edge == "" and x != pytest.approx(3.0) and 2.0 <= x <= 4.0


def table(n_seeds=5, noise=0.15, seed=0):
    """Trials of two widths whose per-seed optimum ratio is 2^2 and 2^4 plus seed noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for width, r0 in ((128, 2.0), (512, 4.0)):
        for s in range(n_seeds):
            shift = noise * rng.standard_normal()
            losses = bowl(-8.0, r0 + shift)
            for i, a in enumerate(LOG2_A):
                for j, r in enumerate(LOG2_R):
                    rows.append({"task.width": width, "seed": s, "optim.lr_a": 2.0**a, "optim.lr_ratio": 2.0**r,
                                 "final_train_loss": losses[i, j], "status": "done"})
    return pd.DataFrame(rows)


def test_the_bootstrap_matches_a_naive_loop_over_resamples():
    df = table()
    df.loc[(df["seed"] == 3) & (df["optim.lr_ratio"] == 2.0**8), "status"] = "diverged"
    boot = RatioBootstrap(df, "task.width", n_resamples=20, rng_seed=5)
    assert boot.n_seeds == 5 and boot.few is None and boot.reps.shape == (20, 2)
    for j, width in enumerate((128, 512)):
        sub = df[df["task.width"] == width]
        for r in (0, 7, 19):
            drawn = [s for s in range(5) for _ in range(boot.counts[r, s])]
            means = np.zeros((len(LOG2_A), len(LOG2_R)))
            for i, a in enumerate(LOG2_A):
                for k, rr in enumerate(LOG2_R):
                    cell = sub[(sub["optim.lr_a"] == 2.0**a) & (sub["optim.lr_ratio"] == 2.0**rr)].set_index("seed")
                    vals = [cell.loc[s, "final_train_loss"] if cell.loc[s, "status"] == "done" else math.inf
                            for s in drawn]
                    means[i, k] = math.inf if math.inf in vals else sum(vals) / len(vals)
            x, edge, gain = profile_optimum(means, LOG2_R)
            assert boot.reps[r, j] == pytest.approx(x, abs=1e-9) and boot.edge[r, j] == (edge != "")
            assert boot.gain[r, j] == pytest.approx(gain, abs=1e-9)
    t = boot.table()
    assert list(t["task.width"]) == [128, 512]
    assert (t["ratio_opt_lo"] <= t["ratio_opt_hi"]).all() and (t["ratio_edge"] == "").all()
    assert t["log2_ratio_opt"].iloc[1] - t["log2_ratio_opt"].iloc[0] == pytest.approx(2.0, abs=0.5)


def test_bad_input_is_one_line():
    with pytest.raises(LoradynError, match="lacks column"):
        RatioBootstrap(pd.DataFrame({"seed": [0]}), "task.width")
    with pytest.raises(LoradynError, match="no trials"):
        RatioBootstrap(table(1).iloc[:0], "task.width")
