"""Progress with ETA on stderr: a tqdm bar on a terminal, plain periodic lines in logs, or nothing.

tqdm is imported lazily; without it (or when stderr is not a terminal) progress is one line every
few seconds: ``[name] 12/40 trials (done 10, diverged 1, failed 1) 0:12 elapsed, eta 0:31``.

While packs run, their heartbeats (steps done, :mod:`loradyn.tasks.pulse`) show at least every
:data:`BEAT_TTY` seconds on a terminal (in the bar) and every :data:`BEAT_LOG` seconds in logs
(a line ``[name] running 2 packs: steps 120/400, 40/400; 12/40 trials finished, 0:45 elapsed``),
whether or not a pack has reported (``LORADYN_HEARTBEAT_SECONDS`` overrides both).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

BEAT_TTY, BEAT_LOG = 10.0, 60.0

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished trials out of ``total``; ``initial`` were finished before this run."""

    def __init__(self, desc: str, total: int, initial: int = 0, *, quiet: bool = False,
                 unit: str = "trial", every: float = 5.0) -> None:
        self.desc, self.total, self.initial, self.unit = desc, total, initial, unit
        self.n = initial
        self.quiet = quiet
        self.every = every
        self._start = time.monotonic()
        self._last = 0.0
        self._bar = None
        self._counts: dict[str, int] = {}
        self._running: dict[str, tuple[int, int]] = {}
        self._last_beat = time.monotonic()
        env = os.environ.get("LORADYN_HEARTBEAT_SECONDS")
        tty = sys.stderr.isatty()
        self.beat_every = float(env) if env else (BEAT_TTY if tty else BEAT_LOG)
        if quiet:
            return
        if sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                                 file=sys.stderr)
            except ImportError:
                self._bar = None

    def update(self, n: int, counts: Mapping[str, int] | None = None) -> None:
        """Set the number finished (absolute) and the per-status counts."""
        if counts is not None:
            self._counts = {k: v for k, v in counts.items() if v}
        delta, self.n = n - self.n, n
        if self.quiet:
            return
        if self._bar is not None:
            if self._counts:
                self._bar.set_postfix(self._counts, refresh=False)
            self._bar.update(delta)
            return
        now = time.monotonic()
        if now - self._last >= self.every or (self.n >= self.total and delta):
            self._last = now
            self._line()

    def plan(self, text: str) -> None:
        """Say at once what will run (before the first pack finishes)."""
        if not self.quiet:
            print(f"[{self.desc}] {text}", file=sys.stderr, flush=True)

    def started(self, pack: str) -> None:
        self._running.setdefault(pack, (0, 0))

    def beat(self, pack: str, done: int, total: int) -> None:
        """A running pack's heartbeat: ``done`` of ``total`` steps."""
        self._running[pack] = (done, total)
        self.tick()

    def finished(self, pack: str) -> None:
        self._running.pop(pack, None)

    def tick(self) -> None:
        """Show the running packs when a heartbeat is due (called from the driver's loop)."""
        now = time.monotonic()
        if self.quiet or now - self._last_beat < self.beat_every:
            return
        self._last_beat = now
        steps = ", ".join(f"{d}/{t}" if t else "started" for d, t in self._running.values()) or "none reporting"
        text = f"running {len(self._running)} pack{'s' if len(self._running) != 1 else ''}: steps {steps}"
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
            return
        elapsed = format_seconds(time.monotonic() - self._start)
        print(f"[{self.desc}] {text}; {self.n}/{self.total} {self.unit}s finished, {elapsed} elapsed",
              file=sys.stderr, flush=True)

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        done_here = self.n - self.initial
        left = self.total - self.n
        eta = format_seconds(elapsed / done_here * left) if done_here > 0 else "?"
        counts = ", ".join(f"{k} {v}" for k, v in self._counts.items())
        counts = f" ({counts})" if counts else ""
        print(f"[{self.desc}] {self.n}/{self.total} {self.unit}s{counts} "
              f"{format_seconds(elapsed)} elapsed, eta {eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
