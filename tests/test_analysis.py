"""The one analysis (loradyn.analysis) on hand-made tables with known answers."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from loradyn.analysis import best_pair, fit_log2_slope, optimal_lr, parabola_vertex, seed_stats
from loradyn.errors import LoradynError


def bowl(log2_opt: float, lrs, seeds=(0, 1, 2), curvature=0.3, noise=0.0, **cols):
    """loss = 10^(c (log2 lr - log2_opt)^2) * 1e-3: its parabola in (log2 lr, log10 loss) is exact."""
    rng = np.random.default_rng(0)
    rows = []
    for lr in lrs:
        for s in seeds:
            loss = 1e-3 * 10 ** (curvature * (math.log2(lr) - log2_opt) ** 2) * (1 + noise * rng.standard_normal())
            rows.append({"lr_a": lr, "seed": s, "final_train_loss": loss, "status": "done", **cols})
    return pd.DataFrame(rows)


def test_parabola_refines_to_the_true_optimum_between_grid_points():
    lrs = [2.0**e for e in np.arange(-12, -3.9, 0.5)]
    opt = optimal_lr(bowl(-7.3, lrs), lr="lr_a")
    assert opt["refined"].iloc[0] and opt["edge"].iloc[0] == ""
    assert opt["log2_lr_opt"].iloc[0] == pytest.approx(-7.3, abs=1e-9)
    assert opt["lr_grid_opt"].iloc[0] == pytest.approx(2.0**-7.5)


def test_edges_are_flagged_and_not_refined():
    lrs = [2.0**e for e in range(-10, -5)]
    low = optimal_lr(bowl(-12, lrs), lr="lr_a")
    high = optimal_lr(bowl(-3, lrs), lr="lr_a")
    assert (low["edge"].iloc[0], high["edge"].iloc[0]) == ("low", "high")
    assert not low["refined"].iloc[0] and low["lr_opt"].iloc[0] == 2.0**-10


def test_diverged_seed_makes_its_lr_ineligible():
    lrs = [2.0**e for e in range(-10, -3)]
    df = bowl(-7.0, lrs)
    df.loc[(df["lr_a"] == 2.0**-7) & (df["seed"] == 1), "status"] = "diverged"
    opt = optimal_lr(df, lr="lr_a")
    assert opt["lr_grid_opt"].iloc[0] in (2.0**-8, 2.0**-6)
    means = seed_stats(df, "lr_a")
    assert means.loc[means["lr_a"] == 2.0**-7, "mean"].iloc[0] == math.inf
    assert means["n_failed"].sum() == 1
    assert math.isnan(means.loc[means["lr_a"] == 2.0**-7, "std"].iloc[0])


def test_unstable_neighbour_is_flagged():
    lrs = [2.0**e for e in range(-10, -3)]
    df = bowl(-6.0, lrs)
    df.loc[df["lr_a"] == 2.0**-5, "final_train_loss"] = math.nan
    opt = optimal_lr(df, lr="lr_a")
    assert opt["edge"].iloc[0] == "unstable" and not opt["refined"].iloc[0]


def test_optimal_lr_by_groups():
    lrs = [2.0**e for e in np.arange(-14, -1.9, 0.5)]
    df = pd.concat([bowl(-5 - 0.5 * k, lrs, width=2**(7 + k), init="A") for k in range(4)]
                   + [bowl(-5 - 1.0 * k, lrs, width=2**(7 + k), init="B") for k in range(4)])
    opt = optimal_lr(df, by=["init", "width"], lr="lr_a")
    assert len(opt) == 8 and (opt["edge"] == "").all() and (opt["n_seeds"] == 3).all()
    fits = fit_log2_slope(opt, "width", "lr_opt", by="init")
    slopes = dict(zip(fits["init"], fits["slope"]))
    assert slopes["A"] == pytest.approx(-0.5, abs=1e-9) and slopes["B"] == pytest.approx(-1.0, abs=1e-9)
    assert (fits["r2"] > 0.999).all() and (fits["n_points"] == 4).all()


def test_fit_log2_slope_stderr_and_bad_rows():
    df = pd.DataFrame({"x": [1, 2, 4, 8, 0, 16], "y": [1.0, 0.5, 0.26, 0.125, 3.0, math.nan]})
    fit = fit_log2_slope(df, "x", "y")
    assert fit["n_points"].iloc[0] == 4
    assert fit["slope"].iloc[0] == pytest.approx(-1.0, abs=0.03)
    assert 0 < fit["stderr"].iloc[0] < 0.05
    with pytest.raises(LoradynError, match="lacks column"):
        fit_log2_slope(df, "x", "nope")


def test_parabola_vertex():
    assert parabola_vertex([0, 1, 2], [1, 0, 1]) == pytest.approx(1.0)
    assert parabola_vertex([0, 1, 2], [0, 1, 0]) is None  # concave


def test_best_pair_finds_the_off_diagonal_optimum():
    rows = []
    for ea in range(-10, -3):
        for eb in range(-10, 0):
            loss = 1e-3 * 10 ** (0.2 * ((ea + 8) ** 2 + (eb + 4) ** 2))
            rows += [{"lr_a": 2.0**ea, "lr_b": 2.0**eb, "seed": s, "final_train_loss": loss, "status": "done"}
                     for s in (0, 1)]
    best = best_pair(pd.DataFrame(rows), lr_a="lr_a", lr_b="lr_b")
    r = best.iloc[0]
    assert (r.lr_a_opt, r.lr_b_opt, r.ratio_opt) == (2.0**-8, 2.0**-4, 16.0)
    assert r.gain > 1 and r.edge == ""


def test_seed_stats_against_a_hand_computation():
    df = pd.DataFrame({"lr_a": [1.0, 1.0, 1.0, 2.0], "seed": [0, 1, 2, 0], "acc": [0.5, 0.7, 0.9, 0.4],
                       "status": ["done"] * 4})
    stats = seed_stats(df, "lr_a", metric="acc", mode="max").set_index("lr_a")
    assert stats.loc[1.0, "mean"] == pytest.approx(0.7, abs=1e-15)
    assert stats.loc[1.0, "std"] == pytest.approx(0.2, abs=1e-15)  # ddof 1: sqrt((0.04 + 0 + 0.04) / 2)
    assert (stats.loc[1.0, "min"], stats.loc[1.0, "max"], stats.loc[1.0, "n_seeds"]) == (0.5, 0.9, 3)
    assert math.isnan(stats.loc[2.0, "std"])  # one seed has no spread


def test_max_mode_failures_are_worst_and_ties_use_the_tiebreak():
    rows = []
    for lr, accs, losses, statuses in [
        (1e-4, (0.6, 0.6), (0.9, 0.9), ("done", "done")),
        (1e-3, (0.8, 0.8), (0.5, 0.7), ("done", "done")),
        (1e-2, (0.8, 0.8), (0.4, 0.6), ("done", "done")),
        (1e-1, (0.95, 0.9), (0.3, 0.3), ("done", "failed")),
    ]:
        for seed, (acc, loss, status) in enumerate(zip(accs, losses, statuses)):
            rows.append({"optim.lr_a": lr, "seed": seed, "acc": acc, "loss": loss, "status": status})
    df = pd.DataFrame(rows)
    plain = optimal_lr(df, metric="acc", mode="max", refine=False).iloc[0]
    assert plain["lr_grid_opt"] == 1e-3 and plain["metric_opt"] == pytest.approx(0.8)  # first of the tie
    tied = optimal_lr(df, metric="acc", mode="max", refine=False, tiebreak="loss").iloc[0]
    assert tied["lr_grid_opt"] == 1e-2 and tied["edge"] == "unstable"  # its neighbour failed
    assert tied["metric_opt_std"] == pytest.approx(0.0)
    everything_failed = df.assign(status="failed")
    none = optimal_lr(everything_failed, metric="acc", mode="max").iloc[0]
    assert none["edge"] == "none" and math.isnan(none["lr_opt"]) and none["metric_opt"] == -math.inf


def test_bad_mode_is_one_line():
    with pytest.raises(LoradynError, match="mode must be 'min' or 'max'"):
        optimal_lr(bowl(-7, [0.01, 0.02]), lr="lr_a", mode="best")


# --- the quadratic over the near-optimal band ----------------------------------------------------

def naive_band_optimum(xs, ys, band):
    """Reference written out: the contiguous band around the argmin, the least-squares quadratic by
    its 3x3 normal equations solved by Cramer's rule in exact rational arithmetic on the float64
    inputs, the vertex clipped to the band."""
    i = min(range(len(ys)), key=lambda k: ys[k])
    lo = hi = i
    while lo > 0 and ys[lo - 1] <= ys[i] + band:
        lo -= 1
    while hi < len(ys) - 1 and ys[hi + 1] <= ys[i] + band:
        hi += 1
    px, py = [Fraction(x) for x in xs[lo:hi + 1]], [Fraction(y) for y in ys[lo:hi + 1]]
    s = [sum(x**k for x in px) for k in range(5)]
    t = [sum(y * x**k for x, y in zip(px, py)) for k in range(3)]
    m = [[s[4], s[3], s[2]], [s[3], s[2], s[1]], [s[2], s[1], s[0]]]

    def det(a):
        return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
                + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))

    d = det(m)
    coef = []
    for col in range(3):
        mc = [row[:] for row in m]
        for r in range(3):
            mc[r][col] = t[2 - r]
        coef.append(det(mc) / d)
    a, b = coef[0], coef[1]
    return float(min(max(-b / (2 * a), px[0]), px[-1])), hi - lo + 1


def test_band_fit_recovers_a_noise_free_quadratic_exactly():
    lrs = [2.0**e for e in np.arange(-12, -2.9, 0.5)]
    opt = optimal_lr(bowl(-7.3, lrs, curvature=0.02), lr="lr_a").iloc[0]
    assert opt["fit"] == "band" and opt["edge"] == "" and opt["refined"]
    assert opt["log2_lr_opt"] == pytest.approx(-7.3, abs=1e-9)
    # |log2 lr + 7.3| <= sqrt(0.1 / 0.02): the grid points -9.5 ... -5.5
    assert opt["n_band"] == 9


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_band_fit_matches_the_naive_float64_reference(seed):
    rng = np.random.default_rng(seed)
    xs = [float(e) for e in np.arange(-12, -2.9, 0.5)]
    ys = [0.03 * (x + 7.6) ** 2 + 0.04 * rng.standard_normal() - 2.0 for x in xs]
    df = pd.DataFrame({"lr_a": [2.0**x for x in xs], "final_train_loss": [10.0**y for y in ys], "status": "done"})
    opt = optimal_lr(df, lr="lr_a", band=0.15).iloc[0]
    vertex, n_band = naive_band_optimum(xs, ys, 0.15)
    assert opt["fit"] == "band" and opt["n_band"] == n_band >= 3
    assert opt["log2_lr_opt"] == pytest.approx(vertex, abs=1e-10)  # float64 least squares on centred x
    assert opt["lr_opt"] == pytest.approx(2.0**vertex, rel=1e-9)


def test_a_vertex_clipped_at_the_grid_end_is_flagged():
    xs = [-10.0, -9.0, -8.0, -7.0, -6.0, -5.0]
    ys = [0.0001, 0.0, 0.03, 0.06, 0.09, 1.2]  # interior argmin, but the band's quadratic has its vertex below -10
    df = pd.DataFrame({"lr_a": [2.0**x for x in xs], "final_train_loss": [10.0**y for y in ys], "status": "done"})
    vertex, n_band = naive_band_optimum(xs, ys, 0.1)
    assert vertex == -10.0 and n_band == 5  # the reference says: clipped to the low end
    opt = optimal_lr(df, lr="lr_a").iloc[0]
    assert (opt["fit"], opt["edge"], opt["log2_lr_opt"], opt["lr_grid_opt"]) == ("band", "low", -10.0, 2.0**-9)
    assert opt["fit_note"] == "vertex clipped to the band"
    # an argmin on the grid's end is flagged and not fitted at all
    high = optimal_lr(bowl(-3, [2.0**e for e in range(-10, -5)], curvature=0.02), lr="lr_a").iloc[0]
    assert (high["edge"], high["fit"], high["lr_opt"]) == ("high", "grid", 2.0**-6)


def test_a_band_of_fewer_than_three_lrs_falls_back_to_the_parabola_and_says_why():
    lrs = [2.0**e for e in range(-12, -3)]
    df = bowl(-7.3, lrs, curvature=0.5)  # steep: only -7 lies within 0.1 decades of the best
    opt = optimal_lr(df, lr="lr_a").iloc[0]
    assert (opt["fit"], opt["n_band"]) == ("parabola", 1) and "band of 1 lr" in opt["fit_note"]
    assert opt["log2_lr_opt"] == pytest.approx(-7.3, abs=1e-9)  # the bowl is an exact parabola
    legacy = optimal_lr(df, lr="lr_a", refine="parabola").iloc[0]
    assert legacy["fit"] == "parabola" and legacy["log2_lr_opt"] == pytest.approx(-7.3, abs=1e-9)
    grid = optimal_lr(df, lr="lr_a", refine=False).iloc[0]
    assert (grid["fit"], grid["lr_opt"], grid["refined"]) == ("grid", 2.0**-7, False)
    with pytest.raises(LoradynError, match="refine must be"):
        optimal_lr(df, lr="lr_a", refine="cubic")


def test_a_band_that_is_not_convex_falls_back():
    xs = [-10.0, -9.0, -8.0, -7.0, -6.0, -5.0, -4.0]
    ys = [1.0, 0.0, 0.08, 0.09, 0.08, 0.0001, 1.0]  # a hump inside the band: its least-squares quadratic is concave
    df = pd.DataFrame({"lr_a": [2.0**x for x in xs], "final_train_loss": [10.0**y for y in ys], "status": "done"})
    opt = optimal_lr(df, lr="lr_a").iloc[0]
    assert opt["fit"] == "parabola" and "not convex" in opt["fit_note"] and opt["n_band"] == 5
    assert -10.0 < opt["log2_lr_opt"] < -8.0 and opt["lr_grid_opt"] == 2.0**-9
