"""The alarm in the real-model training loop: an alarmed adapter stops, the rest of its pack does not notice."""

from __future__ import annotations

import pytest
import torch

from real_tasks import require_task_wheels, tiny_sentiment

require_task_wheels()

from loradyn.tasks.runner import recipe_for  # noqa: E402
from loradyn.tasks.train import train_trials  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _trial(lr, seed, ratio=4.0, init="A", **train):
    return tiny_sentiment(optim={"name": "adamw", "lr_a": lr, "lr_ratio": ratio, "weight_decay": 0.01},
                          lora={"rank": 2, "alpha": 4, "init": init, "target_modules": ["query", "value"]},
                          train={"steps": 6, "batch_size": 8, "data_order_seed": 0, "probe_every": 2, **train},
                          seed=seed)


def _adapter(model, name):
    return {n.replace(f".{name}.", "."): p.detach().clone() for n, p in model.named_parameters() if f".{name}." in n}


def test_alarmed_member_stops_and_the_others_are_bitwise_unchanged():
    good = [_trial(3e-3, 0), _trial(1e-3, 1, init="B")]
    bad = _trial(30.0, 2, ratio=16.0, init="B")  # runs away at once, but stays finite
    recipe = recipe_for(good[0].task)
    with_bad, (m3,) = train_trials(recipe, [good[0], bad, good[1]], pack=True, keep_model=True,
                                   base=recipe.base_model(torch.float64))
    without, (m2,) = train_trials(recipe, good, pack=True, keep_model=True, base=recipe.base_model(torch.float64))
    alarmed = with_bad[1]
    assert alarmed.status == "diverged" and alarmed.metrics["steps_done"] < 6
    assert alarmed.metrics["diverged_step"] == alarmed.metrics["alarm_step"] < 5
    assert alarmed.metrics["alarm_reason"] in ("update", "z_b") and alarmed.metrics["alarm_layer"].endswith(("query", "value"))
    assert alarmed.error.startswith("loradyn alarm: step") and "switch to Init[A]" in alarmed.error
    assert "val_accuracy" not in alarmed.metrics
    for name_with, name_without, a, b in (("t0", "t0", with_bad[0], without[0]), ("t2", "t1", with_bad[2], without[1])):
        assert a.status == b.status == "done" and a.error is None and "alarm_step" not in a.metrics
        assert a.metrics == b.metrics  # bitwise: every metric, float for float
        assert a.probes == b.probes and len(a.probes) > 0 and not any(r["feature"] == "x" for r in a.probes)
        pa, pb = _adapter(m3, name_with), _adapter(m2, name_without)
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_alarm_off_keeps_the_old_loop_and_the_alarm_does_not_change_healthy_trials():
    on = [_trial(3e-3, 0), _trial(1e-3, 1)]
    off = [_trial(3e-3, 0, alarm={"enabled": False}), _trial(1e-3, 1, alarm={"enabled": False})]
    recipe = recipe_for(on[0].task)
    r_on = train_trials(recipe, on, pack=True, base=recipe.base_model(torch.float64))
    r_off = train_trials(recipe, off, pack=True, base=recipe.base_model(torch.float64))
    for a, b in zip(r_on, r_off):
        assert a.status == b.status == "done" and a.metrics == b.metrics and a.probes == b.probes


def test_a_solo_run_stops_at_the_alarm():
    res = train_trials(recipe_for(_trial(1, 0).task), [_trial(30.0, 0, ratio=16.0, probe_every=0)], pack=False)
    (r,) = res
    assert r.status == "diverged" and r.metrics["steps_done"] == r.metrics["alarm_step"] + 1 and r.probes == []


def test_pack_and_solo_runs_agree_on_the_alarm():
    configs = [_trial(3e-3, 0), _trial(30.0, 2, ratio=16.0, init="B"), _trial(1e-3, 1, init="B")]
    recipe = recipe_for(configs[0].task)
    solo = train_trials(recipe, configs, pack=False, base=recipe.base_model(torch.float64))
    packed = train_trials(recipe, configs, pack=True, base=recipe.base_model(torch.float64))
    assert [r.status for r in solo] == [r.status for r in packed] == ["done", "diverged", "done"]
    keys = ("alarm_step", "alarm_layer", "alarm_feature", "alarm_reason")
    assert [solo[1].metrics[k] for k in keys] == [packed[1].metrics[k] for k in keys]
    assert solo[1].metrics["alarm_value"] == pytest.approx(packed[1].metrics["alarm_value"], rel=1e-9)
    for a, b in zip(solo[::2], packed[::2]):
        assert a.metrics["final_train_loss"] == pytest.approx(b.metrics["final_train_loss"], rel=1e-10)
