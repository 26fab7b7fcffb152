"""loradyn.alarm: the spec, the monitor's criteria against naive recomputations, and the fix text."""

from __future__ import annotations

import math
import random

import pytest
import yaml

from loradyn.alarm import Alarm, AlarmMonitor, AlarmSpec, alarm_line, alarm_metrics, likely_fix
from loradyn.errors import SpecError
from loradyn.serialize import spec_from_dict, spec_to_dict


def test_spec_defaults_yaml_round_trip_and_bad_input():
    spec = AlarmSpec()
    assert spec.enabled and spec.every == 1 and spec.loss_growth > 1 and spec.z_b_ratio > 1 and spec.update_ratio > 1
    text = yaml.safe_dump(spec.to_dict())
    assert AlarmSpec.from_dict(yaml.safe_load(text)) == spec
    off = AlarmSpec.from_dict({"z_b_ratio": None, "every": 3})
    assert off.z_b_ratio is None and off.every == 3 and spec_from_dict(AlarmSpec, spec_to_dict(off)) == off
    with pytest.raises(SpecError, match=r"unknown key train.alarm.zb_ratio in AlarmSpec; valid keys: enabled, every"):
        AlarmSpec.from_dict({"zb_ratio": 2})
    for bad, match in [({"every": 0}, "every must be an integer >= 1"), ({"window": 1.5}, "window"),
                       ({"update_ratio": -2}, "update_ratio must be a finite number > 0, or null"),
                       ({"z_b_ratio": math.inf}, "z_b_ratio must be a finite"),
                       ({"loss_growth": 0.5}, "loss_growth must be > 1"), ({"enabled": "maybe"}, "enabled")]:
        with pytest.raises(SpecError, match=match):
            AlarmSpec.from_dict(bad)


def _naive_loss_alarm(losses, window, factor):
    """First step whose mean of the last `window` losses exceeds factor x the mean of the first `window`."""
    for t in range(window - 1, len(losses)):
        start = sum(losses[:window]) / window
        recent = losses[max(0, t - window + 1): t + 1]
        if sum(recent) / len(recent) > factor * start:
            return t, (sum(recent) / len(recent)) / start
    return None


@pytest.mark.parametrize("seed", range(5))
def test_loss_growth_fires_where_a_naive_recomputation_does(seed):
    rng = random.Random(seed)
    losses = [1.0 + 0.1 * rng.random() for _ in range(20)] + [1.0 * 1.35 ** i for i in range(1, 20)]
    window, factor = rng.choice([1, 3, 5]), rng.choice([2.0, 4.0])
    want = _naive_loss_alarm(losses, window, factor)
    monitor = AlarmMonitor(AlarmSpec(window=window, loss_growth=factor))
    got = next((monitor.alarm for t, loss in enumerate(losses) if monitor.check(t, loss=loss)), None)
    assert want is not None and got is not None
    assert (got.step, got.feature, got.reason, got.layer) == (want[0], "loss", "loss", None)
    assert got.value == pytest.approx(want[1], rel=1e-12) and got.threshold == factor
    assert monitor.check(len(losses), loss=1e9) is None and monitor.alarm is got  # fires once


