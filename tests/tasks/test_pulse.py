"""Heartbeats of running packs (loradyn.tasks.pulse)."""

from __future__ import annotations

from loradyn.tasks import pulse


def test_reports_go_to_the_sink_at_most_once_a_second_and_always_the_last(monkeypatch):
    got = []
    clock = iter([0.0, 0.2, 0.5, 1.3, 1.4, 1.5])
    monkeypatch.setattr(pulse.time, "monotonic", lambda: next(clock))
    with pulse.reporting(lambda done, total: got.append((done, total))):
        for done in (1, 2, 3, 4, 5):
            pulse.report_steps(done, 10)
        pulse.report_steps(10, 10)  # the last always leaves
    assert got == [(1, 10), (4, 10), (10, 10)]


def test_without_a_sink_and_with_a_broken_sink_nothing_happens():
    pulse.report_steps(1, 2)  # outside a sweep

    def broken(done, total):
        raise RuntimeError("driver gone")

    with pulse.reporting(broken):
        pulse.report_steps(2, 2)  # a lost heartbeat never fails a trial
    with pulse.reporting(None):
        pulse.report_steps(2, 2)
