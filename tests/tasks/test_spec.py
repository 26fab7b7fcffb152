"""Frozen specs of the real-model tasks (loradyn.tasks.spec): local checks only, no I/O."""

from __future__ import annotations

import pytest

from loradyn.errors import SpecError
from loradyn.serialize import spec_from_dict
from loradyn.tasks.spec import GsmTrial, SentimentTrial, TrainSpec, WikiLMTrial


def test_building_a_spec_touches_no_file_or_package(monkeypatch):
    import importlib.util

    def forbidden(*args, **kwargs):
        raise AssertionError("a spec looked for a package")

    monkeypatch.setattr(importlib.util, "find_spec", forbidden)
    for cls, kind, model in ((SentimentTrial, "sentiment", "/no/such/folder"), (WikiLMTrial, "wiki-lm", "smollm2"),
                             (GsmTrial, "gsm", "tiny-llama")):
        trial = spec_from_dict(cls, {"task": {"kind": kind, "model": model}})
        assert trial.task.model == model


@pytest.mark.parametrize("train, match", [
    ({"steps": 0}, "train.steps"),
    ({"batch_size": -1}, "train.batch_size"),
    ({"warmup_steps": -1}, "train.warmup_steps"),
    ({"max_grad_norm": 0}, "max_grad_norm"),
    ({"schedule": "cosine"}, "schedule"),
])
def test_train_spec_rejects_bad_values_in_one_line(train, match):
    with pytest.raises(SpecError, match=match) as err:
        spec_from_dict(TrainSpec, train)
    assert "\n" not in str(err.value)


def test_task_sections_reject_unknown_keys_and_bad_sizes():
    with pytest.raises(SpecError, match="unknown key task.n_trian"):
        spec_from_dict(SentimentTrial, {"task": {"kind": "sentiment", "n_trian": 5}})
    with pytest.raises(SpecError, match="task.n_val"):
        spec_from_dict(SentimentTrial, {"task": {"kind": "sentiment", "n_val": 0}})
