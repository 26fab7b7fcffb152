"""``loradyn.tune`` and ``loradyn tune`` end to end on the synthetic kind (tiny widths, few steps):
the whole flow, resume, recommendation.json's schema, and every bad input as one line with exit code 2."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

import loradyn
from loradyn.cli import main
from loradyn.errors import LoradynError

pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[2]


def spec(**grid):
    return {"name": "syn", "base": {"task": {"kind": "synthetic", "width": 32, "n_train": 48, "n_test": 8},
                                    "lora": {"rank": 16, "init": "A", "alpha_rule": "1"},
                                    "optim": {"lr_a": 1e-3}, "train": {"steps": 24}},
            "grid": {"optim.lr_a": {"log2": [-12, -2, 0.5]}, **grid}, "seeds": [0, 1]}


@pytest.fixture
def spec_path(tmp_path):
    path = tmp_path / "syn.yaml"
    path.write_text(yaml.safe_dump(spec(**{"lora.init": ["A", "B"]})))
    return path


def run_counts(directory: Path) -> tuple[int, int]:
    with sqlite3.connect(directory / "sweep.db") as db:
        return (db.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM trials").fetchone()[0])


def test_python_flow_writes_the_recommendation_and_resumes(tmp_path):
    out = tmp_path / "tune"
    result = loradyn.tune(spec(), out=out, proxy=["lora.rank=2"], target=["lora.rank=16"], executor="serial",
                          quiet=True, prune=True)
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["lr_a"] == result.recommendation["lr_a"] and result.files["plot"] == str(out / "tune.png")
    assert rec["init"] == "A" and rec["lr_ratio"] == 1.0 and rec["lr_b"] == pytest.approx(rec["lr_a"])
    # transferred = proxy optimum x (16/2)^-1/2 (Init[A], alpha rule 1: μA, published)
    assert rec["transferred_lr_a"] == pytest.approx(rec["proxy"]["optimum"]["lr_a"] * 8 ** -0.5, rel=1e-12)
    assert rec["transfer"]["rules"][0]["status"] == "published"
    assert min(abs(rec["lr_a"] / rec["transferred_lr_a"] - m) for m in (0.5, 1.0, 2.0)) < 1e-9
    assert len(rec["confirm"]["trials"]) == 6 and {t["multiplier"] for t in rec["confirm"]["trials"]} == {0.5, 1, 2}
    assert rec["decision"] in ("holds", "undecided") and (rec["decision"] == "holds") == (rec["reason"] == "")
    assert 0 < rec["compute_fraction"] < 1 and rec["compute"]["full_grid"]["n_trials"] == 21 * 2
    assert rec["peft"]["lora_config"]["r"] == 16 and rec["peft"]["training_arguments"]["learning_rate"] == rec["lr_a"]
    compile((out / "peft_snippet.py").read_text(), "peft_snippet.py", "exec")
    evidence = result.evidence
    assert set(evidence["stage"]) >= {"rung0", "proxy", "confirm"} and len(evidence) == rec["compute"]["tune_trials"]
    assert (out / "tune.png").stat().st_size > 10_000 and (out / "evidence.csv").is_file()
    # resume: the same call trains nothing and decides the same
    before = run_counts(out / "proxy"), run_counts(out / "confirm")
    again = loradyn.tune(spec(), out=out, proxy=["lora.rank=2"], target=["lora.rank=16"], executor="serial",
                         quiet=True, prune=True)
    assert (run_counts(out / "proxy"), run_counts(out / "confirm")) == before
    assert again.recommendation["lr_a"] == rec["lr_a"] and again.recommendation["decision"] == rec["decision"]


def test_cli_flow_with_init_axis_and_loraplus(spec_path, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["tune", str(spec_path), "--proxy", "lora.rank=2", "--target", "lora.rank=16", "optim.lr_ratio=4",
                 "--out", str(out), "--executor", "serial", "--quiet", "--prune", "optim.lr_ratio=4"])
    assert code == 0, capsys.readouterr().err
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["init"] in ("A", "B") and rec["lr_ratio"] == 4.0 and rec["lr_b"] == pytest.approx(4 * rec["lr_a"])
    assert rec["proxy"]["grid"]["lora.init"] == ["A", "B"] and rec["compute"]["full_grid"]["axes"] == {"lora.init": 2}
    assert any(r["status"].startswith("assumed") for r in rec["transfer"]["rules"])  # LoRA+ ratio across ranks
    assert capsys.readouterr().out == ""  # --quiet


def test_cli_prints_the_recommendation_and_snippet(spec_path, tmp_path, capsys):
    out = tmp_path / "loud"
    assert main(["tune", str(spec_path), "--target", "lora.init=B", "--out", str(out), "--executor", "serial",
                 "--seeds", "2"]) == 0
    text = capsys.readouterr().out
    assert "tune: recommended init B" in text and "LoraConfig(" in text and "TrainingArguments(" in text
    assert re.search(r"compute .* trial-s \(\d+ trials\) vs the full grid's estimated", text)
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["proxy"]["picked_by_loradyn"] and rec["proxy"]["rank"] == 4  # 16 / 4
    assert rec["proxy"]["search"]["pruner"] is None and rec["proxy"]["search"]["pruned"] == 0


def test_recommendation_json_fields_are_documented_in_schema_md(tmp_path):
    out = tmp_path / "doc"
    loradyn.tune(spec(), out=out, proxy=["lora.rank=2"], executor="serial", quiet=True)
    rec = json.loads((out / "recommendation.json").read_text())
    text = (ROOT / "docs" / "schema.md").read_text()
    section = text[text.index("## `recommendation.json`"):]
    section = section[: section.find("\n## ", 5)] if "\n## " in section[5:] else section
    first_cells = re.findall(r"^\| ([^|]+) \|", section, re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`([\w.]+)`", cell)}
    assert set(rec) <= documented, sorted(set(rec) - documented)
    for key in ("proxy", "transfer", "target", "confirm", "compute", "peft"):
        for sub in rec[key]:
            assert f"`{sub}`" in section, f"{key}.{sub} is not documented"
    # types
    assert isinstance(rec["lr_a"], float) and isinstance(rec["confirm"]["trials"], list)
    assert isinstance(rec["compute_fraction"], float) and rec["schema_version"] == 1
    assert all(math.isfinite(t[rec["metric"]]) for t in rec["confirm"]["trials"] if t["status"] == "done")


# --- bad input: one line, exit code 2 ---------------------------------------------------------

def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("loradyn: error: ")
    return err


def test_target_equal_to_proxy_runs_a_plain_sweep(spec_path, tmp_path, capsys):
    out = tmp_path / "same"
    code = main(["tune", str(spec_path), "--proxy", "lora.rank=8", "--target", "lora.rank=8", "--out", str(out),
                 "--executor", "serial", "--quiet"])
    assert code == 2
    assert "nothing to transfer: the target equals the proxy" in one_line(capsys)
    assert (out / "sweep" / "sweep.db").is_file() and not (out / "recommendation.json").exists()
    assert len(loradyn.load_results(out / "sweep")) == 21 * 2 * 2  # the target's own grid: lr x init x seeds


def test_every_proxy_trial_diverged(spec_path, tmp_path, capsys):
    assert main(["tune", str(spec_path), "--proxy", "lora.rank=2", "optim.lr_a=[8.0,16.0]", "--out",
                 str(tmp_path / "d"), "--executor", "serial", "--quiet"]) == 2
    assert "every proxy trial diverged" in one_line(capsys)


def test_alpha_convention_unreadable(tmp_path, capsys):
    path = tmp_path / "py.yaml"
    path.write_text(yaml.safe_dump({"name": "py", "base": {"task": {"kind": "python", "entry": "python_trials:quadratic"},
                                                            "lora": {"rank": 8, "init": "A"}, "optim": {"lr_a": 0.1},
                                                            "train": {"steps": 5}}, "metric": "loss", "mode": "min"}))
    assert main(["tune", str(path), "--proxy", "lora.rank=2", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "cannot read the alpha convention" in one_line(capsys)


def test_python_trial_with_alpha_rule_given_tunes(tmp_path, capsys):
    path = tmp_path / "py.yaml"
    path.write_text(yaml.safe_dump({"name": "py", "base": {"task": {"kind": "python", "entry": "python_trials:quadratic"},
                                                            "lora": {"rank": 8, "init": "A"}, "optim": {"lr_a": 0.1},
                                                            "train": {"steps": 5}},
                                    "grid": {"optim.lr_a": [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]},
                                    "seeds": 2, "metric": "loss", "mode": "min"}))
    out = tmp_path / "py"
    assert main(["tune", str(path), "--proxy", "lora.rank=2", "--alpha-rule", "1/r", "--out", str(out),
                 "--executor", "serial", "--quiet"]) == 0, capsys.readouterr().err
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["transfer"]["alpha_rule"] == "1/r" and rec["transferred_lr_a"] == rec["proxy"]["optimum"]["lr_a"]
    assert rec["lr_ratio"] == 1.0  # the user's trial has no optim.lr_ratio: plain LoRA


@pytest.mark.parametrize(("budget", "match"), [
    ("5", "budget of 5 trials is too small for the confirmation step"),
    ("12", "budget of 12 trials is too small for the confirmation step"),   # fits the plan, not the pruning rung
    ("0.0001s", "budget of 0.0001 s is too small for the confirmation step"),
])
def test_budget_too_small(spec_path, tmp_path, capsys, budget, match):
    code = main(["tune", str(spec_path), "--proxy", "lora.rank=2", "optim.lr_a=[0.001,0.004,0.016]",
                 "--target", "lora.init=A", "--out", str(tmp_path / "b"), "--executor", "serial", "--quiet",
                 "--prune", "--search", "grid", "--budget", budget])
    assert code == 2 and match in one_line(capsys)


def test_budget_stops_between_stages_and_a_rerun_resumes(spec_path, tmp_path, capsys):
    out = tmp_path / "b"
    args = ["tune", str(spec_path), "--proxy", "lora.rank=2", "optim.lr_a=[0.001,0.004,0.016]", "--target",
            "lora.init=A", "--out", str(out), "--executor", "serial", "--quiet", "--prune", "--search", "grid"]
    assert main([*args, "--budget", "12"]) == 2  # the proxy ran part-way, then the budget said no
    assert "re-running resumes" in one_line(capsys)
    with sqlite3.connect(out / "proxy" / "sweep.db") as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM trials")]
    assert statuses and set(statuses) <= {"done", "diverged"} and not (out / "confirm").exists()
    assert main([*args, "--budget", "40"]) == 0
    with sqlite3.connect(out / "proxy" / "sweep.db") as db:
        attempts = db.execute("SELECT MAX(attempts) FROM trials").fetchone()[0]
    assert attempts == 1  # no trial ran twice


def test_optuna_missing_names_the_extra(spec_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["tune", str(spec_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "pip install 'loradyn[tune]'" in one_line(capsys)
    with pytest.raises(LoradynError, match="loradyn\\[tune\\]"):
        loradyn.tune(spec(), out=tmp_path / "o2")


@pytest.mark.parametrize(("argv", "match"), [
    (["--proxy", "lora.rank=2", "task.width=[16,32]"], "task.width"),
    (["--proxy", "lora.rank=2", "lora.init=C"], "lora.init"),
    (["--search", "bayes"], "invalid choice"),
    (["--budget", "lots"], "budget must be"),
    (["--proxy", "lora.rank=2", "--alpha-rule", "1/r"], "contradicts the spec"),
    (["--proxy", "notakeyvalue"], "key=value"),
])
def test_more_bad_input_is_one_line(spec_path, tmp_path, capsys, argv, match):
    assert main(["tune", str(spec_path), "--out", str(tmp_path / "x"), "--quiet", *argv]) == 2
    assert match in one_line(capsys)


def test_help(capsys):
    assert main(["tune", "--help"]) == 0
    assert "usage: loradyn tune" in capsys.readouterr().out


def test_lora_to_full_finetuning_target(tmp_path):
    out = tmp_path / "fft"
    result = loradyn.tune(spec(), out=out, proxy=["lora.rank=2", "lora.init=B"],
                          target=["lora.method=full", "lora.init=B"], executor="serial", quiet=True, prune=False)
    rec = result.recommendation
    assert rec["transfer"]["target_method"] == "full" and rec["transfer"]["rules"][0]["step"] == "LoRA -> full finetuning"
    assert rec["transferred_lr_a"] == rec["proxy"]["optimum"]["lr_a"]  # μA: the same lr
    assert rec["peft"]["lora_config"] is None and "get_peft_model" not in (out / "peft_snippet.py").read_text()
    assert {t["optim.lr_a"] for t in rec["confirm"]["trials"]} == {rec["transferred_lr_a"] * m for m in (0.5, 1, 2)}


def test_a_bad_target_fails_before_the_proxy_trains(spec_path, tmp_path, capsys):
    out = tmp_path / "dev"
    assert main(["tune", str(spec_path), "--proxy", "lora.rank=2", "--target", "train.device=cuda:7", "--out",
                 str(out), "--quiet"]) == 2
    assert "train.device=cuda" in one_line(capsys) and not (out / "proxy").exists()
