"""loradyn.tuning.search: Optuna's sampler and successive-halving pruner on top of the sweep store; the
bracket search against the whole grid."""

from __future__ import annotations

import math

import pytest

from loradyn.errors import LoradynError
from loradyn.sweep import run_sweep
from loradyn.tuning.plan import make_plan
from loradyn.tuning.search import search_proxy

optuna = pytest.importorskip("optuna")


def spec(lo=-12, hi=-2, steps=24, **grid):
    return {"name": "syn", "base": {"task": {"kind": "synthetic", "width": 32, "n_train": 48, "n_test": 8},
                                    "lora": {"rank": 8, "init": "A", "alpha_rule": "1"},
                                    "optim": {"lr_a": 1e-3}, "train": {"steps": steps}},
            "grid": {"optim.lr_a": {"log2": [lo, hi, 1]}, **grid}, "seeds": [0]}


def run(spec_dict, out):
    return run_sweep(spec_dict, out, executor="serial", quiet=True, max_trials=None)


def test_pruning_trains_fewer_points_at_full_steps_and_brackets_the_best(tmp_path):
    plan = make_plan(spec(), proxy=["lora.rank=2"])
    found = search_proxy(plan, tmp_path, run, sampler="grid", prune=True, eta=3)
    table = found.table
    rung = table[table["stage"] == "rung0"]
    full = table[table["stage"] != "rung0"]
    assert len(rung) == plan.n_points == 11 and set(rung["train.steps"]) == {8}
    assert found.pruned > 0 and found.asked == 11
    assert set(full["train.steps"]) == {24} and len(full) < len(rung)
    best = found.best["lr_grid_opt"]
    grid = sorted(plan.lrs)
    i = grid.index(best)
    measured = set(full["optim.lr_a"])
    assert all(grid[j] in measured for j in (i - 1, i + 1) if 0 <= j < len(grid))  # bracketed by measured points
    # a diverged rung-0 point reports NaN, which the pruner always prunes
    diverged = set(rung.loc[rung["status"] != "done", "optim.lr_a"])
    assert not diverged & set(full["optim.lr_a"])


def test_without_pruning_every_point_trains_full_steps_and_the_optimum_matches(tmp_path):
    plan = make_plan(spec(), proxy=["lora.rank=2"])
    plain = search_proxy(plan, tmp_path / "plain", run, sampler="grid", prune=False)
    assert set(plain.table["stage"]) == {"proxy"} and plain.pruned == 0 and len(plain.table) == 11
    pruned = search_proxy(plan, tmp_path / "pruned", run, sampler="grid", prune=True)
    assert pruned.best["lr_grid_opt"] == plain.best["lr_grid_opt"]
    assert pruned.best["lr_opt"] == pytest.approx(plain.best["lr_opt"], rel=1e-9)


def test_an_optimum_at_the_grid_edge_is_extended(tmp_path):
    plan = make_plan(spec(lo=-14, hi=-10), proxy=["lora.rank=2"])  # every lr too small
    found = search_proxy(plan, tmp_path, run, sampler="grid", prune=False)
    extended = found.table[found.table["stage"] == "extend"]
    assert len(extended) in (2, 4) and min(extended["optim.lr_a"]) > max(plan.lrs)
    assert found.best["lr_grid_opt"] > max(plan.lrs)


def test_every_proxy_trial_diverged_is_one_line_with_a_lower_grid(tmp_path):
    plan = make_plan(spec(lo=2, hi=6), proxy=["lora.rank=2"])
    with pytest.raises(LoradynError, match=r"every proxy trial diverged \(optim.lr_a 2\^2 ... 2\^6\): lower the grid, "
                                           r"e.g. --proxy 'optim.lr_a=\{log2: \[-3, 1, 1\]\}'") as err:
        search_proxy(plan, tmp_path, run, prune=True)
    assert "\n" not in str(err.value)


def test_tpe_asks_the_number_of_trials_it_is_given(tmp_path):
    plan = make_plan(spec(**{"lora.init": ["A", "B"]}), proxy=["lora.rank=2"])
    found = search_proxy(plan, tmp_path, run, sampler="tpe", n_trials=6, prune=False)
    assert found.asked == 6 and 1 <= len(found.table[found.table["stage"] == "proxy"]) <= 6
    assert math.isfinite(found.best["metric_opt"])


def test_a_rerun_asks_the_same_points_and_trains_nothing_new(tmp_path):
    plan = make_plan(spec(), proxy=["lora.rank=2"])
    first = search_proxy(plan, tmp_path, run, prune=True)
    calls = []

    def counting(spec_dict, out):
        df = run(spec_dict, out)
        calls.append(df)
        return df

    import sqlite3

    with sqlite3.connect(tmp_path / "sweep.db") as db:
        before = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    second = search_proxy(plan, tmp_path, counting, prune=True)
    with sqlite3.connect(tmp_path / "sweep.db") as db:
        after = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert after == before  # no sweep started a run: every trial was found finished
    assert {k: second.best[k] for k in ("lr_opt", "metric_opt", "edge")} == \
        {k: first.best[k] for k in ("lr_opt", "metric_opt", "edge")}
    assert second.pruned == first.pruned and calls
    assert list(second.table["trial_id"]) == list(first.table["trial_id"])


