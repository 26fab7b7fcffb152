"""Reading a real-model experiment: optima per (init, ratio), verdicts, Markdown tables (hand-made tables)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from loradyn.tasks.results import analyse, results_markdown


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
    out = analyse(_df(ROWS), metric="val_exact_match", mode="max", test_metric="test_exact_match",
                  tiebreak="val_loss")
    cols = {c["init"]: c for c in out["columns"]}
    # A: mean at 1e-2 is -inf (one seed diverged), so 1e-3 (0.1) wins; interior point
    assert cols["A"]["optimal_lr"] == 1e-3 and cols["A"]["interior"]
    assert abs(cols["A"]["best_val_exact_match"] - 0.1) < 1e-12
    assert cols["A"]["curve"][1e-2] is None  # -inf is not finite
    # B: all ties at 0.0; lowest seed-mean val_loss is at 1e-3
    assert cols["B"]["optimal_lr"] == 1e-3
    holds = [v["holds"] for v in out["verdicts"]]
    assert holds == [False, True]  # same optimal lr is not "larger"; 0.1 >= 0.0


def test_loss_mode_picks_the_minimum_and_verdicts_can_fail():
    out = analyse(_df(ROWS), metric="val_loss", mode="min", test_metric="test_loss")
    cols = {c["init"]: c for c in out["columns"]}
    assert cols["A"]["optimal_lr"] == 1e-3  # 1e-2 has a diverged seed
    assert abs(cols["A"]["best_val_loss"] - 0.91) < 1e-12
    assert abs(cols["B"]["best_val_loss"] - 0.61) < 1e-12
    assert abs(cols["B"]["test_loss_at_optimum"] - 0.61) < 1e-12
    assert [v["holds"] for v in out["verdicts"]] == [False, False]  # B has the lower loss


def test_results_markdown_renders_secondary_tables(tmp_path):
    df = _df(ROWS)
    df.to_csv(tmp_path / "results.csv", index=False)
    summary = analyse(df, metric="val_exact_match", mode="max", test_metric="test_exact_match", tiebreak="val_loss")
    summary["secondary"] = analyse(df, metric="val_loss", mode="min", test_metric="test_loss")
    summary.update({"experiment": "gsm-init", "quick": False, "trials": len(df), "wall_seconds": 120.0,
                    "executor": "process", "machine": "test CPU, 2 CPUs", "date": "2026-11-29"})
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = results_markdown(tmp_path)
    assert md.startswith("`gsm-init`: 12 trials, wall 2.0 min (process), test CPU, 2 CPUs, 2026-11-29.")
    assert "| A | 1 | 0.01 | 0.5 | — | — | 10 |" in md  # diverged seed and its missing mean
    assert "| B | 1 | 0.001 | 0.6 | 0.62 | 0.61 | 10 |" in md  # val_loss per seed in the secondary table
    head, _, second = md.partition("Secondary metric `val_loss`")
    assert second and "Z_A rms" in head and "Z_A rms" not in second
    assert second.count("| **no** |") == 2 and head.count("| yes |") == 1
