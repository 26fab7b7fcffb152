"""Heartbeats of a running pack: how far its training is, reported by task code, shown by the driver.

A task's ``run_pack`` calls :func:`report_steps` as its training advances (``done`` of ``total``
optimizer steps of the whole pack). Outside a sweep, or when nothing listens, the call does
nothing. Within a sweep, :mod:`loradyn.sweep.jobs` installs a sink for the pack being run: in the
driver's own process (serial executor) it updates the progress display directly; in a worker
process or a Ray task it sends ``(pack, done, total)`` to the driver. At most one report a second
leaves the process (and always the last), so calling it at every step costs nothing measurable.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

__all__ = ["MIN_INTERVAL", "report_steps", "reporting"]

MIN_INTERVAL = 1.0  # seconds between two reports that leave a process

_SINK: Callable[[int, int], None] | None = None
_LAST = 0.0


def report_steps(done: int, total: int) -> None:
    """Tell the sweep driver that ``done`` of ``total`` steps of the current pack are done."""
    global _LAST
    sink = _SINK
    if sink is None:
        return
    now = time.monotonic()
    if now - _LAST < MIN_INTERVAL and done < total:
        return
    _LAST = now
    try:
        sink(int(done), int(total))
    except Exception:  # noqa: BLE001 - a lost heartbeat must never fail a trial
        pass


@contextlib.contextmanager
def reporting(sink: Callable[[int, int], None] | None) -> Iterator[None]:
    """Within: :func:`report_steps` goes to ``sink`` (None: nowhere)."""
    global _SINK, _LAST
    previous, _SINK, _LAST = _SINK, sink, -math.inf  # the first report always leaves
    try:
        yield
    finally:
        _SINK = previous
