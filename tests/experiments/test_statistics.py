"""The experiments' statistics end to end: width-lr and loraplus-heatmap on planted results (the
sweeps replaced by seeded bowls with known exponents), so each verdict's status can be predicted —
holds, fails, or undecided with the CI's width named."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from loradyn.experiments import reproduce

pytest.importorskip("matplotlib")


def planted_width_lr(slopes: dict[str, float], noise: float, slope_noise: float = 0.0, curvature: float = 0.1):
    """A fake ``run_grid``: per seed, log10 loss = -3 + c (log2 lr - centre)² with the centre moving as
    n^(slope + δ_s) — δ_s ~ N(0, ``slope_noise``) one per seed label, as a seed's teacher and data
    are shared by its widths — plus a shift of ``noise`` octaves per (seed, width)."""

    def run_grid(ctx, name, base, grid, seeds, **_):
        width = base["task"]["width"]
        rows = []
        for init in grid["lora.init"]:
            rng = np.random.default_rng(width * 7 + ord(init))
            for s in range(seeds):
                delta = slope_noise * np.random.default_rng(1000 + s).standard_normal()
                centre = -6.0 + (slopes[init] + delta) * math.log2(width / 128) + noise * rng.standard_normal()
                for lr in grid["optim.lr_a"]:
                    loss = 10 ** (-3 + curvature * (math.log2(lr) - centre) ** 2)
                    rows.append({"trial_id": f"{name}-{init}-{lr}-{s}", "lora.init": init, "task.width": width,
                                 "optim.lr_a": lr, "optim.lr_b": lr, "seed": s, "status": "done",
                                 "final_train_loss": loss, "test_loss": loss, "error": None, "seconds": 0.0})
        df = pd.DataFrame(rows)
        df.attrs["name"] = name
        return df

    return run_grid


# the μP readout with an independent teacher: the prediction for Init[A] is the papers' n^-1/2
WIDTH_LR = ["experiment.widths=[128,256,512,1024,2048]", "experiment.fit_min_width=128", "experiment.span=4",
            "experiment.n_resamples=1000", "task.readout=mup", "task.teacher_readout=independent"]


@pytest.mark.parametrize("slope_a,slope_noise,seeds,status", [
    (-0.5, 0.03, 8, "holds"),  # the prediction inside a CI narrower than the tolerance
    (-0.8, 0.03, 8, "fails"),  # a CI that excludes the prediction
    (-0.5, 0.5, 5, "undecided"),  # seeds disagree on the slope: the CI is wider than the tolerance
    (-0.5, 0.03, 3, "undecided"),  # too few seeds for a bootstrap CI
])
def test_width_lr_decides_its_slope_on_the_bootstrap_ci(slope_a, slope_noise, seeds, status, tmp_path, monkeypatch):
    planted = planted_width_lr({"A": slope_a, "B": -1.0}, 0.05, slope_noise)
    monkeypatch.setattr("loradyn.experiments.width_lr.run_grid", planted)
    summary = reproduce("width-lr", out=tmp_path, seeds=seeds, overrides=WIDTH_LR, executor="serial", quiet=True)
    slope_a_verdict = summary["verdicts"][0]
    assert slope_a_verdict["claim"].startswith("Init[A]") and slope_a_verdict["status"] == status
    lo, hi = slope_a_verdict["ci"]
    assert lo <= hi
    if status == "holds":
        assert lo <= -0.5 <= hi and (hi - lo) / 2 <= 0.15
    elif status == "fails":
        assert hi < -0.5
    elif seeds >= 5:
        assert "wider than the tolerance ±0.15" in slope_a_verdict["reason"] and lo <= -0.5 <= hi
    else:
        assert "3 seeds: too few for a bootstrap CI" in slope_a_verdict["reason"]
    slopes = pd.DataFrame(summary["slopes"]).set_index("lora.init")
    assert slopes.loc["A", "ci_lo"] == pytest.approx(lo) and slopes.loc["A", "ci_hi"] == pytest.approx(hi)
    optima = pd.DataFrame(summary["optimal_lr"])
    assert (optima["log2_lr_lo"] <= optima["log2_lr_hi"]).all() and (optima["fit"] == "band").all()
    assert summary["bootstrap"] == {"n_resamples": 1000, "level": 0.95, "seed": 0, "n_seeds": seeds}
    assert (tmp_path / "results.csv").exists()


def planted_loraplus(ratio_slope: float, noise: float = 0.15):
    """A fake ``run_grid`` for loraplus-heatmap: per seed a bowl in (log2 lr_a, log2 λ) whose λ*
    moves as n^ratio_slope (from 2^3 at n = 128) plus a per-seed shift."""

    def run_grid(ctx, name, base, grid, seeds, **_):
        width = base["task"]["width"]
        rows = []
        for init in grid["lora.init"]:
            rng = np.random.default_rng(width * 11 + ord(init))
            for s in range(seeds):
                r0 = 3.0 + ratio_slope * math.log2(width / 128) + noise * rng.standard_normal()
                a0 = -8.0 - math.log2(width / 128)
                for lr in grid["optim.lr_a"]:
                    for ratio in grid["optim.lr_ratio"]:
                        loss = 10 ** (-3 + 0.05 * (math.log2(lr) - a0) ** 2 + 0.04 * (math.log2(ratio) - r0) ** 2)
                        rows.append({"trial_id": f"{name}-{init}-{lr}-{ratio}-{s}", "lora.init": init,
                                     "task.width": width, "optim.lr_a": lr, "optim.lr_ratio": ratio,
                                     "optim.lr_b": lr * ratio, "seed": s, "status": "done",
                                     "final_train_loss": loss, "test_loss": loss, "error": None, "seconds": 0.0})
        df = pd.DataFrame(rows)
        df.attrs["name"] = name
        return df

    return run_grid


@pytest.mark.parametrize("ratio_slope,status", [(0.5, "holds"), (-0.5, "fails"), (0.0, "undecided")])
def test_loraplus_ratio_growth_is_decided_on_the_ci_and_edges_are_extended(ratio_slope, status, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr("loradyn.experiments.loraplus_heatmap.run_grid", planted_loraplus(ratio_slope))
    overrides = ["experiment.widths=[128,512,2048]", "experiment.ratio_log2=[-2,4]", "experiment.lr_a_span=3",
                 "experiment.n_resamples=500"]
    summary = reproduce("loraplus-heatmap", out=tmp_path, seeds=5, overrides=overrides, executor="serial",
                        quiet=True)
    above, gain, grows, *per_init = summary["verdicts"]
    assert [v["claim"][:7] for v in per_init] == ["Init[A]", "Init[B]"]  # λ* ∝ n^1/2 each (sp readout)
    assert grows["status"] == status and grows["ci"] is not None
    if status == "undecided":
        assert "reaches the bound" in grows["reason"]
    assert above["status"] == "holds" and gain["status"] == "holds"
    best = pd.DataFrame(summary["best_pairs"]).set_index(["lora.init", "task.width"])
    assert (best["ratio_edge"] == "").all()  # every optimum interior, after the extensions
    want = {128: 3.0, 512: 3.0 + 2 * ratio_slope, 2048: 3.0 + 4 * ratio_slope}
    for (_, width), row in best.iterrows():
        assert row["log2_ratio_opt"] == pytest.approx(want[width], abs=0.35)
        assert row["ratio_opt_lo"] <= row["log2_ratio_opt"] + 1e-9 or row["ratio_opt_lo"] <= row["ratio_opt_hi"]
    if ratio_slope == 0.5:  # λ* = 2^5 at n = 2048 lies beyond the initial grid's 2^4: the grid was extended
        results = pd.read_csv(tmp_path / "results.csv")
        assert results["optim.lr_ratio"].max() > 2.0**4
        assert results["sweep"].str.contains("-ext1").any()
