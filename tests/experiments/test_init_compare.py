"""The real-model init comparisons (loradyn.experiments.init_compare): optima per (init, ratio) and
verdicts on hand-made tables, Markdown tables, and tiny end-to-end runs with bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loradyn.errors import LoradynError
from loradyn.experiments import reproduce
from loradyn.experiments.init_compare import Metric, analyse, results_markdown

EM = Metric("val_exact_match", "max", "test_exact_match")
LOSS = Metric("val_loss", "min", "test_loss")


def _df(rows):
    """rows: (init, lr_a, seed, status, val_exact_match, val_loss)."""
    return pd.DataFrame([
        {"trial_id": f"t{i}", "lora.init": init, "optim.lr_ratio": 1.0, "optim.lr_a": lr, "seed": seed,
         "status": status, "val_exact_match": em, "test_exact_match": em, "val_loss": loss, "test_loss": loss,
         "seconds": 10.0}
        for i, (init, lr, seed, status, em, loss) in enumerate(rows)])


ROWS = [
    # Init[A]: exact match best at 1e-3, but seed 1 at 1e-2 failed (counts as worst)
    ("A", 1e-4, 0, "done", 0.0, 1.10), ("A", 1e-4, 1, "done", 0.0, 1.12),
    ("A", 1e-3, 0, "done", 0.1, 0.90), ("A", 1e-3, 1, "done", 0.1, 0.92),
    ("A", 1e-2, 0, "done", 0.5, 0.70), ("A", 1e-2, 1, "diverged", np.nan, np.nan),
    # Init[B]: exact match ties at 0.0 everywhere; val_loss breaks the tie at 1e-3
    ("B", 1e-4, 0, "done", 0.0, 1.00), ("B", 1e-4, 1, "done", 0.0, 1.02),
    ("B", 1e-3, 0, "done", 0.0, 0.60), ("B", 1e-3, 1, "done", 0.0, 0.62),
    ("B", 1e-2, 0, "done", 0.0, 0.80), ("B", 1e-2, 1, "done", 0.0, 0.82),
]


def test_optimum_counts_failures_as_worst_and_breaks_ties_by_val_loss():
    out = analyse(_df(ROWS), EM, tiebreak="val_loss")
    cols = {c["init"]: c for c in out["columns"]}
    # A: mean at 1e-2 is -inf (one seed diverged), so 1e-3 (0.1) wins; interior point
    assert cols["A"]["optimal_lr"] == 1e-3 and cols["A"]["interior"]
    assert abs(cols["A"]["best_val_exact_match"] - 0.1) < 1e-12
    assert cols["A"]["curve"][1e-2] is None  # -inf is not finite
    # B: all ties at 0.0; lowest seed-mean val_loss is at 1e-3
    assert cols["B"]["optimal_lr"] == 1e-3
    first, second = out["verdicts"]
    # B's exact match is 0.0 at every lr: where its optimum lies is not decided by the data
    assert first.status == "undecided" and "Init[B]'s best lr beats the next within the seed std" in first.reason
    assert second.status == "holds"  # 0.1 >= 0.0, a difference larger than the seed std (0)


def test_loss_mode_picks_the_minimum_and_verdicts_can_fail():
    out = analyse(_df(ROWS), LOSS)
    cols = {c["init"]: c for c in out["columns"]}
    assert cols["A"]["optimal_lr"] == 1e-3  # 1e-2 has a diverged seed
    assert abs(cols["A"]["best_val_loss"] - 0.91) < 1e-12
    assert abs(cols["B"]["best_val_loss"] - 0.61) < 1e-12
    assert abs(cols["B"]["test_loss_at_optimum"] - 0.61) < 1e-12
    assert [v.status for v in out["verdicts"]] == ["fails", "fails"]  # B has the lower loss, beyond the noise


def test_results_markdown_renders_secondary_tables(tmp_path):
    df = _df(ROWS)
    df.to_csv(tmp_path / "results.csv", index=False)
    from loradyn.experiments.framework import plain

    summary = analyse(df, EM, tiebreak="val_loss")
    summary["secondary"] = analyse(df, LOSS)
    summary.update({"experiment": "gsm-init", "quick": False, "n_trials": len(df), "seconds": 120.0,
                    "executor": "process", "machine": "test CPU, 2 CPUs", "date": "2026-11-29"})
    (tmp_path / "summary.json").write_text(json.dumps(plain(summary)))
    md = results_markdown(tmp_path)
    assert md.startswith("`gsm-init`: 12 trials, wall 2.0 min (process), test CPU, 2 CPUs, 2026-11-29.")
    assert "| A | 1 | 0.01 | 0.5 | — | — | 10 |" in md  # diverged seed and its missing mean
    assert "| B | 1 | 0.001 | 0.6 | 0.62 | 0.61 | 10 |" in md  # val_loss per seed in the secondary table
    head, _, second = md.partition("Secondary metric `val_loss`")
    assert second and "Z_A rms" in head and "Z_A rms" not in second
    assert second.count("| **fails** |") == 2 and head.count("| holds |") == 1 and head.count("| undecided |") == 1


# --- tiny end-to-end runs (random 2-layer models, real data rows) ----------------------------------

def _tasks_installed():
    from real_tasks import require_task_wheels

    require_task_wheels()


def test_reproduce_real_writes_results_summary_and_figure(tmp_path, monkeypatch):
    _tasks_installed()
    pytest.importorskip("matplotlib")

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path / "cache"))
    summary = reproduce(
        "sentiment-init", out=tmp_path / "out", quick=True, seeds=1, executor="serial", quiet=True,
        overrides=["task.model=tiny-bert", "task.n_train=32", "task.n_val=16", "task.n_test=16", "train.steps=2",
                   "optim.lr_a=[0.001,0.01]", "optim.lr_ratio=[1.0]"],
    )
    out = tmp_path / "out"
    assert (out / "results.csv").exists() and (out / "metric_vs_lr.png").exists()
    saved = json.loads((out / "summary.json").read_text())
    assert [v["claim"] for v in saved["verdicts"]] == [v["claim"] for v in summary["verdicts"]]
    assert len(saved["verdicts"]) == 2
    assert all(set(v) == {"claim", "expected", "measured", "status", "holds", "reason", "ci"} and v["ci"] is None
               for v in saved["verdicts"])
    assert {v["status"] for v in saved["verdicts"]} == {"undecided"}  # one seed cannot decide
    assert all("too few for a spread" in v["reason"] for v in saved["verdicts"])
    assert saved["n_trials"] == 4 and saved["status_counts"] == {"done": 4}
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert {"experiment", "lora.init", "optim.lr_a", "optim.lr_ratio", "seed", "val_accuracy", "test_accuracy"} <= set(df.columns)


def test_gsm_init_ranks_by_val_loss_and_reports_exact_match_as_an_uncounted_secondary(tmp_path, monkeypatch):
    _tasks_installed()
    from loradyn.cli import _verdicts

    monkeypatch.setenv("LORADYN_CACHE", str(tmp_path / "cache"))
    reproduce(
        "gsm-init", out=tmp_path / "out", quick=True, seeds=1, executor="serial", quiet=True,
        overrides=["task.model=tiny-llama", "task.n_train=16", "task.n_val=4", "task.n_test=4",
                   "task.max_new_tokens=8", "train.steps=2", "optim.lr_a=[0.001,0.01]"],
    )
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["metric"] == "val_loss" and saved["mode"] == "min"
    for column in saved["columns"]:  # the optimum is the lr with the lowest seed-mean val_loss
        assert column["best_val_loss"] == min(v for v in column["curve"].values() if v is not None)
    second = saved["secondary"]
    assert second["metric"] == "val_exact_match" and second["mode"] == "max" and len(second["verdicts"]) == 2
    assert len(_verdicts(saved)) == 2  # the secondary verdicts are not counted
    assert "Secondary metric `val_exact_match`" in results_markdown(tmp_path / "out")


def test_a_ratio_with_its_own_lr_grid_runs_as_its_own_sweep(tmp_path):
    _tasks_installed()
    out = tmp_path / "out"
    reproduce(
        "sentiment-init", out=out, quick=True, seeds=1, executor="serial", quiet=True,
        overrides=["task.model=tiny-bert", "task.n_train=32", "task.n_val=8", "task.n_test=8", "train.steps=2",
                   "experiment.lr_log2=[-10,-9,1]", "experiment.lr_ratios=[1,4]",
                   "experiment.lr_log2_by_ratio={4: [-13, -12, 1]}", "experiment.inits=[A]"],
    )
    df = pd.read_csv(out / "results.csv")
    grids = {r: sorted(g["optim.lr_a"].unique()) for r, g in df.groupby("optim.lr_ratio")}
    assert grids == {1.0: [2.0 ** -10, 2.0 ** -9], 4.0: [2.0 ** -13, 2.0 ** -12]}
    assert (out / "sweep").is_dir() and (out / "sweep-ratio4").is_dir()
    with pytest.raises(LoradynError, match="lr_log2_by_ratio names ratios .*add them there or drop them"):
        reproduce("sentiment-init", out=tmp_path / "bad", quick=True, seeds=1, executor="serial", quiet=True,
                  overrides=["task.model=tiny-bert", "experiment.lr_log2_by_ratio={8: [-13, -12, 1]}"])


def test_reproduce_real_bad_input_before_training(tmp_path):
    _tasks_installed()

    with pytest.raises(LoradynError, match="existing model folder"):
        reproduce("sentiment-init", out=tmp_path, quick=True, executor="serial", quiet=True,
                       overrides=["task.model=/does/not/exist"])
    with pytest.raises(LoradynError, match="unknown experiment"):
        reproduce("sentiment", out=tmp_path, quick=True)
    with pytest.raises(LoradynError, match="sentiment-init has no parameter 'widths'"):
        reproduce("sentiment-init", out=tmp_path, quick=True, overrides=["experiment.widths=[1]"])


@pytest.mark.parametrize("override,message", [
    ("task.model=/no/such/model", "existing model folder"),
    ("lora.target_modules=[nope]", "match no Linear module"),
    ("task.n_val=20000", "dataset too small"),
])
def test_cli_reproduce_bad_input_exit_code_2(tmp_path, capsys, override, message):
    _tasks_installed()
    cli = pytest.importorskip("loradyn.cli")
    code = cli.main(["reproduce", "sentiment-init", override, "task.model=tiny-bert" if "model" not in override else override,
                     "--quick", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def _classify(rows):
    """rows: (init, lr_a, seed, val_accuracy); majority class 0.62 of the validation split."""
    return pd.DataFrame([
        {"trial_id": f"t{i}", "lora.init": init, "optim.lr_ratio": 1.0, "optim.lr_a": lr, "seed": seed,
         "status": "done", "val_accuracy": acc, "test_accuracy": acc, "val_chance_accuracy": 0.62, "seconds": 1.0}
        for i, (init, lr, seed, acc) in enumerate(rows)])


ACC = Metric("val_accuracy", "max", "test_accuracy")


def test_accuracy_at_chance_level_is_undecided():
    rows = [(init, lr, s, 0.62 + 0.001 * s + (0.002 if (init, lr) == ("A", 1e-3) else 0.0))
            for init in "AB" for lr in (1e-4, 1e-3, 1e-2) for s in (0, 1, 2)]
    first, second = analyse(_classify(rows), ACC)["verdicts"]
    assert first.status == second.status == "undecided"
    assert "at chance level" in first.reason and "majority class 0.62" in second.reason


def test_clear_differences_decide_and_edges_do_not():
    bump = {("A", 1e-3): 0.9, ("B", 1e-4): 0.8}  # A peaks at 1e-3, B at its grid's low edge
    rows = [(init, lr, s, bump.get((init, lr), 0.7) + 0.002 * s) for init in "AB" for lr in (1e-4, 1e-3, 1e-2)
            for s in (0, 1, 2)]
    first, second = analyse(_classify(rows), ACC)["verdicts"]
    assert first.status == "undecided" and "Init[B]'s optimum on a grid edge (low)" in first.reason
    assert second.status == "holds" and second.reason == ""  # 0.902 vs 0.802, seed std 0.002
    rows = [(i, lr, s, acc + 0.05 * (s - 1)) for i, lr, s, acc in rows]  # seed std 0.05: the 0.1 gap still decides
    assert analyse(_classify(rows), ACC)["verdicts"][1].status == "holds"
    rows = [(i, lr, s, acc + 0.2 * (s - 1)) for i, lr, s, acc in rows]  # seed std 0.25 hides the 0.1 gap
    assert "within the seed std" in analyse(_classify(rows), ACC)["verdicts"][1].reason
