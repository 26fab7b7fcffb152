"""Sweep specs: expansion order and count, log2 grids, overrides, content-hash trial ids."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field

import pytest
import yaml

import sweep_toy
from loradyn.errors import LoradynError, SpecError
from loradyn.sweep.spec import (
    DEFAULT_MAX_TRIALS,
    config_id,
    count_line,
    count_trials,
    expand,
    flatten,
    log2_grid,
    plan_packs,
    resolve_sweep,
)
from loradyn.tasks.registry import TaskKind, TrialResult, get_task, register_task


def test_log2_grid_inclusive_and_exact():
    assert log2_grid(-3, -1, 1) == [0.125, 0.25, 0.5]
    half = log2_grid(-2, 0, 0.5)
    assert len(half) == 5 and half[0] == 0.25 and half[-1] == 1.0
    assert half[1] == 2.0 ** -1.5


def test_expansion_order_count_and_values():
    spec = resolve_sweep(sweep_toy.toy_sweep())
    trials = expand(spec)
    assert len(trials) == 2 * 4 * 2
    # last grid key varies fastest, then seeds
    got = [(t.config.lora.init, t.config.optim.lr_a, t.config.seed) for t in trials[:5]]
    assert got == [("A", 2**-8, 0), ("A", 2**-8, 1), ("A", 2**-7, 0), ("A", 2**-7, 1), ("A", 2**-6, 0)]
    assert [t.idx for t in trials] == list(range(len(trials)))
    assert len({t.trial_id for t in trials}) == len(trials)
    # base values survive, defaults are filled in
    assert all(t.config.task.width == 8 and t.config.lora.rank == 4 for t in trials)
    assert trials[0].data["optim"]["betas"] == [0.9, 0.999]


def test_expansion_is_deterministic_and_deduplicates():
    a = [t.trial_id for t in expand(resolve_sweep(sweep_toy.toy_sweep()))]
    b = [t.trial_id for t in expand(resolve_sweep(sweep_toy.toy_sweep()))]
    assert a == b
    dup = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.01, 0.01, 1e-2]})
    assert len(expand(resolve_sweep(dup))) == 2  # one lr x two seeds


def test_trial_id_is_content_hash_of_resolved_config():
    # writing a default explicitly does not change the id; changing a value does
    s1 = sweep_toy.toy_sweep(grid={})
    s2 = sweep_toy.toy_sweep(grid={})
    s2["base"]["optim"]["lr_ratio"] = 1.0
    s3 = sweep_toy.toy_sweep(grid={})
    s3["base"]["optim"]["lr_ratio"] = 2.0
    ids = [[t.trial_id for t in expand(resolve_sweep(s))] for s in (s1, s2, s3)]
    assert ids[0] == ids[1] != ids[2]


def test_trial_id_stable_across_processes(tmp_path):
    spec = resolve_sweep(sweep_toy.toy_sweep())
    ids = [t.trial_id for t in expand(spec)]
    code = (
        "import sys, json, sweep_toy\n"
        "from loradyn.sweep.spec import expand, resolve_sweep\n"
        "print(json.dumps([t.trial_id for t in expand(resolve_sweep(sweep_toy.toy_sweep()))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=sweep_toy.subprocess_env(PYTHONHASHSEED="123"),
                         capture_output=True, text=True, check=True)
    assert yaml.safe_load(out.stdout) == ids
    assert config_id(expand(spec)[0].config) == ids[0]


def test_overrides_base_grid_and_top_level(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep_toy.toy_sweep()))
    spec = resolve_sweep(path, ["task.width=16", "optim.lr_a=[0.5, 0.25]", "seeds=3", "lora.init=B"])
    assert spec.base["task"]["width"] == 16
    assert spec.grid["optim.lr_a"] == [0.5, 0.25]
    assert spec.grid["lora.init"] == ["B"]
    assert spec.seeds == (0, 1, 2)
    assert spec.name == "toy"
    trials = expand(spec)
    assert len(trials) == 2 * 3 and {t.config.task.width for t in trials} == {16}
    log2 = resolve_sweep(path, ["optim.lr_a={log2: [-2, -1, 1]}"])
    assert log2.grid["optim.lr_a"] == [0.25, 0.5]
    assert resolve_sweep(path, ["base.lora.rank=8"]).base["lora"]["rank"] == 8


def test_name_defaults_to_file_stem(tmp_path):
    data = sweep_toy.toy_sweep()
    del data["name"]
    path = tmp_path / "my-sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    assert resolve_sweep(path).name == "my-sweep"


def test_plan_packs_groups_by_key_and_chunks():
    spec = resolve_sweep(sweep_toy.toy_sweep(grid={"task.width": [8, 16], "optim.lr_a": [0.1, 0.2, 0.3]}))
    spec = resolve_sweep(spec, ["task.pack_size=4"])
    task = get_task("toy")
    trials = expand(spec, task)
    packs = plan_packs(task, trials)
    # 6 trials per width (3 lrs x 2 seeds), chunks of <= 4 -> 4 + 2 per width
    assert [len(p.trials) for p in packs] == [4, 2, 4, 2]
    assert all(len({t.config.task.width for t in p.trials}) == 1 for p in packs)
    assert sorted(t.trial_id for p in packs for t in p.trials) == sorted(t.trial_id for t in trials)
    assert [p.pack_id for p in packs] == [p.pack_id for p in plan_packs(task, expand(spec, task))]


def test_plan_packs_gives_every_worker_a_pack_when_a_group_is_small():
    spec = resolve_sweep(sweep_toy.toy_sweep(grid={"optim.lr_a": [0.1, 0.2, 0.3]}), ["task.pack_size=8", "seeds=1"])
    task = get_task("toy")
    trials = expand(spec, task)
    assert [len(p.trials) for p in plan_packs(task, trials)] == [3]  # one worker: one pack
    assert [len(p.trials) for p in plan_packs(task, trials, workers=2)] == [2, 1]  # not 3 and an idle worker
    assert [len(p.trials) for p in plan_packs(task, trials, workers=8)] == [1, 1, 1]
    many = expand(resolve_sweep(spec, ["seeds=6"]), task)  # 18 trials: max_pack_size still caps
    assert [len(p.trials) for p in plan_packs(task, many, workers=2)] == [5, 5, 5, 3]  # 2 packs each, not 8, 8, 2


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "seed": 0}) == {"a.b": 1, "a.c.d": (1, 2), "seed": 0}


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"grid": {"optim.lr_a": []}}, "grid.optim.lr_a is an empty list"),
        ({"grid": {"optim.lr_x": [1.0]}}, "unknown key optim.lr_x"),
        ({"grid": {"optim.lr_a": [0.01, -0.01]}}, "lr_a must be a finite number > 0"),
        ({"grid": {"lora.rank": [0]}}, "rank must be an integer >= 1"),
        ({"grid": {"lora.init": ["A", "C"]}}, "unknown init method 'C'"),
        ({"grid": {"seed": [1, 2]}}, "seeds"),
        ({"grid": {"optim.lr_a": {"log2": [-1, -3, 1]}}}, "lo <= hi"),
        ({"grid": {"optim.lr_a": {"linspace": [1, 2]}}}, "log2"),
        ({"grid": {"optim.lr_a": 0.1}}, "expected a list"),
        ({"grid": [1, 2]}, "grid must be a mapping"),
        ({"seeds": []}, "seeds"),
        ({"seeds": ["a"]}, "seeds"),
        ({"mode": "best"}, "mode"),
        ({"metric": "test_los"}, "metric 'test_los' is not a metric of task 'toy'; set metric to one of: final_loss"),
        ({"metric": "accuracy"}, "set metric to one of: final_loss"),
        ({"mode": "max"}, "mode 'max' contradicts metric 'final_loss', which task 'toy' minimises"),
        ({"grid": {"optim.lr_a": {"log2": [0, 2000, 1]}}}, "grid.optim.lr_a: log2 grid [0, 2000, 1]: exponents must lie in [-1000, 1000]"),
        ({"grid": {"optim.lr_a": {"log2": [-1e308, 1e308, 1]}}}, "grid.optim.lr_a"),
        ({"bogus": 1}, "unknown key bogus in sweep spec; valid keys"),
        ({"base": {"lora": {"rank": 4}}}, "base.task.kind is required"),
        ({"base": {"task": {"kind": "nope"}}}, "unknown task 'nope'; valid tasks"),
        ({"base": {"task": {"kind": "toy"}, "lora": {"rank": "four"}}}, "lora.rank: expected an integer"),
    ],
)
def test_bad_specs_raise_one_line(change, fragment):
    data = sweep_toy.toy_sweep()
    data.update(change)
    with pytest.raises(LoradynError) as err:
        expand(resolve_sweep(data))
    message = str(err.value)
    assert fragment in message and "\n" not in message


# ---- metric and mode against the task's declared metrics ----------------------------------------
@dataclass(frozen=True)
class _RankedTask:
    kind: str = "toy-ranked"


@dataclass(frozen=True)
class _RankedSpec:
    task: _RankedTask = field(default_factory=_RankedTask)
    seed: int = 0


@dataclass(frozen=True)
class _OpenTask:
    kind: str = "toy-open"


@dataclass(frozen=True)
class _OpenSpec:
    task: _OpenTask = field(default_factory=_OpenTask)
    seed: int = 0


def _results(configs):
    return [TrialResult("done", {"val_accuracy": 0.5, "val_loss": 1.0}) for _ in configs]


register_task(TaskKind("toy-ranked", _RankedSpec, _results, metrics={"val_accuracy": "max", "val_loss": "min"}))
register_task(TaskKind("toy-open", _OpenSpec, _results))  # declares no metrics


def _ranked(kind="toy-ranked", **top):
    return {"name": "r", "base": {"task": {"kind": kind}}, "seeds": [0], **top}


def test_metric_and_mode_default_to_the_tasks_first_metric_and_its_direction():
    toy = resolve_sweep({k: v for k, v in sweep_toy.toy_sweep().items() if k != "metric"})
    assert (toy.metric, toy.mode) == ("final_loss", "min")
    ranked = resolve_sweep(_ranked())
    assert (ranked.metric, ranked.mode) == ("val_accuracy", "max")  # not the old silent "min"
    assert resolve_sweep(_ranked(metric="val_loss")).mode == "min"
    assert resolve_sweep(_ranked(metric="val_accuracy", mode="max")).mode == "max"
    # the resolved spec round-trips, and an override of the metric takes the new direction
    assert resolve_sweep(ranked, ["metric=val_loss"]).mode == "min"
    with pytest.raises(SpecError, match="mode 'max' contradicts metric 'val_loss'"):
        resolve_sweep(ranked, ["metric=val_loss", "mode=max"])
    assert resolve_sweep(ranked.to_dict()) == ranked


@pytest.mark.parametrize(
    ("top", "fragment"),
    [
        ({"metric": "accuracy"}, "metric 'accuracy' is not a metric of task 'toy-ranked'; "
                                 "set metric to one of: val_accuracy, val_loss"),
        ({"metric": "val_accuracy", "mode": "min"},
         "mode 'min' contradicts metric 'val_accuracy', which task 'toy-ranked' maximises; "
         "set mode: max or leave mode out"),
        ({"mode": "min"}, "contradicts metric 'val_accuracy'"),
    ],
)
def test_unknown_metric_or_contradicting_mode_is_one_line(top, fragment):
    with pytest.raises(SpecError) as err:
        resolve_sweep(_ranked(**top))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_task_without_declared_metrics_accepts_any_metric():
    spec = resolve_sweep(_ranked("toy-open", metric="anything", mode="max"))
    assert (spec.metric, spec.mode) == ("anything", "max")
    assert (resolve_sweep(_ranked("toy-open")).metric, resolve_sweep(_ranked("toy-open")).mode) == (None, "min")


# ---- counting trials before expanding --------------------------------------------------------------
def _huge(seeds=10):
    """2001 x 1001 x 2 x 6 grid points x 10 seeds = 240,360,120 trials."""
    return sweep_toy.toy_sweep(grid={"optim.lr_a": {"log2": [-20, 0, 0.01]}, "optim.lr_ratio": {"log2": [0, 10, 0.01]},
                                     "lora.init": ["A", "B"], "task.width": [8, 16, 32, 64, 128, 256]},
                               seeds=seeds)


def test_count_is_the_product_of_axes_and_seeds_an_upper_bound():
    spec = resolve_sweep(sweep_toy.toy_sweep())
    assert count_trials(spec) == 16 == len(expand(spec))
    assert count_line(spec) == "sweep 'toy': up to 16 trials (grid 2 x 4, 2 seeds)"
    dup = resolve_sweep(sweep_toy.toy_sweep(grid={"optim.lr_a": [0.01, 0.01, 1e-2]}))
    assert count_trials(dup) == 6 and len(expand(dup)) == 2  # equal configurations run once
    assert count_line(resolve_sweep(sweep_toy.toy_sweep(grid={}, seeds=1))) == \
        "sweep 'toy': up to 1 trials (grid 1 point, 1 seed)"


@pytest.mark.parametrize("seeds", [10, 240_000_000])
def test_a_huge_sweep_is_refused_fast_without_materialising_it(seeds):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(SpecError) as err:
            resolve_sweep(_huge(seeds))
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert elapsed < 1.0 and peak < 20 * 2**20
    assert message.startswith("sweep 'toy' has up to ") and "--max-trials N" in message
    assert f"more than the limit of {DEFAULT_MAX_TRIALS:,}" in message and "\n" not in message
    if seeds == 10:
        assert "240,360,120 trials (grid 2001 x 1001 x 2 x 6, 10 seeds)" in message


def test_max_trials_sets_the_limit():
    data = sweep_toy.toy_sweep()
    with pytest.raises(SpecError, match="has up to 16 trials .* more than the limit of 15;"):
        resolve_sweep(data, max_trials=15)
    assert count_trials(resolve_sweep(data, max_trials=16)) == 16
    assert count_trials(resolve_sweep(_huge(), max_trials=None)) == 240_360_120  # no limit: counted, not expanded
    assert count_trials(resolve_sweep(_huge(), max_trials=300_000_000)) == 240_360_120
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(SpecError, match="must be an integer >= 1"):
            resolve_sweep(data, max_trials=bad)


def test_duplicate_keys_in_a_sweep_file_are_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: d\nbase:\n  task: {kind: toy}\ngrid:\n  optim.lr_a: [0.1]\n"
                    "  optim.lr_a: [0.2]\nseeds: 1\n")
    with pytest.raises(SpecError, match=r"duplicate key 'optim.lr_a' in '.*s.yaml' at lines 5 and 6: keep one"):
        resolve_sweep(path)


# Trial ids written by loradyn before TrainSpec.device/precision/grad_accum,
# SyntheticTrainSpec.device and LoraSpec.modules_to_save existed: a store made then must resume.
_PRE_DEVICE_IDS = {
    "synthetic": ({"task": {"kind": "synthetic", "width": 64}, "lora": {"rank": 2, "init": "B"},
                   "train": {"steps": 5}}, {"optim.lr_a": [1e-3, 2e-3]}, 2,
                  ["08a68f8d95783847", "7476989e8bd805c6", "9d3ccfa6efe2d599", "2e8f7e2e7bf39c90"]),
    "sentiment": ({"task": {"kind": "sentiment"}, "lora": {"rank": 4}, "train": {"steps": 5}},
                  {"optim.lr_a": [1e-4, 1e-3], "lora.init": ["A", "B"]}, [0, 1],
                  ["9bbbc77a4b3fdbe0", "98f947bd16056122", "a391538d98d9f804", "7414dd9e80c83b3e",
                   "7f286317459cad3e", "4349586c8dc3281c", "8d795f4d4372467a", "3d4b2165e77ecb5a"]),
    "trec6": ({"task": {"kind": "trec6"}, "train": {"steps": 3}}, {"optim.lr_ratio": [1, 16]}, 1,
              ["18c95ca17e8457e3", "55b37f4823af769a"]),
}


@pytest.mark.parametrize("kind", sorted(_PRE_DEVICE_IDS))
def test_trial_ids_of_older_stores_are_kept(kind):
    base, grid, seeds, ids = _PRE_DEVICE_IDS[kind]
    trials = expand(resolve_sweep({"name": kind, "base": base, "grid": grid, "seeds": seeds}))
    assert [t.trial_id for t in trials] == ids


def test_late_fields_count_once_they_leave_their_default():
    base = {"task": {"kind": "sentiment"}, "train": {"steps": 5}}
    ids = set()
    for extra in ({}, {"precision": "bf16"}, {"grad_accum": 2}, {"device": "cpu"}, {"alarm": {"every": 2}}):
        spec = {"name": "x", "base": {**base, "train": {**base["train"], **extra}},
                "grid": {"optim.lr_a": [1e-3]}, "seeds": 1}
        ids.add(expand(resolve_sweep(spec))[0].trial_id)
    assert len(ids) == 5
