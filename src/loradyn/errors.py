"""User-facing errors.

Every error that a user can fix by changing an argument, a spec or a file is a
:class:`LoradynError`. Its message is one line that names the fix. The CLI turns it
into that line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class LoradynError(ValueError):
    """Bad input: one line that says what is wrong and how to fix it."""


class SpecError(LoradynError):
    """A spec (YAML or dict) has an unknown key or an invalid value."""
