"""The ``loradyn`` CLI, called in process through ``main(argv)``."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

import sweep_toy
from loradyn.cli import main
from loradyn.scaling import suggest_lr
from loradyn.sweep import run_sweep

VERBS = ["sweep", "reproduce", "results", "report", "validate", "suggest-lr", "demo"]


@pytest.fixture
def spec_path(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(sweep_toy.toy_sweep()))
    return path


@pytest.mark.parametrize("verb", VERBS)
def test_help_per_verb(verb, capsys):
    assert main([verb, "--help"]) == 0
    assert f"usage: loradyn {verb}" in capsys.readouterr().out


def test_top_level_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(v in out for v in VERBS)
    assert main(["--version"]) == 0
    assert "loradyn" in capsys.readouterr().out
    assert main([]) == 2


def test_validate_prints_resolved_spec_and_count(spec_path, tmp_path, capsys):
    assert main(["validate", str(spec_path), "task.width=16", "seeds=3"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["base"]["task"]["width"] == 16 and resolved["seeds"] == [0, 1, 2]
    assert "# valid: 24 trials in 6 packs (task 'toy'); nothing written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.yaml"]


def test_sweep_then_results_in_every_format(spec_path, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["sweep", str(spec_path), "--out", str(out_dir), "--executor", "serial", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sweep toy: 16 trials (16 done)" in out and f"wrote {out_dir / 'sweep.db'}" in out

    assert main(["results", str(out_dir)]) == 0
    table = capsys.readouterr().out
    assert "lora.init" in table and "final_loss" in table and "task.kind" not in table  # varying columns only

    assert main(["results", str(out_dir), "--format", "csv"]) == 0
    from io import StringIO

    df = pd.read_csv(StringIO(capsys.readouterr().out))
    assert len(df) == 16 and "optim.lr_a" in df.columns

    target = tmp_path / "r.csv"
    assert main(["results", str(out_dir), "--format", "csv", "--output", str(target)]) == 0
    assert pd.read_csv(target).shape[0] == 16 and f"wrote {target}" in capsys.readouterr().err


def test_results_table_ends_with_the_optimal_lr_and_best_vs_best(spec_path, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec_path), "--out", str(out), "--quiet", "--executor", "serial"]) in (0, 1)
    capsys.readouterr()
    assert main(["results", str(out)]) == 0
    text = capsys.readouterr().out
    assert "optimal learning rate" in text and "lr_grid_opt" in text  # the one analysis
    assert "best vs best" in text and "is better than" in text


def test_results_parquet(spec_path, tmp_path, capsys):
    out_dir = tmp_path / "run"
    run_sweep(spec_path, out_dir, executor="serial", quiet=True)
    code = main(["results", str(out_dir), "--format", "parquet", "--output", str(tmp_path / "r.parquet")])
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert code == 2
        err = capsys.readouterr().err
        assert err.strip() == "loradyn: error: --format parquet needs pyarrow: pip install pyarrow"
    else:
        assert code == 0 and pd.read_parquet(tmp_path / "r.parquet").shape[0] == 16


def test_sweep_with_failed_trials_exits_1(spec_path, tmp_path, capsys):
    code = main(["sweep", str(spec_path), "task.fail_lr_above=0.01", "--out", str(tmp_path / "o"),
                 "--executor", "serial", "--quiet"])
    assert code == 1
    captured = capsys.readouterr()
    assert "failed" in captured.out and "toy trial refused" in captured.err


def test_report_verb(spec_path, tmp_path, capsys):
    out_dir = tmp_path / "run"
    run_sweep(spec_path, out_dir, executor="serial", quiet=True)
    assert main(["report", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {out_dir / 'report.html'}" in out and (out_dir / "report.md").is_file()


def test_suggest_lr(capsys):
    assert main(["suggest-lr", "--lr", "1e-3", "--width", "1024", "4096", "--rank", "8", "16",
                 "--init", "A", "--alpha-rule", "alpha/r", "--lr-ratio", "16"]) == 0
    out = capsys.readouterr().out
    expected = suggest_lr(1e-3, width=(1024, 4096), rank=(8, 16), init="A", alpha_rule="alpha/r")
    assert f"lr = {expected:.6g}" in out and "lr_ratio = 64" in out
    assert main(["suggest-lr", "--lr", "-1"]) == 2
    assert main(["suggest-lr", "--lr", "1e-3", "--init", "C"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("loradyn: error: ") for line in err)


@pytest.fixture
def fake_repro(monkeypatch, tmp_path):
    """A stand-in for loradyn.experiments.reproduce: runs the toy sweep and returns verdicts."""
    calls = []

    def reproduce(experiment_id, *, out, quick=False, seeds=None, overrides=(), executor="process",
                  workers=None, quiet=False, gpus=None):
        calls.append(dict(experiment_id=experiment_id, out=str(out), quick=quick, seeds=seeds,
                          overrides=tuple(overrides), executor=executor, workers=workers, quiet=quiet))
        if experiment_id == "nope":
            from loradyn.errors import LoradynError

            raise LoradynError("unknown experiment 'nope'; valid: toy-ok, toy-bad, all")
        run_sweep(sweep_toy.toy_sweep(), f"{out}/toy", executor="serial", quiet=True)
        status = {"toy-bad": "fails", "toy-unsure": "undecided"}.get(experiment_id, "holds")
        summary = {"verdicts": [{"claim": "c", "expected": "e", "measured": "m", "status": status,
                                 "holds": {"holds": True, "fails": False}.get(status), "reason": ""}]}
        with open(f"{out}/toy/summary.json", "w") as fh:
            json.dump(summary, fh)
        return summary

    import loradyn.experiments

    monkeypatch.setattr(loradyn.experiments, "reproduce", reproduce)
    return calls


def test_reproduce_passes_arguments_and_maps_verdicts_to_exit_code(fake_repro, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "toy-ok", "optim.lr_ratio=4", "lora.rank=8", "--quick", "--seeds", "2",
                 "--executor", "serial", "--workers", "1", "--quiet"]) == 0
    assert fake_repro[-1] == dict(experiment_id="toy-ok", out="runs/toy-ok", quick=True, seeds=2,
                                  overrides=("optim.lr_ratio=4", "lora.rank=8"), executor="serial",
                                  workers=1, quiet=True)
    assert "1 verdicts: 1 hold, 0 fail, 0 undecided" in capsys.readouterr().out
    assert main(["reproduce", "toy-bad", "--out", str(tmp_path / "bad"), "--executor", "serial"]) == 1
    # undecided is reported, not a failure: exit 0
    assert main(["reproduce", "toy-unsure", "--out", str(tmp_path / "unsure"), "--executor", "serial"]) == 0
    assert "1 verdicts: 0 hold, 0 fail, 1 undecided" in capsys.readouterr().out
    assert main(["reproduce", "nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("loradyn: error: unknown experiment")


def test_demo_reproduces_then_writes_the_report(fake_repro, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--executor", "serial", "--quiet"]) == 0
    assert fake_repro[-1]["experiment_id"] == "all" and fake_repro[-1]["quick"] is True
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    html = (out / "report.html").read_text()
    assert "Verdicts" in html and "data:image/png;base64," in html


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "loradyn", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: loradyn" in proc.stdout


def test_verdicts_are_counted_once():
    from loradyn.cli import _verdicts

    v = {"claim": "c", "holds": True}
    combined = {"experiments": {"a": {"verdicts": [v]}, "b": {"verdicts": [v]}}, "verdicts": [v, v]}
    assert len(_verdicts(combined)) == 2
    assert len(_verdicts({"experiments": {"a": {"verdicts": [v]}, "b": {"verdicts": [v, v]}}})) == 3


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loradyn: error: "), err
    return err[0]


def test_validate_prints_the_count_first_and_max_trials_sets_the_limit(spec_path, capsys):
    assert main(["validate", str(spec_path), "seeds=3"]) == 0
    assert capsys.readouterr().out.startswith("# sweep 'toy': up to 24 trials (grid 2 x 4, 3 seeds)\n")
    assert main(["validate", str(spec_path), "--max-trials", "15"]) == 2
    line = _one_error_line(capsys)
    assert "up to 16 trials" in line and "limit of 15" in line and "--max-trials N" in line
    assert main(["validate", str(spec_path), "--max-trials", "16"]) == 0
    assert main(["validate", str(spec_path), "--max-trials", "0"]) == 2
    assert "--max-trials) must be an integer >= 1" in _one_error_line(capsys)


def test_a_huge_grid_is_refused_at_once_unless_max_trials_raises_the_limit(tmp_path, capsys):
    path = tmp_path / "huge.yaml"  # 2 x 2001 x 1001 x 3 grid points x 20 seeds = 240 M trials
    path.write_text(yaml.safe_dump(sweep_toy.toy_sweep(
        grid={"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-20, 0, 0.01]},
              "optim.lr_ratio": {"log2": [0, 10, 0.01]}, "task.width": [8, 16, 32]}, seeds=20)))
    for verb in (["validate"], ["sweep", "--out", str(tmp_path / "o"), "--executor", "serial"]):
        t0 = time.perf_counter()
        assert main([*verb, str(path)]) == 2
        assert time.perf_counter() - t0 < 2
        assert "up to 240,360,120 trials (grid 2 x 2001 x 1001 x 3, 20 seeds)" in _one_error_line(capsys)
        # raised: the count passes, so the next check (here a bad metric) is the one that speaks
        assert main([*verb, str(path), "metric=bogus", "--max-trials", "300000000"]) == 2
        assert "metric 'bogus' is not a metric of task 'toy'" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_sweep_prints_the_count_before_running(spec_path, tmp_path, capsys):
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "o"), "--executor", "serial"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sweep 'toy': up to 16 trials (grid 2 x 4, 2 seeds)" and out[1].startswith("sweep toy: 16 trials")
    # a spec that fails after the count (a bad grid value) still leaves exactly one line on stderr
    assert main(["sweep", str(spec_path), "optim.lr_a=[0.01, -1]", "--out", str(tmp_path / "p"),
                 "--executor", "serial"]) == 2
    assert "lr_a must be a finite number > 0" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (["metric=test_los"], "metric 'test_los' is not a metric of task 'toy'; set metric to one of: final_loss"),
        (["mode=max"], "mode 'max' contradicts metric 'final_loss', which task 'toy' minimises"),
    ],
)
def test_bad_metric_or_mode_is_one_line(spec_path, tmp_path, capsys, change, fragment):
    for verb in (["validate"], ["sweep", "--out", str(tmp_path / "o"), "--executor", "serial"]):
        assert main([*verb, str(spec_path), *change]) == 2
        assert fragment in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_spec_with_a_duplicate_key_is_one_line(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    text = yaml.safe_dump(sweep_toy.toy_sweep(), sort_keys=False)
    path.write_text(text + "base: {task: {kind: toy}}\n")
    assert main(["validate", str(path)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"loradyn: error: duplicate key 'base' in '{path}' at lines 2 and ")
    assert line.endswith(": keep one")


def test_suggest_lr_marks_rules_derived_here_and_reads_negative_numbers(capsys):
    assert main(["suggest-lr", "--lr", "1e-3", "--rank", "8", "32", "--init", "B", "--alpha-rule", "rslora"]) == 0
    out = capsys.readouterr().out
    assert "lr = 0.002" in out and "DERIVED HERE, NOT PUBLISHED" in out and "docs/theory.md §5.1" in out
    assert main(["suggest-lr", "--lr", "1e-3", "--rank", "8", "32", "--init", "A", "--alpha-rule", "1"]) == 0
    assert "published rule" in capsys.readouterr().out
    assert main(["suggest-lr", "--lr", "-1e-3"]) == 2  # a value error, not "expected one argument"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["loradyn: error: lr must be a finite number > 0, got -0.001"]
