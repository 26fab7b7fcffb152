"""run_sweep: resume, divergence/failure isolation, executors agree, store contents."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

import sweep_toy
from loradyn.errors import LoradynError
from loradyn.sweep import load_curves, load_probes, load_results, run_sweep


def _table(df: pd.DataFrame) -> pd.DataFrame:
    """Everything but wall time."""
    return df.drop(columns=["seconds"]).reset_index(drop=True)


def _executions(log) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_run_returns_one_row_per_trial_with_columns(tmp_path):
    df = run_sweep(sweep_toy.toy_sweep(), tmp_path / "s", executor="serial", quiet=True)
    assert len(df) == 16 and set(df["status"]) == {"done"}
    for col in ("trial_id", "task.width", "optim.lr_a", "optim.lr_b", "lora.init", "seed", "status",
                "final_loss", "error", "seconds"):
        assert col in df.columns
    assert list(df.columns).index("task.kind") < list(df.columns).index("lora.rank")  # spec order
    assert df.attrs["out"] == str(tmp_path / "s")
    assert (tmp_path / "s" / "spec.yaml").is_file() and (tmp_path / "s" / "env.json").is_file()
    env = json.loads((tmp_path / "s" / "env.json").read_text())
    assert env["torch_threads"] == 1 and "packages" in env and env["executor"] == "serial"
    spec = yaml.safe_load((tmp_path / "s" / "spec.yaml").read_text())
    assert spec["grid"]["optim.lr_a"] == [2**-8, 2**-7, 2**-6, 2**-5]
    pd.testing.assert_frame_equal(_table(load_results(tmp_path / "s")), _table(df))


def test_rerun_resumes_and_never_reruns_finished(tmp_path, monkeypatch):
    log = tmp_path / "exec.log"
    monkeypatch.setenv("LORADYN_TOY_LOG", str(log))
    first = run_sweep(sweep_toy.toy_sweep(), tmp_path / "s", executor="serial", quiet=True)
    assert sorted(_executions(log)) == sorted(first["trial_id"])
    log.unlink()
    again = run_sweep(sweep_toy.toy_sweep(), tmp_path / "s", executor="serial", quiet=True)
    assert _executions(log) == []
    pd.testing.assert_frame_equal(_table(again), _table(first))
    # more seeds: only the new trials run; the old rows are reused
    more = run_sweep(sweep_toy.toy_sweep(seeds=[0, 1, 2]), tmp_path / "s", executor="serial", quiet=True)
    assert len(more) == 24 and len(_executions(log)) == 8
    assert set(_executions(log)) == set(more["trial_id"][more["seed"] == 2])
    pd.testing.assert_frame_equal(_table(more[more["seed"] < 2]), _table(first))


def test_diverged_and_failed_trials_do_not_affect_the_pack(tmp_path):
    grid = {"optim.lr_a": [2**-6, 2**-5, 0.5, 2**-4]}  # 0.5 diverges; > 0.1 raises with fail_lr_above
    clean = run_sweep(sweep_toy.toy_sweep(grid={"optim.lr_a": [2**-6, 2**-5, 2**-4]}), tmp_path / "clean",
                      executor="serial", quiet=True)
    mixed = run_sweep(sweep_toy.toy_sweep(grid=grid), tmp_path / "mixed", overrides=["task.pack_size=8"],
                      executor="serial", quiet=True)
    bad = mixed[mixed["optim.lr_a"] == 0.5]
    assert set(bad["status"]) == {"diverged"} and bad["error"].str.contains("blew up").all()
    good = mixed[mixed["optim.lr_a"] != 0.5].reset_index(drop=True)
    pd.testing.assert_frame_equal(good[["optim.lr_a", "seed", "status", "final_loss"]],
                                  clean[["optim.lr_a", "seed", "status", "final_loss"]])
    failing = run_sweep(sweep_toy.toy_sweep(grid=grid), tmp_path / "failing",
                        overrides=["task.pack_size=8", "task.fail_lr_above=0.1"], executor="serial", quiet=True)
    bad = failing[failing["optim.lr_a"] == 0.5]
    assert set(bad["status"]) == {"failed"}
    assert (bad["error"] == "ValueError: toy trial refused lr_a=0.5").all()
    good = failing[failing["optim.lr_a"] != 0.5].reset_index(drop=True)
    assert good["final_loss"].tolist() == clean["final_loss"].tolist()


def test_a_raising_pack_fails_only_its_trials(tmp_path):
    # packs of 2 = the two seeds of one lr; run_pack raises for the pack with lr_a = 0.01
    spec = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.001, 0.01, 0.002]})
    spec["base"]["task"].update(crash_pack_lr_above=0.005, pack_size=2)
    df = run_sweep(spec, tmp_path / "s", executor="serial", quiet=True)
    crashed = df[df["optim.lr_a"] == 0.01]
    assert set(crashed["status"]) == {"failed"}
    assert (crashed["error"] == "RuntimeError: toy pack crashed").all()  # one line only
    assert set(df[df["optim.lr_a"] != 0.01]["status"]) == {"done"}


def test_a_pack_that_always_kills_its_worker_is_retried_then_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADYN_MAX_RETRIES", "2")
    spec = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.001, 0.01, 0.002, 0.003]})
    spec["base"]["task"].update(exit_lr_above=0.005, pack_size=2)
    df = run_sweep(spec, tmp_path / "s", executor="process", workers=1, quiet=True)
    dead = df[df["optim.lr_a"] == 0.01]
    assert set(dead["status"]) == {"failed"}
    assert (dead["error"] == "the worker process running this pack died 3 times (last: exit code 3); "
                             "--retry-failed runs it again").all()
    assert set(df[df["optim.lr_a"] != 0.01]["status"]) == {"done"}


def test_retry_failed_runs_failed_trials_again(tmp_path, monkeypatch):
    log = tmp_path / "exec.log"
    monkeypatch.setenv("LORADYN_TOY_LOG", str(log))
    spec = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.01, 0.5]})
    spec["base"]["task"]["fail_lr_above"] = 0.1
    df = run_sweep(spec, tmp_path / "s", executor="serial", quiet=True)
    assert (df["status"] == "failed").sum() == 2
    log.unlink()
    run_sweep(spec, tmp_path / "s", executor="serial", quiet=True)
    assert _executions(log) == []
    run_sweep(spec, tmp_path / "s", executor="serial", quiet=True, retry_failed=True)
    assert sorted(_executions(log)) == sorted(df["trial_id"][df["status"] == "failed"])


def test_serial_and_process_executors_agree(tmp_path):
    spec = sweep_toy.toy_sweep(grid={"task.width": [8, 16], "optim.lr_a": {"log2": [-7, -3, 1]}})
    spec["base"]["task"]["pack_size"] = 3
    serial = run_sweep(spec, tmp_path / "serial", executor="serial", quiet=True)
    process = run_sweep(spec, tmp_path / "process", executor="process", workers=2, quiet=True)
    pd.testing.assert_frame_equal(_table(serial), _table(process))
    assert set(serial["status"]) == {"done", "diverged"}


def test_curves_and_probes_are_stored_with_config(tmp_path):
    spec = sweep_toy.toy_sweep()
    spec["base"]["task"]["probes"] = True
    df = run_sweep(spec, tmp_path / "s", executor="serial", quiet=True)
    curves = load_curves(tmp_path / "s")
    probes = load_probes(tmp_path / "s")
    assert len(curves) == len(df) * 3  # steps 10, 20, 30
    assert set(probes["feature"]) == {"z_a", "z_b"} and len(probes) == len(df) * 6
    assert {"lora.init", "optim.lr_a", "seed", "step", "value"} <= set(probes.columns)
    one = curves[curves["trial_id"] == df["trial_id"][0]]
    assert one["value"].iloc[-1] == pytest.approx(df["final_loss"][0])


def test_parent_directory_concatenates_sweeps(tmp_path):
    run_sweep(sweep_toy.toy_sweep(name="x"), tmp_path / "all" / "x", executor="serial", quiet=True)
    run_sweep(sweep_toy.toy_sweep(name="y", seeds=[5]), tmp_path / "all" / "y", executor="serial", quiet=True)
    df = load_results(tmp_path / "all")
    assert df.columns[0] == "sweep" and df["sweep"].value_counts().to_dict() == {"x": 16, "y": 8}


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(LoradynError, match="unknown executor 'gpu'; valid executors: serial, process, ray"):
        run_sweep(sweep_toy.toy_sweep(), tmp_path / "a", executor="gpu")
    with pytest.raises(LoradynError, match="workers must be an integer >= 1"):
        run_sweep(sweep_toy.toy_sweep(), tmp_path / "a", workers=0)
    run_sweep(sweep_toy.toy_sweep(), tmp_path / "b", executor="serial", quiet=True)
    with pytest.raises(LoradynError, match="holds sweep 'toy', not 'other'"):
        run_sweep(sweep_toy.toy_sweep(name="other"), tmp_path / "b", executor="serial", quiet=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoradynError, match="not a directory"):
        run_sweep(sweep_toy.toy_sweep(), tmp_path / "file", executor="serial", quiet=True)
    assert not (tmp_path / "a").exists()  # nothing written for a bad spec or argument


def test_progress_lines_when_not_a_terminal(tmp_path, capfd):
    run_sweep(sweep_toy.toy_sweep(), tmp_path / "s", executor="serial")
    err = capfd.readouterr().err
    assert "[toy] 16/16 trials (done 16)" in err and "eta" in err
    run_sweep(sweep_toy.toy_sweep(), tmp_path / "q", executor="serial", quiet=True)
    assert capfd.readouterr().err == ""


def test_the_trial_count_is_printed_first_and_a_sweep_over_max_trials_is_refused(tmp_path, capfd):
    run_sweep(sweep_toy.toy_sweep(), tmp_path / "s", executor="serial")
    assert capfd.readouterr().out == "sweep 'toy': up to 16 trials (grid 2 x 4, 2 seeds)\n"
    with pytest.raises(LoradynError, match="has up to 16 trials .* limit of 10; .* --max-trials N"):
        run_sweep(sweep_toy.toy_sweep(), tmp_path / "big", executor="serial", max_trials=10)
    huge = sweep_toy.toy_sweep(grid={"optim.lr_a": {"log2": [-20, 0, 0.01]}, "task.width": list(range(1, 1001))},
                               seeds=120)
    with pytest.raises(LoradynError, match="up to 240,120,000 trials .* limit of 100,000"):
        run_sweep(huge, tmp_path / "huge", executor="serial")
    assert not (tmp_path / "big").exists() and not (tmp_path / "huge").exists()
    assert capfd.readouterr() == ("", "")  # refused before the count line: the error is the one line
    df = run_sweep(sweep_toy.toy_sweep(), tmp_path / "s", executor="serial", quiet=True, max_trials=16)
    assert len(df) == 16 and capfd.readouterr() == ("", "")


def test_the_default_metric_and_its_direction_are_recorded(tmp_path):
    data = {k: v for k, v in sweep_toy.toy_sweep().items() if k != "metric"}
    run_sweep(data, tmp_path / "s", executor="serial", quiet=True)
    spec = yaml.safe_load((tmp_path / "s" / "spec.yaml").read_text())
    assert (spec["metric"], spec["mode"]) == ("final_loss", "min")
    with pytest.raises(LoradynError, match="metric 'test_los' is not a metric of task 'toy'; set metric to one of"):
        run_sweep({**data, "metric": "test_los"}, tmp_path / "bad", executor="serial", quiet=True)
    assert not (tmp_path / "bad").exists()
