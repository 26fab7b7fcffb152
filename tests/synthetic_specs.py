"""Small float64 synthetic specs for the engine tests, built from dotted sections."""

from __future__ import annotations

from loradyn.synthetic import SyntheticSpec


def small_spec(task: dict, steps: int, /, **sections) -> SyntheticSpec:
    """``task`` and ``train.steps`` (float64) as given; each keyword a section updated in place
    (``task={"form": "residual"}``, ``lora={"rank": 2}``, ``train={"alarm": ...}``), ``seed`` the
    spec's seed."""
    base = {"task": dict(task), "train": {"steps": steps, "dtype": "float64"}}
    for key, value in sections.items():
        if key == "seed":
            base["seed"] = value
        else:
            base.setdefault(key, {}).update(value)
    return SyntheticSpec.from_dict(base)
