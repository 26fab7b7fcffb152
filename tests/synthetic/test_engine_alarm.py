"""The instability alarm in the synthetic engine: its numbers against a naive float64 recomputation, the
alarmed configuration frozen at its step, and the rest of the pack bit-identical to a pack without it."""

from __future__ import annotations

import math

import pytest
import torch

from loradyn.alarm import AlarmSpec
from loradyn.errors import SpecError
from loradyn.synthetic import SyntheticSpec, run_pack, teacher_weights
from loradyn.synthetic.engine import _alarm_stats
from synthetic_specs import small_spec

OFF = {"loss_growth": None, "z_b_ratio": None, "update_ratio": None}


def spec(alarm=None, **sections) -> SyntheticSpec:
    if alarm is not None:
        sections["train"] = {"alarm": alarm, **sections.get("train", {})}
    return small_spec({"width": 48, "n_train": 64, "n_test": 16}, 30, **sections)


def _naive_stats(cfg, a, b):
    """rms of z_a, z_b, α z_b and x = H (mean over data points of ||v|| / sqrt(dim)) and
    |α| ||B A||_F / ||W*||_F, written out directly in float64."""
    w = teacher_weights(cfg.task, cfg.data_seed)
    h = torch.relu(w["x_train"] @ w["w_in"].T)
    a, b = a.to(torch.float64), b.to(torch.float64)
    z_a = h @ a.T
    z_b = z_a @ b.T
    n, r = h.shape[1], a.shape[0]

    def rms(v, dim):
        return float(v.norm(dim=1).mean() / math.sqrt(dim))

    alpha = cfg.lora.alpha
    upd = abs(alpha) * float(torch.linalg.matrix_norm(b @ a)) / float(torch.linalg.matrix_norm(w["w_star"]))
    return {"z_a": rms(z_a, r), "z_b": rms(z_b, n), "lora_out": abs(alpha) * rms(z_b, n), "x": rms(h, n)}, upd


@pytest.mark.parametrize("init,rule", [("A", "1"), ("B", "1/sqrt(r)")])
def test_alarm_stats_match_a_naive_float64_recomputation(init, rule):
    from loradyn.synthetic.data import frozen_parts

    cfg = spec(lora={"init": init, "alpha_rule": rule})
    (res,), ((a, b),) = run_pack([cfg], return_params=True)
    frozen = frozen_parts(cfg)
    h = frozen.h_train
    zt = (a @ h.T).unsqueeze(0)  # (1, r, N): Zᵀ of the trained adapter
    h_rms = float((h.norm(dim=1) / math.sqrt(h.shape[1])).mean())
    alpha = torch.tensor([cfg.lora.alpha], dtype=torch.float64).view(1, 1, 1)
    ((feats, upd),) = _alarm_stats(zt, a.unsqueeze(0), b.T.contiguous().unsqueeze(0), alpha, h_rms, frozen.w_star_norm)
    want_feats, want_upd = _naive_stats(cfg, a, b)
    assert set(feats) == set(want_feats)
    for key, value in want_feats.items():
        assert feats[key] == pytest.approx(value, rel=1e-10), key
    assert upd == pytest.approx(want_upd, rel=1e-10) and upd > 0
    assert res.metrics["z_b_rms"] == pytest.approx(want_feats["z_b"], rel=1e-10)  # the same z_b as the probe's


def test_alarmed_config_is_frozen_and_the_others_stay_bit_identical():
    good = [dict(lora={"init": "A"}, optim={"lr_a": 1e-2, "lr_ratio": 4.0}),
            dict(lora={"init": "B"}, optim={"lr_a": 3e-3}, seed=1)]
    bad = dict(lora={"init": "B"}, optim={"lr_a": 0.5, "lr_ratio": 16.0}, seed=2)
    alarm = {"z_b_ratio": 4.0, "update_ratio": 4.0, "loss_growth": 50.0}
    mixed, p_mixed = run_pack([spec(alarm, train={"curve_every": 1, "record_every": 5}, **m)
                               for m in (good[0], bad, good[1])], return_params=True)
    alone, p_alone = run_pack([spec(alarm, train={"curve_every": 1, "record_every": 5}, **m) for m in good],
                              return_params=True)
    hit = mixed.pop(1)
    p_mixed.pop(1)
    assert hit.status == "diverged" and hit.metrics["alarm_reason"] in ("z_b", "update")
    step = int(hit.metrics["diverged_step"])
    assert step == hit.metrics["alarm_step"] and hit.metrics["alarm_layer"] == "hidden"
    assert hit.metrics["alarm_value"] > hit.metrics["alarm_threshold"] == 4.0
    assert [c["step"] for c in hit.curves if c["metric"] == "train_loss"][-1] == step  # nothing after the alarm
    assert hit.error.startswith(f"loradyn alarm: step {step}: ") and "smaller lr_ratio than 16" in hit.error
    for r1, r2, q1, q2 in zip(mixed, alone, p_mixed, p_alone):
        assert r1.status == r2.status == "done" and r1.error is None
        assert r1.metrics == r2.metrics and r1.curves == r2.curves and r1.probes == r2.probes
        assert torch.equal(q1[0], q2[0]) and torch.equal(q1[1], q2[1])


def test_alarm_fires_at_the_first_step_a_naive_recomputation_crosses_the_threshold():
    cfg = spec({**OFF, "update_ratio": 0.5}, lora={"init": "A"}, optim={"lr_a": 2e-2, "lr_ratio": 8.0})
    (res,) = run_pack([cfg])
    assert res.status == "diverged" and res.metrics["alarm_reason"] == "update"
    step = int(res.metrics["alarm_step"])
    # replay without the alarm, reading the adapter after each number of updates
    for t in (step - 1, step):
        (_,), ((a, b),) = run_pack([spec({"enabled": False}, lora={"init": "A"}, optim={"lr_a": 2e-2, "lr_ratio": 8.0},
                                        train={"steps": t})], return_params=True)
        _, upd = _naive_stats(cfg, a, b)
        assert (upd > 0.5) == (t == step), (t, upd)
        if t == step:
            assert res.metrics["alarm_value"] == pytest.approx(upd, rel=1e-9)


def test_alarm_off_and_healthy_runs_are_unchanged_by_the_alarm():
    mixes = [dict(lora={"init": "A"}, optim={"lr_a": 1e-2}), dict(lora={"init": "B"}, optim={"lr_a": 3e-3}, seed=1)]
    on = run_pack([spec(None, train={"curve_every": 5}, **m) for m in mixes])
    off = run_pack([spec({"enabled": False}, train={"curve_every": 5}, **m) for m in mixes])
    for a, b in zip(on, off):
        assert a.status == b.status == "done" and a.metrics == b.metrics and a.curves == b.curves


def test_default_alarm_round_trips_and_rejects_unknown_keys():
    cfg = spec()
    assert cfg.train.alarm == AlarmSpec()
    assert SyntheticSpec.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SpecError, match="unknown key train.alarm.ratio"):
        spec({"ratio": 2})
