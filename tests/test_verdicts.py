"""Three-valued verdicts (loradyn.verdicts): the CI rules on hand-made intervals."""

from __future__ import annotations

import math

import pytest

from loradyn.verdicts import Verdict, fmt_ci, verdict_table


@pytest.mark.parametrize("ci,status,reason", [
    ((-0.60, -0.40), "holds", ""),  # prediction inside, half-width 0.10 <= 0.15
    ((-0.80, -0.55), "fails", ""),  # prediction outside
    ((-0.45, -0.30), "fails", ""),
    ((-1.20, +0.20), "undecided", "wider than the tolerance"),  # wide and containing it: never "fails"
    ((-2.00, -0.90), "fails", ""),  # wide, but it excludes the prediction
    ((-0.90, -0.20), "undecided", "CI [-0.90, -0.20] (±0.35) wider than the tolerance ±0.15"),
    ((math.nan, math.nan), "undecided", "no bootstrap CI"),
])
def test_estimate_rule(ci, status, reason):
    v = Verdict.estimate("slope", -0.5, 0.15, -0.6, ci)
    assert v.status == status and reason in v.reason and (v.reason == "") == (status != "undecided")
    assert v.expected == "-0.50 ± 0.15" and v.measured == "-0.60"
    d = v.to_dict()
    assert d["holds"] == {"holds": True, "fails": False, "undecided": None}[status]
    assert d["ci"] is not None and len(d["ci"]) == 2


def test_estimate_boundaries_and_other_reasons():
    assert Verdict.estimate("s", -0.5, 0.15, -0.5, (-0.65, -0.35)).status == "holds"  # half-width exactly the tolerance
    assert Verdict.estimate("s", -0.5, 0.15, -0.5, (-0.5, -0.2)).status == "holds"  # the prediction on the CI's end
    v = Verdict.estimate("s", -0.5, 0.15, -0.8, (-0.9, -0.7), ["3 seeds: too few for a bootstrap CI", None])
    assert v.status == "undecided" and v.reason == "3 seeds: too few for a bootstrap CI"  # a reason beats "fails"
    assert v.ci == (-0.9, -0.7)


@pytest.mark.parametrize("bounds,ci,status", [
    ((0.0, math.inf), (0.2, 1.5), "holds"),
    ((0.0, math.inf), (-0.8, -0.1), "fails"),
    ((0.0, math.inf), (-0.2, 0.6), "undecided"),
    ((0.0, math.inf), (0.0, 0.6), "undecided"),  # touching the bound decides nothing
    ((-1.0, 1.0), (-0.5, 0.9), "holds"),
    ((-1.0, 1.0), (1.2, 2.0), "fails"),
    ((-1.0, 1.0), (0.5, 1.5), "undecided"),
])
def test_bounded_rule(bounds, ci, status):
    v = Verdict.bounded("claim", "expected", "measured", bounds, ci)
    assert v.status == status
    if status == "undecided":
        assert "reaches the bound" in v.reason


def test_the_printed_table_shows_the_ci_column_only_when_a_verdict_has_one():
    plain = Verdict.check("a claim", "a > b", "1 vs 2", True).to_dict()
    assert plain["ci"] is None and "95% CI" not in verdict_table([plain])
    with_ci = Verdict.estimate("a slope", -0.5, 0.15, -0.52, (-0.6, -0.45)).to_dict()
    table = verdict_table([plain, with_ci])
    assert "95% CI" in table and "[-0.60, -0.45]" in table
    assert fmt_ci(None) == "" and fmt_ci([math.nan, 1.0]) == "[n/a]"
