"""User functions named in a spec as ``"package.module:function"`` (the ``python`` kind's
``task.entry``, ``hf-sft``'s ``task.score``), imported with one-line errors."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import LoradynError

__all__ = ["check_reference", "load_callable"]


def check_reference(ref: Any, what: str) -> str:
    """``ref`` has the form ``module.path:function`` (checked without importing anything)."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise LoradynError(f"{what} must name a function as 'package.module:function', got {ref!r}")
    return ref


def load_callable(ref: str, *, what: str) -> Callable[..., Any]:
    """Import ``module.path:function`` and return the function; one line naming the fix otherwise."""
    module_name, _, attr = check_reference(ref, what).partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - the user's module may raise anything on import
        raise LoradynError(f"{what} {ref!r}: module {module_name!r} cannot be imported "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                           "put it on PYTHONPATH or install its package") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise LoradynError(f"{what} {ref!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise LoradynError(f"{what} {ref!r} is a {type(obj).__name__}, not a function")
    return obj