def test_z_b_and_update_criteria_name_the_worst_layer_and_respect_thresholds():
    spec = AlarmSpec(z_b_ratio=3.0, update_ratio=5.0, loss_growth=None)
    m = AlarmMonitor(spec)
    feats = {"l0": {"x": 2.0, "lora_out": 5.0, "z_a": 100.0}, "l1": {"x": 1.0, "lora_out": 2.9}}
    assert m.check(0, features=feats, updates={"l0": 4.9, "l1": 1.0}) is None  # z_a alone never alarms
    assert m.peaks["z_b"] == pytest.approx(2.9) and m.peaks["update"] == pytest.approx(4.9)
    feats["l1"]["lora_out"] = 3.5
    a = m.check(1, features=feats, updates={"l0": 4.9, "l1": 1.0})
    assert (a.step, a.layer, a.feature, a.reason) == (1, "l1", "z_b", "z_b") and a.value == pytest.approx(3.5)
    m2 = AlarmMonitor(spec)  # both fire in one step: the update is reported (CRITERIA order)
    a2 = m2.check(4, features={"l0": {"x": 1.0, "lora_out": 9.0}}, updates={"l0": 2.0, "l7": 6.0})
    assert (a2.layer, a2.reason, a2.value, a2.threshold) == ("l7", "update", 6.0, 5.0)
    off = AlarmMonitor(AlarmSpec(z_b_ratio=None, update_ratio=None, loss_growth=None))
    assert off.check(0, features={"l": {"x": 1.0, "lora_out": 1e6}}, updates={"l": 1e6}, loss=1e9) is None
    disabled = AlarmMonitor(AlarmSpec(enabled=False))
    assert disabled.check(0, loss=math.nan) is None


@pytest.mark.parametrize("where", ["loss", "z_b", "x", "update"])
def test_non_finite_values_always_fire(where):
    m = AlarmMonitor(AlarmSpec(loss_growth=None, z_b_ratio=None, update_ratio=None))
    kw = {"loss": {"loss": math.nan}, "z_b": {"features": {"q": {"z_b": math.inf, "x": 1.0}}},
          "x": {"features": {"q": {"x": math.nan}}}, "update": {"updates": {"q": math.inf}}}[where]
    a = m.check(7, **kw)
    assert a.reason == "nonfinite" and a.step == 7 and a.feature == where and (a.layer is None) == (where == "loss")
    assert not math.isfinite(a.value)


def test_line_and_metrics():
    a = Alarm(12, "encoder.layer.0.query", "z_b", 11.5, 8.0, "z_b")
    line = alarm_line(a, likely_fix(a, init="A", lr_ratio=1.0))
    assert line.startswith("loradyn alarm: step 12: z_b of encoder.layer.0.query") and "\n" not in line
    assert "likely fix: lower lr_a" in line
    metrics = alarm_metrics(a)
    assert metrics["diverged_step"] == 12.0 and metrics["alarm_layer"] == "encoder.layer.0.query"
    assert (metrics["alarm_feature"], metrics["alarm_reason"], metrics["alarm_threshold"]) == ("z_b", "z_b", 8.0)


def test_likely_fix_names_each_cause():
    a = Alarm(3, "l", "update", 20.0, 8.0, "update")
    assert likely_fix(a, init="A", lr_ratio=1.0, rank=8, alpha_rule="1/r") == "lower lr_a (try 1/4 of it)"
    b = likely_fix(a, init="B", lr_ratio=16.0, rank=8, alpha_rule="1/r")
    assert "Init[B] a lower lr, or switch to Init[A]" in b and "smaller lr_ratio than 16" in b
    assert "arXiv 2406.08447" in b and "arXiv 2402.12354" in b
    rs = likely_fix(a, init="A", lr_ratio=1.0, rank=128, alpha_rule="rslora")
    assert "rsLoRA at rank 128" in rs and "r^-1/4" in rs and "arXiv 2602.06204" in rs
    assert "rsLoRA" not in likely_fix(a, init="A", rank=8, alpha_rule="rslora")  # low rank: not the cause
    assert "rsLoRA" not in likely_fix(a, init="B", rank=128, alpha_rule="rslora")  # μA's rank rule is Init[A]'s
    assert "lora_alpha proportional to r at rank 64" in likely_fix(a, rank=64, alpha_rule="1")
    assert "rank" not in likely_fix(a, rank=256, alpha_rule="alpha/r")  # fixed alpha: lr does not move with r
    assert likely_fix(a, alpha_rule="nonsense") == "lower lr_a (try 1/4 of it)"
    nan = Alarm(0, None, "loss", math.nan, math.inf, "nonfinite")
    assert "gradient clipping" in likely_fix(nan)
