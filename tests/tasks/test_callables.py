"""User functions named as 'package.module:function' (loradyn.tasks.callables)."""

from __future__ import annotations

import pytest

from loradyn.errors import LoradynError
from loradyn.tasks.callables import check_reference, load_callable


def test_a_reference_resolves_to_the_function():
    assert load_callable("os.path:join", what="x")("a", "b") == "a/b"
    assert check_reference("pkg.mod:fn", "task.entry") == "pkg.mod:fn"


@pytest.mark.parametrize("ref, match", [
    ("os.path.join", "'package.module:function'"),
    ("a:b:c", "'package.module:function'"),
    (":fn", "'package.module:function'"),
    (3, "'package.module:function'"),
    ("no_such_module_abc:fn", "cannot be imported"),
    ("os.path:nope", "has no attribute 'nope'"),
    ("os:sep", "not a function"),
])
def test_bad_references_are_one_line(ref, match):
    with pytest.raises(LoradynError, match=match) as err:
        load_callable(ref, what="task.entry")
    assert "\n" not in str(err.value)
