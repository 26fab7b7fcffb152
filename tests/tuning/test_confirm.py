"""loradyn.tuning.confirm.decide: the ×1/2, ×1, ×2 confirmation holds only when ×1 wins beyond the
seed spread; an end point, a tie within the noise, one seed or all-diverged is undecided, with the reason
and (for an end point) the next point."""

from __future__ import annotations

import pandas as pd
import pytest

from loradyn.tuning.confirm import confirm_spec, decide
from loradyn.tuning.plan import make_plan


def table(means, spread=0.001, seeds=3, status=None):
    rows = []
    for m, value in zip((0.5, 1.0, 2.0), means):
        for s in range(seeds):
            rows.append({"optim.lr_a": 0.01 * m, "seed": s, "status": (status or {}).get(m, "done"),
                         "loss": value + spread * (s - (seeds - 1) / 2)})
    return pd.DataFrame(rows)


def test_interior_beyond_the_noise_holds():
    got = decide(table([0.30, 0.20, 0.25]), transferred=0.01, metric="loss", mode="min")
    assert got.status == "holds" and got.reason == "" and got.lr_a == pytest.approx(0.01)
    assert got.multiplier == 1.0 and got.next_lr_a is None
    assert list(got.points["multiplier"]) == [0.5, 1.0, 2.0]
    assert got.verdict["status"] == "holds"


@pytest.mark.parametrize(("means", "lr", "next_lr", "end"), [
    ([0.30, 0.25, 0.20], 0.02, 0.04, "upper end x2"),
    ([0.10, 0.25, 0.30], 0.005, 0.0025, "lower end x1/2"),
])
def test_best_at_an_end_is_undecided_and_names_the_next_point(means, lr, next_lr, end):
    got = decide(table(means), transferred=0.01, metric="loss", mode="min")
    assert got.status == "undecided" and got.lr_a == pytest.approx(lr)
    assert got.next_lr_a == pytest.approx(next_lr) and end in got.reason and "next point" in got.reason


def test_accuracy_is_maximised():
    got = decide(table([0.80, 0.90, 0.85]).rename(columns={"loss": "acc"}), transferred=0.01, metric="acc", mode="max")
    assert got.status == "holds" and got.lr_a == pytest.approx(0.01)


def test_within_the_seed_std_is_undecided():
    got = decide(table([0.2005, 0.2, 0.3], spread=0.01), transferred=0.01, metric="loss", mode="min")
    assert got.status == "undecided" and "within the seed std" in got.reason and got.lr_a == pytest.approx(0.01)


def test_one_seed_is_undecided():
    got = decide(table([0.3, 0.2, 0.25], seeds=1), transferred=0.01, metric="loss", mode="min")
    assert got.status == "undecided" and "1 seed" in got.reason


def test_a_diverged_seed_counts_as_the_worst_value():
    got = decide(table([0.30, 0.10, 0.25], status={1.0: "diverged"}), transferred=0.01, metric="loss", mode="min")
    assert got.lr_a == pytest.approx(0.02)  # x1's best loss is void: a seed of it diverged


def test_everything_diverged():
    got = decide(table([1, 1, 1], status={0.5: "diverged", 1.0: "diverged", 2.0: "failed"}), transferred=0.01,
                 metric="loss", mode="min")
    assert got.lr_a is None and got.status == "undecided" and got.next_lr_a == pytest.approx(0.0025)
    assert "every confirmation point diverged" in got.reason


def test_confirm_spec_runs_the_target_at_three_points():
    spec = {"name": "syn", "base": {"task": {"kind": "synthetic", "width": 32}, "lora": {"rank": 8, "alpha_rule": "1"},
                                    "train": {"steps": 5}},
            "grid": {"lora.init": ["A", "B"], "optim.lr_a": [1e-3, 2e-3]}, "seeds": 2}
    plan = make_plan(spec, proxy=["lora.rank=2"])
    got = confirm_spec(plan, "B", 1.0, 0.004)
    assert got["grid"] == {"optim.lr_a": [0.002, 0.004, 0.008]} and got["seeds"] == [0, 1]
    assert got["base"]["lora"] == {"rank": 8, "alpha_rule": "1", "init": "B"} and got["name"] == "syn-confirm"
