"""The generic spec machinery (loradyn.serialize): coercion, nesting, overrides, YAML files, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import pytest

from loradyn.errors import SpecError
from loradyn.overrides import apply_overrides
from loradyn.serialize import load_spec, load_yaml, save_spec, spec_from_dict, spec_to_dict
from loradyn.specs import LoraSpec


class Color(Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class OptimToySpec:
    lr_a: float = 1e-3
    lr_ratio: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    name: Literal["adam", "sgd"] = "adam"


@dataclass(frozen=True)
class ExperimentToySpec:
    name: str
    lora: LoraSpec = field(default_factory=LoraSpec)
    optim: OptimToySpec = field(default_factory=OptimToySpec)
    seeds: tuple[int, ...] = (0, 1, 2)
    grid: dict[str, list[float]] = field(default_factory=dict)
    color: Color = Color.RED
    steps: int | None = None
    extra: Any = None


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


BASE = {"name": "base", "lora": {"rank": 4, "alpha": 4.0}, "optim": {"lr_a": 0.001}}


# --- overrides into nested specs (the parser itself: tests/test_overrides.py) ---------------------
def test_overrides_then_coercion_into_nested_spec() -> None:
    data = apply_overrides(
        BASE,
        [
            "lora.rank=16",
            "lora.rslora=true",
            "lora.target_modules=[q_proj,v_proj,o_proj]",
            "optim.lr_a=1e-4",  # YAML 1.1 reads this as a string: coerced by the float annotation
            "optim.betas=[0.8, 0.99]",
            "optim.name=sgd",
            "seeds=[3, 4]",
            "grid={optim.lr_a: [1e-3, 0.01]}",
            "color=blue",
            "steps=null",
        ],
    )
    spec = spec_from_dict(ExperimentToySpec, data)
    assert spec.lora == LoraSpec(rank=16, alpha=4.0, rslora=True, target_modules=("q_proj", "v_proj", "o_proj"))
    assert spec.optim == OptimToySpec(lr_a=1e-4, betas=(0.8, 0.99), name="sgd")
    assert isinstance(spec.optim.lr_a, float) and isinstance(spec.optim.betas, tuple)
    assert spec.seeds == (3, 4) and spec.color is Color.BLUE and spec.steps is None
    assert spec.grid == {"optim.lr_a": [1e-3, 0.01]} and all(isinstance(v, float) for v in spec.grid["optim.lr_a"])


# --- spec_from_dict / spec_to_dict ----------------------------------------------------------------
def test_round_trip_nested_dict() -> None:
    spec = spec_from_dict(
        ExperimentToySpec,
        {"name": "x", "lora": {"rank": 2}, "grid": {"a": [1, 2]}, "color": "blue", "steps": 5},
    )
    data = spec_to_dict(spec)
    assert data["lora"]["rank"] == 2 and data["color"] == "blue" and data["seeds"] == [0, 1, 2]
    assert data["optim"]["betas"] == [0.9, 0.999]
    assert spec_from_dict(ExperimentToySpec, data) == spec


def test_nested_unknown_key_names_the_path() -> None:
    with pytest.raises(SpecError) as err:
        spec_from_dict(ExperimentToySpec, {"name": "x", "lora": {"ranks": 2}})
    msg = _one_line(err)
    assert msg.startswith("unknown key lora.ranks in LoraSpec; valid keys: alpha, distribution,")
    with pytest.raises(SpecError, match="unknown key nmae in ExperimentToySpec; valid keys: color, extra, grid, lora, name, optim, seeds, steps"):
        spec_from_dict(ExperimentToySpec, {"nmae": "x"})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"name": "x", "lora": {"rank": 0}}, "lora: rank must be an integer >= 1, got 0"),
        ({"name": "x", "lora": 4}, "lora: expected a mapping for LoraSpec, got 4"),
        ({"name": "x", "optim": {"lr_a": "fast"}}, "optim.lr_a: expected a number, got 'fast'"),
        ({"name": "x", "optim": {"betas": [0.9]}}, "optim.betas: expected 2 items, got 1"),
        ({"name": "x", "optim": {"name": "adamw"}}, "optim.name: 'adamw' is not one of 'adam', 'sgd'"),
        ({"name": "x", "seeds": [0, "one"]}, "seeds[1]: expected an integer, got 'one'"),
        ({"name": "x", "seeds": 3}, "seeds: expected a list, got 3"),
        ({"name": "x", "grid": [1]}, "grid: expected a mapping, got [1]"),
        ({"name": "x", "grid": {"a": ["big"]}}, "grid.a[0]: expected a number, got 'big'"),
        ({"name": "x", "color": "green"}, "color: 'green' is not one of 'red', 'blue'"),
        ({"name": "x", "steps": 1.5}, "steps: expected int | None, got 1.5"),
        ({"name": ["x"]}, "name: expected a string, got ['x']"),
        ({}, "ExperimentToySpec: "),  # missing required field
    ],
)
def test_coercion_errors_are_one_line_with_path(data: dict, match: str) -> None:
    with pytest.raises(SpecError) as err:
        spec_from_dict(ExperimentToySpec, data)
    assert match in _one_line(err)


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="LoraSpec: expected a mapping, got \\[1, 2\\]"):
        spec_from_dict(LoraSpec, [1, 2])  # type: ignore[arg-type]


# --- files ---------------------------------------------------------------------------------------
def test_save_and_load_with_overrides(tmp_path: Path) -> None:
    spec = spec_from_dict(ExperimentToySpec, {"name": "exp", "lora": {"rank": 8, "init": "B"}})
    path = save_spec(spec, tmp_path / "deep" / "exp.yaml")
    assert load_spec(ExperimentToySpec, path) == spec
    changed = load_spec(ExperimentToySpec, path, ["lora.rank=2", "optim.lr_ratio=4"])
    assert changed.lora.rank == 2 and changed.lora.init == "B" and changed.optim.lr_ratio == 4.0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file '.*nope.yaml' does not exist") as err:
        load_spec(LoraSpec, tmp_path / "nope.yaml")
    _one_line(err)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory, expected a YAML file") as err:
        load_yaml(tmp_path)
    _one_line(err)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("rank: 4\n  alpha: [1, 2\n", r"malformed YAML in '.*bad.yaml' at line \d+"),
        ("rank: [1, 2\n", r"malformed YAML in '.*bad.yaml' at line \d+"),
        ("a: b: c\n", r"malformed YAML in '.*bad.yaml' at line 1"),
        ("\trank: 4\n", r"malformed YAML in '.*bad.yaml'"),
    ],
)
def test_malformed_yaml(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=match) as err:
        load_spec(LoraSpec, path)
    _one_line(err)


def test_yaml_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="must hold a YAML mapping, not list") as err:
        load_spec(LoraSpec, path)
    _one_line(err)


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_spec(LoraSpec, path) == LoraSpec()
    assert load_spec(LoraSpec, path, ["rank=2"]) == LoraSpec(rank=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: {steps: 1}\nlora: {rank: 4}\ntrain: {steps: 2}\n",
         "duplicate key 'train' in '{path}' at lines 1 and 3: keep one"),
        ("base:\n  lora:\n    rank: 4\n    alpha: 8\n    rank: 8\n",
         "duplicate key 'rank' in '{path}' at lines 3 and 5: keep one"),
        ("grid:\n  optim.lr_a: [1, 2]\n  lora.init: [A]\n  optim.lr_a: [3]\n",
         "duplicate key 'optim.lr_a' in '{path}' at lines 2 and 4: keep one"),
        ("seeds: [0]\nlist:\n  - {a: 1, a: 2}\n", "duplicate key 'a' in '{path}' at line 3: keep one"),
    ],
)
def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_yaml(path)
    assert str(err.value) == message.format(path=path)
    _one_line(err)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("defaults: &d {rank: 4, alpha: 8}\nlora:\n  <<: *d\n  rank: 2\n")
    assert load_yaml(path)["lora"] == {"rank": 2, "alpha": 8}
