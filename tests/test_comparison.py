"""Methods at their own optimal learning rates (loradyn.comparison), on hand-made tables."""

from __future__ import annotations

import pandas as pd
import pytest

from loradyn.comparison import best_vs_best


def _table(curves, seeds=(0, 1, 2), noise=0.01, metric="val_accuracy"):
    """curves: init -> {lr: seed-mean value}; seeds add ±noise."""
    rows = []
    for init, curve in curves.items():
        for lr, value in curve.items():
            for s in seeds:
                rows.append({"lora.init": init, "optim.lr_ratio": 1.0, "optim.lr_a": lr, "seed": s,
                             "status": "done", metric: value + noise * (s - 1)})
    return pd.DataFrame(rows)


CURVES = {
    "A": {1e-4: 0.70, 1e-3: 0.85, 1e-2: 0.60},
    "B": {1e-5: 0.65, 1e-4: 0.80, 1e-3: 0.70},
    "pissa": {1e-4: 0.70, 1e-3: 0.84, 1e-2: 0.50},
}


def test_each_method_is_read_at_its_own_optimal_lr_best_first():
    table, verdicts = best_vs_best(_table(CURVES), metric="val_accuracy", mode="max")
    assert list(table["lora.init"]) == ["A", "pissa", "B"]
    assert list(table["optimal_lr"]) == [1e-3, 1e-3, 1e-4]
    assert table["val_accuracy"].tolist() == pytest.approx([0.85, 0.84, 0.80])
    assert table["val_accuracy_std"].tolist() == pytest.approx([0.01, 0.01, 0.01])
    by_claim = {v.claim: v for v in verdicts}
    assert by_claim["Init[A] is better than Init[B], each at its own optimal lr"].status == "holds"
    pissa = by_claim["Init[A] is better than Init[pissa], each at its own optimal lr"]
    assert pissa.status == "undecided" and "within the seed std" in pissa.reason  # 0.85 vs 0.84, std 0.01
    assert by_claim["Init[A]'s optimal learning rate is larger than Init[B]'s"].status == "holds"
    assert by_claim["Init[A]'s best val_accuracy is at least as good as Init[B]'s"].status == "holds"


def test_lower_is_better_and_one_seed_decides_nothing():
    loss = {init: {lr: 1 - v for lr, v in curve.items()} for init, curve in CURVES.items()}
    table, verdicts = best_vs_best(_table(loss, seeds=(0,), metric="val_loss"), metric="val_loss", mode="min")
    assert table["lora.init"].iloc[0] == "A"
    assert {v.status for v in verdicts} == {"undecided"} and all("too few for a spread" in v.reason for v in verdicts)


def test_loraplus_ratio_is_a_method_dimension_and_sweeps_without_methods_give_nothing():
    df = pd.concat([_table({"A": CURVES["A"]}).assign(**{"optim.lr_ratio": r}) for r in (1.0, 16.0)])
    df.loc[df["optim.lr_ratio"] == 16.0, "val_accuracy"] += 0.05
    table, verdicts = best_vs_best(df, metric="val_accuracy", mode="max")
    assert list(table["optim.lr_ratio"]) == [16.0, 1.0]
    assert verdicts[0].claim == "LoRA+ ratio 16 is better than plain LoRA, each at its own optimal lr"
    assert verdicts[0].status == "holds"  # +0.05 with a seed std of 0.01
    single, none = best_vs_best(_table({"A": CURVES["A"]}), metric="val_accuracy", mode="max")
    assert single.empty and none == []  # one method: nothing to compare
