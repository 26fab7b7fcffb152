"""``synthetic``: the teacher–student LoRA model of :mod:`loradyn.synthetic` (docs/theory.md §7)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from ...synthetic.spec import SyntheticSpec
from ..registry import TaskKind, TrialResult


def run_pack(configs: Sequence[Any]) -> list[TrialResult]:
    from ...synthetic.task import run_pack

    return run_pack(configs)


def pack_key(config: Any) -> Hashable:
    from ...synthetic.task import pack_key

    return pack_key(config)


def max_pack_size(config: Any) -> int:
    from ...synthetic.task import max_pack_size

    return max_pack_size(config)


def validate(config: Any) -> None:
    from ...synthetic.task import validate

    validate(config)


KIND = TaskKind(
    kind="synthetic",
    spec_cls=SyntheticSpec,
    run_pack=run_pack,
    pack_key=pack_key,
    max_pack_size=max_pack_size,
    validate=validate,
    metrics={"final_train_loss": "min", "test_loss": "min"},
    description="teacher–student LoRA model f(x) = W_out·φ((W* + α·B·A)·φ(W_in x)), full-batch Adam",
)
