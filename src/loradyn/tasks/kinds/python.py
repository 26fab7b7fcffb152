"""``python``: any function of yours as a trial (``task.entry: "mypkg.train:run_trial"``)."""

from collections.abc import Sequence
from typing import Any

from ..registry import TaskKind, TrialResult


def run_pack(configs: Sequence[Any]) -> list[TrialResult]:
    from ..python_trial import run_pack

    return run_pack(configs)


def make_config(plain: Any) -> Any:
    from ..python_trial import make_config

    return make_config(plain)


def validate(config: Any) -> None:
    from ..python_trial import validate

    validate(config)




KIND = TaskKind(
    kind="python",
    spec_cls=dict,
    run_pack=run_pack,
    make_config=make_config,
    validate=validate,
    metrics={},  # the user's function names its metrics; the spec's metric/mode pick one
    description="your own training function: run_trial(config, report) -> {metric: number}",
)
