"""Dotted key=value overrides and grid axes (loradyn.overrides): the one parser of sweep, reproduce,
validate and spec files."""

from __future__ import annotations

from typing import Any

import pytest

from loradyn.errors import SpecError
from loradyn.overrides import (
    apply_overrides,
    axis_values,
    log2_grid,
    parse_overrides,
    parse_value,
    set_dotted,
)

BASE = {"name": "base", "lora": {"rank": 4, "alpha": 4.0}, "optim": {"lr_a": 0.001}}


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg





def test_overrides_create_missing_sections() -> None:
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    assert apply_overrides({"a": None}, ["a.b=x"]) == {"a": {"b": "x"}}


def test_overrides_later_wins_and_value_may_hold_equals() -> None:
    out = apply_overrides({}, ["name=a", "name=b", "extra=x=y", " steps = 3"])
    assert out == {"name": "b", "extra": "x=y", "steps": 3}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("lora.rank", "override 'lora.rank' is not of the form key=value"),
        ("=3", "override '=3' has an empty key"),
        ("name.first=x", "override 'name.first': 'name' is not a section"),
        ("lora.rank.value=3", "override 'lora.rank.value': 'rank' is not a section"),
    ],
)
def test_bad_overrides(override: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as err:
        apply_overrides(BASE, [override])
    _one_line(err)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", 4),
        ("0.5", 0.5),
        ("1e-3", "1e-3"),  # YAML 1.1: no dot, so a string (fields annotated float coerce it)
        ("1.0e-3", 1e-3),
        ("true", True),
        ("null", None),
        ("A", "A"),
        ("[1, 2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("", ""),
        ("[1,", "[1,"),  # not valid YAML: kept as text
    ],
)
def test_parse_value(text: str, value: Any) -> None:
    assert parse_value(text) == value


def test_parse_overrides_keeps_order_and_reads_grid_shorthand():
    assert parse_overrides(["a=1", "b.c=[1,2]", "d={log2: [-3, -1, 1]}"]) == [
        ("a", 1), ("b.c", [1, 2]), ("d", {"log2": [-3, -1, 1]})]
    with pytest.raises(SpecError, match="dotted key"):
        parse_overrides(["a..b=1"])


def test_set_dotted_names_its_source():
    data = {"train": 5}
    with pytest.raises(SpecError, match="grid.train.steps: 'train' is not a section"):
        set_dotted(data, "train.steps", 3, where="grid.train.steps")


def test_axis_values_lists_and_log2_grids():
    assert axis_values("optim.lr_a", [1, 2]) == [1, 2]
    assert axis_values("optim.lr_a", {"log2": [-3, -1, 1]}) == [0.125, 0.25, 0.5]
    assert axis_values("optim.lr_a", {"log2": [-2, -1]}) == log2_grid(-2, -1, 0.5)
    for bad, match in (([], "empty list"), ({"lin": [1]}, "log2"), ({"log2": [1]}, r"\[lo, hi\]"), (3, "expected a list")):
        with pytest.raises(SpecError, match=match) as err:
            axis_values("optim.lr_a", bad)
        assert _one_line(err).startswith("grid.optim.lr_a")


def test_an_inline_mapping_with_a_key_written_twice_is_refused() -> None:
    with pytest.raises(SpecError, match="duplicate key 'a'.*keep one"):
        parse_overrides(["grid={a: 1, a: 2}"])


@pytest.mark.parametrize("grid", [(-2000, 5, 0.5), (1, 1e6, 1e5), (1030, 1040, 1)])
def test_log2_grids_beyond_float_range_are_one_line(grid) -> None:
    with pytest.raises(SpecError, match="exponents must lie in"):
        log2_grid(*grid)
