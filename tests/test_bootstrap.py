"""The seed bootstrap (loradyn.bootstrap) against naive float64 references written out."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from loradyn.analysis import optimal_lr
from loradyn.bootstrap import (
    SeedCurves,
    column_cis,
    edge_share_reason,
    expanded_tail,
    log2_slopes,
    percentile_ci,
    resample_counts,
    resampled_means,
    seeds_ci_reason,
    t_quantile,
)
from loradyn.errors import LoradynError


def test_resample_counts_draw_seeds_with_replacement_reproducibly():
    counts = resample_counts(5, 400, seed=3)
    assert counts.shape == (400, 5) and (counts.sum(axis=1) == 5).all() and (counts >= 0).all()
    assert (counts == resample_counts(5, 400, seed=3)).all()
    assert not (counts == resample_counts(5, 400, seed=4)).all()
    assert (counts == 1).all(axis=1).mean() < 0.1  # most resamples repeat a seed (5!/5^5 = 3.8 %)
    assert abs(counts.mean(axis=0) - 1).max() < 0.15  # every seed is drawn once on average
    for bad in (0, -1, 2.5, True):
        with pytest.raises(LoradynError, match="resamples must be an integer"):
            resample_counts(5, bad)


def test_resampled_means_match_a_naive_loop():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 6))
    values[1, 2] = math.inf  # a failed trial
    values[2, 5] = math.nan  # no trial
    values[3, :] = math.nan  # a point nobody ran
    counts = resample_counts(6, 50, seed=1)
    got = resampled_means(values, counts)
    assert got.shape == (50, 4)
    for r, c in enumerate(counts):
        for i in range(4):
            drawn = [values[i, s] for s in range(6) for _ in range(c[s]) if not math.isnan(values[i, s])]
            if any(v == math.inf for v in drawn):
                want = math.inf
            elif not drawn:
                want = math.nan
            else:
                want = sum(drawn) / len(drawn)
            if math.isnan(want):
                assert math.isnan(got[r, i])
            else:
                assert got[r, i] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_log2_slopes_match_polyfit_row_by_row():
    rng = np.random.default_rng(1)
    widths = [128, 256, 512, 1024, 2048]
    y = -0.75 * np.log2(widths)[None, :] + rng.normal(scale=0.2, size=(30, 5))
    y[3, 1] = math.nan
    y[4, :4] = math.nan  # one point left: no slope
    got = log2_slopes(widths, y)
    for r in range(30):
        ok = np.isfinite(y[r])
        if ok.sum() < 2:
            assert math.isnan(got[r])
        else:
            want = np.polyfit(np.log2(np.array(widths, dtype=float))[ok], y[r][ok], 1)[0]
            assert got[r] == pytest.approx(want, abs=1e-12)


def test_percentile_ci_is_the_sorted_quantile_and_refuses_undefined_statistics():
    r = np.arange(1000, dtype=float)
    lo, hi = percentile_ci(r)
    # numpy's linear quantile, written out: position q (n - 1) between sorted neighbours
    assert lo == pytest.approx(0.025 * 999) and hi == pytest.approx(0.975 * 999)
    r[:30] = math.nan  # 3 % undefined: still a CI over the rest
    assert math.isfinite(percentile_ci(r)[0])
    r[:60] = math.nan  # 6 % undefined: more than 1 - level
    assert all(math.isnan(v) for v in percentile_ci(r))
    lo, hi = column_cis(np.stack([np.arange(100.0), -np.arange(100.0)], axis=1))
    assert lo[0] == pytest.approx(2.475) and hi[1] == pytest.approx(-2.475)


def bowls(n_seeds=6, *, noise=0.3, slope=-0.5, widths=(128, 256, 512, 1024), seed=0, curvature=0.05):
    """Per-seed bowls in (log2 lr, log10 loss) whose optimum moves as width^slope, with a per-seed
    shift of the optimum (the seed-to-seed noise the bootstrap should see)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in widths:
        for s in range(n_seeds):
            centre = -6 + slope * math.log2(n / 128) + noise * rng.standard_normal()
            for e in np.arange(-14, -1.9, 0.5):
                loss = 1e-3 * 10 ** (curvature * (e - centre) ** 2)
                rows.append({"width": n, "seed": s, "lr_a": 2.0**e, "final_train_loss": loss, "status": "done"})
    return pd.DataFrame(rows)


