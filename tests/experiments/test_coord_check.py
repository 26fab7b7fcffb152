"""``loradyn reproduce coord-check``: a tiny end-to-end run, resuming after a kill, the verdicts'
three values, and the predictions table the synthetic experiments state."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from loradyn import coordcheck
from loradyn.experiments import coord_check as cc
from loradyn.experiments import reproduce
from loradyn.experiments.predictions import (
    coord_exponent,
    full_ft_width_exponent,
    lr_rank_exponent,
    lr_width_exponent,
    ratio_width_exponent,
    regime,
    z_a_width_exponent,
)

pytest.importorskip("matplotlib")

TINY = ["task.n_train=32", "task.n_test=8", "experiment.widths=[32,64,128]", "experiment.steps=3"]


def test_a_tiny_run_writes_results_table_figures_and_verdicts(tmp_path):
    summary = reproduce("coord-check", out=tmp_path, seeds=2, overrides=[*TINY, "task.form=residual", "optim.lr_ratio=2"],
                        executor="serial", quiet=True)
    runs = pd.read_csv(tmp_path / "results.csv")
    assert ((runs["optim.lr_b"] / runs["optim.lr_a"]).round(9) == 2).all()  # the trial's optimizer is used
    assert len(runs) == 3 * 2 * 3 * 2  # widths x inits x offsets x seeds, one row per run
    assert set(runs["gamma"].round(2)) == {-0.75, -0.5, -0.25, -1.25, -1.0}
    lr128 = runs[(runs["task.width"] == 128) & (runs["lora.init"] == "A") & (runs["offset"] == 0)]["optim.lr_a"].iloc[0]
    assert lr128 == pytest.approx(2.0**-6 * (128 / 32) ** -0.5)
    table = pd.read_csv(tmp_path / "coord_check.csv")
    assert {"z_a", "z_b", "dz_b", "dz_b_a", "dz_b_b", "dz_b_ab", "loss"} == set(table["feature"])
    assert sorted(summary["figures"]) == ["coord_check_A.png", "coord_check_B.png"]
    assert all((tmp_path / f).exists() for f in summary["figures"])
    assert summary["model"]["form"] == "residual"
    verdicts = summary["verdicts"]
    assert len(verdicts) == 11
    assert all(v["status"] == "undecided" and "too few for a bootstrap CI" in v["reason"] for v in verdicts)
    assert any("derived here" in v["claim"] for v in verdicts) and any("published" in v["claim"] for v in verdicts)


def test_a_killed_run_resumes_without_redoing_finished_blocks(tmp_path, monkeypatch):
    args = dict(out=tmp_path, seeds=1, overrides=[*TINY, "experiment.inits=[A]", "experiment.widths=[32,64]"],
                executor="serial", quiet=True)
    first = reproduce("coord-check", **args)
    full = pd.read_csv(tmp_path / "coord_check.csv")
    # simulate a kill: the partial file holds the blocks of width 32 and one block cut in half
    partial = tmp_path / "coord_check.partial.csv"
    marks = tmp_path / "coord_check.partial.done"
    done = full[full["width"] == 32]
    cut = full[(full["width"] == 64) & (full["init"] == "A") & (full["offset"] == -0.25)].head(5)
    pd.concat([done, cut]).to_csv(partial, index=False)
    marks.write_text("".join(json.dumps([32, 0, "A", o]) + "\n" for o in (-0.25, 0.0, 0.25)))
    calls = []
    original = coordcheck.coord_check

    def counting(make, widths, **kw):
        calls.append(widths[0])
        return original(make, widths, **kw)

    monkeypatch.setattr(coordcheck, "coord_check", counting)
    second = reproduce("coord-check", **args)
    assert 32 not in calls and calls.count(64) == 3  # width 32 was kept; the cut block ran again
    again = pd.read_csv(tmp_path / "coord_check.csv")
    key = ["init", "offset", "width", "seed", "step", "module", "feature"]
    merged = full.merge(again, on=key, suffixes=("", "_2"))
    assert len(merged) == len(full) == len(again)
    assert (merged["value"] - merged["value_2"]).abs().max() < 1e-6
    assert [v["measured"] for v in first["verdicts"]] == [v["measured"] for v in second["verdicts"]]


def test_verdicts_are_three_valued_from_the_ci():
    p = cc.Params(seeds=5)

    def slopes(**values):
        rows = []
        for init in "AB":
            for off in (-0.25, 0.0, 0.25):
                for feature in ("z_a", "dz_b", "dz_b_a", "dz_b_b"):
                    s, half = values.get(f"{init}{off}{feature}", (coord_exponent(init, feature, off).value, 0.05))
                    rows.append({"init": init, "offset": off, "gamma": 0, "module": "hidden", "feature": feature,
                                 "step": 3, "slope": s, "ci_low": s - half, "ci_high": s + half})
        return pd.DataFrame(rows)

    ok = cc.verdicts(slopes(), p)
    assert [v.status for v in ok] == ["holds"] * 11
    bad = {v.claim: v for v in cc.verdicts(slopes(**{"A0.0z_a": (0.05, 0.05), "B0.25dz_b": (-0.3, 0.05),
                                                         "B0.0dz_b_b": (-0.9, 0.1)}), p)}
    def status(init, what):
        (hit,) = [v.status for c, v in bad.items() if c.startswith(f"Init[{init}]") and what in c]
        return hit

    assert status("A", "Z_A grows ∝ n^1/2") == "fails"
    assert status("B", "ΔZ_B grows with width") == "fails"
    assert status("B", "B's update vanishes") == "undecided"  # the CI [-1.0, -0.8] straddles -0.85
    assert status("A", "ΔZ_B shrinks") == "holds"
    few = cc.verdicts(slopes(), cc.Params(seeds=3))
    assert {v.status for v in few} == {"undecided"}


def test_predictions_follow_the_readout():
    sp, shared_mup = {"readout": "sp"}, {"readout": "mup", "teacher_readout": "shared"}
    mup = {"readout": "mup", "teacher_readout": "independent", "form": "residual"}
    assert regime(sp) == regime(shared_mup) == "sp" and regime(mup) == "mup"
    a_sp, a_mup = lr_width_exponent("A", sp), lr_width_exponent("A", mup)
    assert (a_sp.value, a_sp.status, a_sp.published) == (-0.75, "derived here", -0.5)
    assert (a_mup.value, a_mup.status) == (-0.5, "published")
    assert lr_width_exponent("B", sp).value == -1.0 and lr_width_exponent("B", mup).value == -0.5
    assert z_a_width_exponent("A", sp).value == 0.25 and full_ft_width_exponent(sp).value == -1.5
    assert full_ft_width_exponent(mup).status == "published"
    assert ratio_width_exponent("A", sp).value == 0.5 and ratio_width_exponent("A", mup).value == 1.0
    assert lr_rank_exponent("B", "1", sp).value == -0.5 and lr_rank_exponent("A", "1/r", sp).value == 0.0
    assert "the papers: -0.5" in a_sp.label()
    assert coord_exponent("A", "z_a", 0.0).value == 0.5 and coord_exponent("A", "dz_b", 0.25).value == 0.5
    assert coord_exponent("B", "dz_b_b", 0.0).value == -1.0 and coord_exponent("B", "dz_b", -0.25).value == -0.25
    assert math.isclose(coord_exponent("B", "z_a", 0.25).value, 0.25)
