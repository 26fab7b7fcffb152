"""Frozen dataclass specs and their YAML serialization.

One generic mechanism serves every ``*Spec`` in the package:

* ``spec_from_dict(cls, data)`` builds a (possibly nested) frozen dataclass from plain data,
  coercing each value from the field's annotation and rejecting unknown keys with one line that
  lists the valid ones.
* ``spec_to_dict(spec)`` is its inverse (plain, YAML-safe data).
* ``load_spec(cls, path, overrides)`` / ``save_spec(spec, path)`` read and write YAML (dotted
  ``key=value`` overrides: :mod:`loradyn.overrides`).

Cross-field checks live in each spec's ``__post_init__`` (local invariants) or in the function
that uses the values.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import SpecError
from .overrides import apply_overrides
from .yaml_strict import DuplicateKey, UniqueKeyLoader

T = TypeVar("T")

__all__ = [
    "LATE",
    "identity_dict",
    "late_field",
    "load_spec",
    "load_yaml",
    "save_spec",
    "spec_from_dict",
    "spec_to_dict",
]


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to annotation ``tp``; raise SpecError naming ``where`` on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SpecError as err:
                errors.append(str(err))
        raise SpecError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        # allow YAML's 1 vs "1" ambiguity for string literals
        if isinstance(value, (int, float)) and str(value) in args:
            return str(value)
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise SpecError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return spec_from_dict(tp, value, _where=where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in tp)
            raise SpecError(f"{where}: {value!r} is not one of {choices}") from None
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise SpecError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = (args + (Any, Any))[:2] if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SpecError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SpecError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SpecError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def spec_from_dict(cls: type[T], data: Mapping[str, Any] | None, *, _where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from plain data; unknown keys are rejected."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{_where or cls.__name__}: expected a mapping, got {data!r}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        prefix = f"{_where}." if _where else ""
        valid = ", ".join(sorted(fields))
        raise SpecError(f"unknown key {prefix}{unknown[0]!s} in {cls.__name__}; valid keys: {valid}")
    kwargs = {}
    for name, value in data.items():
        where = f"{_where}.{name}" if _where else name
        kwargs[name] = _coerce(value, hints[name], where)
    try:
        return cls(**kwargs)
    except SpecError as err:
        if _where and not str(err).startswith(_where):
            raise SpecError(f"{_where}: {err}") from None
        raise
    except TypeError as err:  # missing required fields
        raise SpecError(f"{_where or cls.__name__}: {err}") from None


#: Field metadata key: a field added after trial ids existed (see :func:`late_field`).
LATE = "loradyn_late"


def late_field(default: Any) -> Any:
    """A spec field added after stores of trials already existed: while it holds its default it is
    left out of a trial's identity (:func:`identity_dict`), so those stores keep their trial ids and
    resume instead of re-running everything."""
    return dataclasses.field(default=default, metadata={LATE: True})


def identity_dict(spec: Any) -> Any:
    """What a trial's id hashes: :func:`spec_to_dict` without late fields (:func:`late_field`) at
    their default. Plain data is returned as it is."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {f.name: identity_dict(getattr(spec, f.name)) for f in dataclasses.fields(spec)
                if not (f.metadata.get(LATE) and getattr(spec, f.name) == f.default)}
    if isinstance(spec, Mapping) and not dataclasses.is_dataclass(spec):
        return {str(k): identity_dict(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [identity_dict(v) for v in spec]
    return spec_to_dict(spec)


def spec_to_dict(spec: Any) -> Any:
    """Plain, YAML-safe data for a (nested) spec."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {f.name: spec_to_dict(getattr(spec, f.name)) for f in dataclasses.fields(spec)}
    if isinstance(spec, enum.Enum):
        return spec.value
    if isinstance(spec, (list, tuple)):
        return [spec_to_dict(v) for v in spec]
    if isinstance(spec, Mapping):
        return {str(k): spec_to_dict(v) for k, v in spec.items()}
    return spec


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; missing files, malformed YAML and duplicate keys give one clear line."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file {str(path)!r} does not exist")
    if path.is_dir():
        raise SpecError(f"spec path {str(path)!r} is a directory, expected a YAML file")
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.load(fh, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
            where = ""
        except UnicodeDecodeError as err:
            line = data[: err.start].count(10) + 1  # newlines before the bad byte
            where = f" (byte 0x{data[err.start]:02x} on line {line})"
        raise SpecError(f"{str(path)!r} is not UTF-8 text{where}: save it as UTF-8") from None
    except OSError as err:
        raise SpecError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    except DuplicateKey as dup:
        lines = f"lines {dup.first} and {dup.second}" if dup.first != dup.second else f"line {dup.first}"
        raise SpecError(f"duplicate key {dup.key!r} in {str(path)!r} at {lines}: keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "parse error"
        raise SpecError(f"malformed YAML in {str(path)!r}{where}: {problem}") from None


def load_spec(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from YAML, applying dotted ``key=value`` overrides."""
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{str(path)!r} must hold a YAML mapping, not {type(data).__name__}")
    return spec_from_dict(cls, apply_overrides(data, overrides))


def save_spec(spec: Any, path: str | Path) -> Path:
    """Write ``spec`` as YAML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        yaml.safe_dump(spec_to_dict(spec), fh, sort_keys=False)
    return path