def test_seed_curves_reproduce_optimal_lr_as_the_point_estimate():
    df = bowls()
    df.loc[(df["lr_a"] == 2.0**-2) & (df["seed"] == 1), "status"] = "diverged"
    curves = SeedCurves.from_table(df, "width", lr="lr_a")
    point, edge = curves.optima()
    opt = optimal_lr(df, "width", lr="lr_a")
    assert point.shape == (1, 4) and not edge.any()
    assert point[0] == pytest.approx(opt["log2_lr_opt"].to_numpy(), abs=1e-12)
    assert curves.n_seeds == 6 and curves.index(width=512) == 2


def test_the_bootstrap_ci_of_a_slope_covers_the_truth_and_narrows_with_seeds():
    widths = [128, 256, 512, 1024]
    covered, halves = 0, {}
    for k in range(8):
        for n_seeds in (5, 40) if k == 0 else (5,):
            df = bowls(n_seeds, seed=100 + k)
            curves = SeedCurves.from_table(df, "width", lr="lr_a")
            reps, edge = curves.bootstrap(1000, seed=k)
            lo, hi = percentile_ci(log2_slopes(widths, reps), n_seeds=curves.n_seeds)
            assert not edge.any()
            if n_seeds == 5:
                covered += lo < -0.5 < hi
            halves.setdefault(n_seeds, (hi - lo) / 2)
    assert covered >= 6  # nominal 95 %: missing 3 of 8 would be a 2 % event at 92 % coverage
    assert halves[40] < 0.6 * halves[5]  # ~ 1/sqrt(8) for 8x the seeds (and a narrower t)
    # the same resample seed gives the same CI
    a = SeedCurves.from_table(bowls(5), "width", lr="lr_a").bootstrap(100, seed=7)[0]
    b = SeedCurves.from_table(bowls(5), "width", lr="lr_a").bootstrap(100, seed=7)[0]
    assert (a == b).all()


@pytest.mark.parametrize("dof,table", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantile_against_a_printed_table(dof, table):
    assert t_quantile(0.975, dof) == pytest.approx(table, rel=2e-3)
    assert t_quantile(0.025, dof) == pytest.approx(-table, rel=2e-3)


def test_the_expanded_interval_corrects_the_coverage_of_a_mean_with_five_seeds():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(600, 5))  # 600 experiments of 5 seeds, true mean 0
    means = resampled_means(data, resample_counts(5, 2000, seed=1))  # (2000, 600)
    plain = np.mean([percentile_ci(means[:, j])[0] < 0 < percentile_ci(means[:, j])[1] for j in range(600)])
    wide = [percentile_ci(means[:, j], n_seeds=5) for j in range(600)]
    expanded = np.mean([lo < 0 < hi for lo, hi in wide])
    assert 0.78 < plain < 0.9  # the percentile interval under-covers with 5 seeds
    assert 0.92 < expanded < 0.98  # the expanded one comes close to the nominal 95 %
    assert expanded_tail(5) == pytest.approx(NormalDist().cdf(-math.sqrt(5 / 4) * 2.7764), rel=1e-2)
    assert expanded_tail(1) == pytest.approx(0.025)


def test_edge_shares_and_too_few_seeds_are_reasons():
    edge = np.zeros((100, 2), dtype=bool)
    edge[:2, 0] = True  # 2 %: within one tail
    edge[:10, 1] = True  # 10 %
    assert edge_share_reason(edge, ["A n=128", "B n=128"]) == (
        "optimum on a grid edge in a share of the bootstrap resamples: B n=128 10 %")
    assert edge_share_reason(edge[:, :1], ["A n=128"]) is None
    assert "too few for a bootstrap CI" in seeds_ci_reason(3) and seeds_ci_reason(5) is None
