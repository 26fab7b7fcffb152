"""The record shared by the real-model kinds: lazy wrappers around :mod:`loradyn.tasks.runner`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ..registry import Direction, TaskKind, TrialResult


def _runner():
    from .. import runner

    return runner


def run_pack(configs: Sequence[Any]) -> list[TrialResult]:
    return _runner().run_pack(configs)


def pack_key(config: Any) -> Hashable:
    return _runner().pack_key(config)


def max_pack_size(config: Any) -> int:
    return _runner().max_pack_size(config)


def validate(config: Any) -> None:
    _runner().validate(config)


def describe(config: Any) -> str:
    return _runner().describe(config)


def real_kind(kind: str, spec_cls: type, metrics: Mapping[str, Direction], description: str) -> TaskKind:
    """A real-model kind: trials trained by :func:`loradyn.tasks.runner.run_pack` (packs or solo runs)."""
    return TaskKind(kind=kind, spec_cls=spec_cls, run_pack=run_pack, pack_key=pack_key,
                    max_pack_size=max_pack_size, validate=validate, describe=describe, metrics=metrics,
                    description=description)
