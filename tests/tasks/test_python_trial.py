"""The ``python`` kind: a user's function as a sweep trial (loradyn.tasks.python_trial)."""

from __future__ import annotations

import math

import pytest

from loradyn.errors import LoradynError, SpecError
from loradyn.sweep import load_curves, run_sweep
from loradyn.tasks import get_task
from loradyn.tasks.python_trial import make_config

SPEC = {
    "name": "py",
    "base": {"task": {"kind": "python", "entry": "python_trials:quadratic"}, "optim": {"lr_a": 0.1},
             "train": {"steps": 5}, "extra": {"scale": 2.0}},
    "grid": {"optim.lr_a": [0.05, 0.2, 0.4], "train.steps": [3, 6]},
    "seeds": 2,
    "metric": "loss",
    "mode": "min",
}


def _reference(lr, steps, seed):
    w = 0.1 * seed
    for _ in range(steps):
        w -= lr * 2 * (w - 0.3)
    return (w - 0.3) ** 2


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_any_dotted_key_reaches_the_function_and_metrics_come_back(tmp_path, executor):
    df = run_sweep(SPEC, tmp_path / executor, executor=executor, workers=2, quiet=True)
    assert len(df) == 12 and set(df["status"]) == {"done"}
    for row in df.to_dict("records"):
        expected = _reference(row["optim.lr_a"], row["train.steps"], row["seed"])
        assert row["loss"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert row["scale"] == 2.0 and row["extra.scale"] == 2.0
    curves = load_curves(tmp_path / executor)
    assert set(curves["metric"]) == {"loss"} and curves.groupby("trial_id")["step"].max().max() == 6


def test_resume_runs_nothing_twice(tmp_path):
    first = run_sweep(SPEC, tmp_path, executor="serial", quiet=True)
    again = run_sweep({**SPEC, "seeds": 3}, tmp_path, executor="serial", quiet=True)
    assert len(again) == 18 and (again.merge(first, on="trial_id")["loss_x"] == again.merge(first, on="trial_id")["loss_y"]).all()


def test_bad_return_values_fail_or_diverge_the_trial_only(tmp_path):
    spec = {**SPEC, "grid": {"task.entry": ["python_trials:quadratic", "python_trials:blows_up",
                                            "python_trials:returns_a_list", "python_trials:raises"]}, "seeds": 1}
    df = run_sweep(spec, tmp_path, executor="serial", quiet=True).set_index("task.entry")
    assert df.loc["python_trials:quadratic", "status"] == "done"
    assert df.loc["python_trials:blows_up", "status"] == "diverged" and math.isinf(df.loc["python_trials:blows_up", "loss"])
    assert df.loc["python_trials:returns_a_list", "status"] == "failed"
    assert "not a dict of numbers" in df.loc["python_trials:returns_a_list", "error"]
    assert df.loc["python_trials:raises", "error"] == "RuntimeError: the user's training crashed"


@pytest.mark.parametrize("entry, match", [
    ("no_such_module_xyz:fn", "cannot be imported"),
    ("python_trials:nope", "has no attribute 'nope'"),
    ("python_trials:NOT_CALLABLE", "not a function"),
    ("python_trials.quadratic", "'package.module:function'"),
])
def test_an_entry_that_cannot_be_called_is_one_line_before_any_trial(tmp_path, entry, match):
    spec = {**SPEC, "base": {**SPEC["base"], "task": {"kind": "python", "entry": entry}}}
    with pytest.raises(LoradynError, match=match) as err:
        run_sweep(spec, tmp_path, executor="serial", quiet=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sweep.db").exists()  # rejected before the store is written


def test_config_values_must_be_plain_data():
    with pytest.raises(SpecError, match="seed must be an integer"):
        make_config({"task": {"kind": "python", "entry": "a:b"}, "seed": -1})
    with pytest.raises(SpecError, match="cannot go into a python trial"):
        make_config({"task": {"kind": "python", "entry": "a:b"}, "x": object()})
    assert get_task("python").metrics == {}


def test_a_sweep_whose_every_trial_failed_still_has_its_metric_column(tmp_path):
    """Callers rank the table by the spec's metric: it is there (NaN) even when no trial reported it."""
    spec = {**SPEC, "base": {**SPEC["base"], "task": {"kind": "python", "entry": "python_trials:raises"}}}
    df = run_sweep(spec, tmp_path, executor="serial", quiet=True)
    assert set(df["status"]) == {"failed"} and "loss" in df.columns and df["loss"].isna().all()
