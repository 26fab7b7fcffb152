"""Dotted ``key=value`` overrides and grid axes: the one parser behind ``loradyn sweep``,
``loradyn reproduce``, ``loradyn validate`` and :meth:`LoraSpec.from_yaml <loradyn.LoraSpec.from_yaml>`.

* ``optim.lr_a=1e-3`` sets a nested value (the value side is read as YAML: ``4`` -> 4,
  ``[1,2]`` -> a list, ``A`` -> ``'A'``, ``{log2: [-10, -6, 1]}`` -> a mapping);
* a grid axis is a non-empty list of values or ``{log2: [lo, hi, step]}`` (2^lo, 2^(lo+step), …, 2^hi).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .errors import SpecError
from .yaml_strict import DuplicateKey, UniqueKeyLoader

__all__ = [
    "apply_overrides",
    "axis_values",
    "log2_grid",
    "parse_override",
    "parse_overrides",
    "parse_value",
    "set_dotted",
]

MAX_AXIS = 10_000
MAX_EXPONENT = 1000  # 2.0 ** 1024 overflows a float


def parse_value(text: str) -> Any:
    """The value side of ``key=value``, read as YAML (text that is not YAML stays text).

    Raises:
        SpecError: an inline mapping that writes one key twice.
    """
    if not text.strip():
        return ""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKey as dup:
        raise SpecError(f"duplicate key {dup.key!r} in the value {text!r}: keep one") from None
    except yaml.YAMLError:
        return text


def parse_override(item: Any) -> tuple[str, Any]:
    """``"a.b=1"`` -> ``("a.b", 1)``; one line naming the form for anything else."""
    if not isinstance(item, str) or "=" not in item:
        raise SpecError(f"override {item!r} is not of the form key=value (e.g. optim.lr_a=1e-3)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise SpecError(f"override {item!r} has an empty key")
    if not all(key.split(".")):
        raise SpecError(f"override {item!r}: {key!r} is not a dotted key like optim.lr_a")
    return key, parse_value(raw)


def parse_overrides(items: Sequence[Any]) -> list[tuple[str, Any]]:
    """Every override parsed, in order (a later one wins)."""
    return [parse_override(item) for item in items]


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str | None = None) -> None:
    """``data[a][b] = value`` for ``key = "a.b"``, creating missing (or null) sections.

    ``where`` names the source in errors (default ``override 'a.b'``).
    """
    where = where or f"override {key!r}"
    parts = key.split(".")
    if not all(parts):
        raise SpecError(f"{where}: {key!r} is not a dotted key like optim.lr_a")
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise SpecError(f"{where}: {part!r} is not a section")
        node = node[part]
    node[parts[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with dotted ``key=value`` overrides applied."""
    out = copy.deepcopy(dict(data))
    for key, value in parse_overrides(overrides):
        set_dotted(out, key, value)
    return out


def log2_grid(lo: float, hi: float, step: float = 0.5) -> list[float]:
    """``[2**lo, 2**(lo+step), ..., 2**hi]`` (inclusive; exponents rounded to 1e-9)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi, step)):
        raise SpecError(f"log2 grid needs three numbers [lo, hi, step], got {[lo, hi, step]!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(step)) or step <= 0 or hi < lo:
        raise SpecError(f"log2 grid [lo, hi, step] needs lo <= hi and step > 0, got {[lo, hi, step]!r}")
    if max(abs(lo), abs(hi)) > MAX_EXPONENT:
        raise SpecError(f"log2 grid {[lo, hi, step]!r}: exponents must lie in "
                        f"[-{MAX_EXPONENT}, {MAX_EXPONENT}] (the values are 2**exponent)")
    n = int(math.floor((hi - lo) / step + 1e-9)) + 1
    if n > MAX_AXIS:
        raise SpecError(f"log2 grid {[lo, hi, step]!r} has {n} points; use a larger step")
    return [2.0 ** round(lo + i * step, 9) for i in range(n)]


def axis_values(key: str, value: Any) -> list[Any]:
    """The values of one grid axis: a non-empty list, or ``{log2: [lo, hi, step]}``."""
    if isinstance(value, Mapping):
        if set(value) != {"log2"}:
            raise SpecError(
                f"grid.{key}: a mapping must be {{log2: [lo, hi, step]}}, got keys {sorted(value)}"
            )
        spec = value["log2"]
        if not isinstance(spec, (list, tuple)) or len(spec) not in (2, 3):
            raise SpecError(f"grid.{key}: log2 needs [lo, hi] or [lo, hi, step], got {spec!r}")
        try:
            return log2_grid(*spec)
        except SpecError as err:
            raise SpecError(f"grid.{key}: {err}") from None
    if isinstance(value, (list, tuple)):
        if not value:
            raise SpecError(f"grid.{key} is an empty list; give at least one value")
        return list(value)
    raise SpecError(f"grid.{key}: expected a list of values or {{log2: [lo, hi, step]}}, got {value!r}")
