"""The real-model training loop (loradyn.tasks.train): schedules, heartbeats, solo runs and packs."""

from __future__ import annotations

import pytest

from real_tasks import require_task_wheels, tiny_sentiment

require_task_wheels()

from loradyn.tasks import pulse  # noqa: E402
from loradyn.tasks.runner import recipe_for  # noqa: E402
from loradyn.tasks.spec import TrainSpec  # noqa: E402
from loradyn.tasks.train import _schedule, train_trials  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_warmup_then_constant_or_linear_decay():
    constant = _schedule(TrainSpec(steps=10, warmup_steps=4), 10)
    assert [constant(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = _schedule(TrainSpec(steps=10, warmup_steps=2, schedule="linear"), 10)
    assert [linear(s) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


@pytest.mark.parametrize("pack", [True, False])
def test_heartbeats_count_the_steps_of_the_whole_pack(monkeypatch, pack):
    monkeypatch.setattr(pulse, "MIN_INTERVAL", 0.0)
    configs = [tiny_sentiment(lora__init=i, seed=s, train__steps=3) for i, s in (("A", 0), ("B", 1))]
    beats = []
    with pulse.reporting(lambda done, total: beats.append((done, total))):
        results = train_trials(recipe_for(configs[0].task), configs, pack=pack)
    assert [r.status for r in results] == ["done", "done"]
    if pack:  # one run of 3 steps for both adapters
        assert beats == [(0, 3), (1, 3), (2, 3)]
    else:  # two solo runs one after the other: 6 steps in all
        assert beats == [(0, 6), (1, 6), (2, 6), (3, 6), (4, 6), (5, 6)]
