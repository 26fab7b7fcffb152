"""loradyn's built-in task kinds: one module per kind, each defining ``KIND`` (a
:class:`loradyn.tasks.TaskKind`). :mod:`loradyn.tasks.registry` finds them by scanning this
package, so adding a kind is adding one module here; modules whose names start with ``_`` hold
shared helpers and are not scanned.

Kind modules stay light: they import spec classes (plain dataclasses) at the top and the heavy
training code (torch, transformers) only inside the functions of the record.
"""
