"""Coord-check style scaling signatures of the synthetic model (fixed seeds, several widths).

Init[A] at lr ∝ n^-1/2 lets the internal features Z_A = A·φ(W_in x) grow with width (the paper's
"internal instability"); Init[B] at lr ∝ n^-1 keeps them Θ(1). Bounds are loose on purpose
(finite widths, 100 steps): they separate the two regimes, they do not fit exponents.
"""

from __future__ import annotations

import statistics

import pytest

from loradyn.synthetic import SyntheticSpec, run_pack

WIDTHS = (128, 512, 1024)


def final_z_a_rms(init: str, lr128: float, exponent: float, seeds=(0, 1)) -> dict[int, float]:
    out = {}
    for n in WIDTHS:
        lr = lr128 * (n / 128) ** exponent
        cfgs = [SyntheticSpec.from_dict({"task": {"width": n}, "lora": {"init": init}, "optim": {"lr_a": lr},
                                         "train": {"steps": 100}, "seed": s}) for s in seeds]
        res = run_pack(cfgs)
        assert all(r.status == "done" for r in res)
        out[n] = statistics.mean(r.metrics["z_a_rms"] for r in res)
    return out


def test_init_a_internal_features_grow_with_width():
    z = final_z_a_rms("A", 2.0**-6, -0.5)
    assert z[1024] / z[128] > 1.5, z
    assert z[128] < z[512] < z[1024], z


def test_init_b_internal_features_stay_order_one():
    z = final_z_a_rms("B", 2.0**-8, -1.0)
    assert max(z.values()) / min(z.values()) < 1.5, z


@pytest.mark.slow
def test_optimal_lr_shrinks_faster_with_width_under_init_b():
    """At n = 128 both inits share an optimum within ~1 octave; by n = 2048 Init[B]'s is ≥ 2× smaller."""
    import pandas as pd

    from loradyn.analysis import optimal_lr

    rows = []
    for n in (128, 2048):
        cfgs = [SyntheticSpec.from_dict({"task": {"width": n}, "lora": {"init": i}, "optim": {"lr_a": 2.0 ** (e / 2)},
                                         "train": {"steps": 200}, "seed": s})
                for i in "AB" for e in range(-30, -7) for s in (0, 1)]
        for c, r in zip(cfgs, run_pack(cfgs)):
            rows.append({"init": c.lora.init, "width": n, "lr_a": c.optim.lr_a, "seed": c.seed,
                         "final_train_loss": r.metrics["final_train_loss"], "diverged": r.status != "done"})
    opt = optimal_lr(pd.DataFrame(rows), by=["init", "width"]).set_index(["init", "width"])["lr_opt"]
    assert opt["A", 2048] / opt["B", 2048] >= 2.0
    assert opt["A", 128] / opt["B", 128] < opt["A", 2048] / opt["B", 2048]