def column_points(found, init=None):
    table = found.table if init is None else found.table[found.table["lora.init"] == init]
    return sorted(table.loc[table["stage"] != "rung0", "optim.lr_a"])


def test_bracket_finds_the_grid_argmax_with_fewer_trials_and_measured_neighbours(tmp_path):
    plan = make_plan(spec(), proxy=["lora.rank=2"])
    grid = search_proxy(plan, tmp_path / "grid", run, sampler="grid", prune=False)
    bracket = search_proxy(plan, tmp_path / "bracket", run, prune=False)
    assert bracket.asked == 3 and set(bracket.table["stage"]) <= {"proxy", "walk"}
    assert len(bracket.table) < len(grid.table) == 11
    best = bracket.best["lr_grid_opt"]
    # the synthetic curve is unimodal on this grid: the walk ends where the whole grid's argmax is
    assert best == grid.best["lr_grid_opt"]
    lrs = sorted(plan.lrs)
    i = lrs.index(best)
    assert all(lrs[j] in column_points(bracket) for j in (i - 1, i + 1) if 0 <= j < len(lrs))
    # the bracket's points are a subset of the grid's trials: the same trial ids, the same metrics
    both = bracket.table.merge(grid.table, on="trial_id", suffixes=("", "_grid"))
    m = plan.metric
    # (packs of a different size round differently: equal to float32 precision, not bit for bit)
    assert len(both) == len(bracket.table)
    assert both[m].astype(float).to_numpy() == pytest.approx(both[f"{m}_grid"].astype(float).to_numpy(), rel=1e-5)


def test_bracket_walks_off_a_grid_that_is_too_low_and_stops_after_two_extensions(tmp_path):
    plan = make_plan(spec(lo=-14, hi=-10), proxy=["lora.rank=2"])  # every lr too small
    found = search_proxy(plan, tmp_path, run, prune=False)
    points = column_points(found)
    # starts -14, -12, -10; the walk fills -11, then extends one octave at a time to -9 and -8 (MAX_EXTEND)
    assert points == [2.0**e for e in (-14, -12, -11, -10, -9, -8)]
    assert found.best["lr_grid_opt"] > max(plan.lrs)
    assert list(found.table["stage"]) == ["proxy"] * 3 + ["walk"] * 3


def test_bracket_walks_every_column(tmp_path):
    plan = make_plan(spec(**{"lora.init": ["A", "B"]}), proxy=["lora.rank=2"])
    found = search_proxy(plan, tmp_path, run, prune=False)
    assert found.asked == 6 and len(found.optima) == 2
    lrs = sorted(plan.lrs)
    for _, row in found.optima.iterrows():
        measured = column_points(found, row["lora.init"])
        i = lrs.index(row["lr_grid_opt"])
        assert all(lrs[j] in measured for j in (i - 1, i + 1) if 0 <= j < len(lrs))


def test_bracket_steps_down_from_diverged_start_points(tmp_path):
    plan = make_plan(spec(lo=-6, hi=10), proxy=["lora.rank=2"])  # this toy diverges from lr 2^-1 up
    found = search_proxy(plan, tmp_path, run, prune=False)
    table = found.table
    starts = table[table["stage"] == "proxy"]
    assert sorted(starts["optim.lr_a"]) == [2.0**0, 2.0**2, 2.0**4] and set(starts["status"]) == {"diverged"}
    assert table.loc[table["stage"] == "walk", "optim.lr_a"].iloc[0] == 2.0**-2  # two grid steps below the lowest
    grid = search_proxy(plan, tmp_path / "grid", run, sampler="grid", prune=False)
    assert found.best["lr_grid_opt"] == grid.best["lr_grid_opt"] < 2.0**-1 and len(table) < len(grid.table)


def test_a_batch_whose_every_trial_diverged_before_evaluation_has_no_metric_column_and_still_counts(tmp_path):
    """Real kinds report no validation metric for a diverged trial: a one-point walk step that diverged
    returns a table without the metric column; the search takes it as diverged and goes on."""
    plan = make_plan(spec(lo=-6, hi=10), proxy=["lora.rank=2"])

    def real_kind_like(spec_dict, out):
        df = run(spec_dict, out)
        return df.drop(columns=[plan.metric]) if set(df["status"]) == {"diverged"} else df

    found = search_proxy(plan, tmp_path, real_kind_like, prune=False)
    assert found.best["lr_grid_opt"] < 2.0**-1 and math.isfinite(found.best["metric_opt"])
