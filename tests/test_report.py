"""``loradyn report``: self-contained HTML + markdown, for one sweep or a parent of several."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import sweep_toy
from loradyn.report import write_report
from loradyn.sweep import load_results, run_sweep
from loradyn.sweep.figures import SweepView, optimal_lr_table

pytest.importorskip("matplotlib")


def test_optimal_lr_table_seed_mean_argmin():
    rows = []
    for init, best in (("A", 2.0**-6), ("B", 2.0**-8)):
        for lr in 2.0 ** np.arange(-10, -3):
            for seed in (0, 1):
                loss = (np.log2(lr) - np.log2(best)) ** 2 + 1 + 0.01 * seed
                rows.append({"trial_id": f"{init}{lr}{seed}", "lora.init": init, "optim.lr_a": lr, "seed": seed,
                             "status": "done", "final_loss": loss, "error": None, "seconds": 0.0})
    view = SweepView.from_results(pd.DataFrame(rows))
    assert view.lr == "optim.lr_a" and view.series == ["lora.init"] and view.metric == "final_loss"
    table = optimal_lr_table(view)
    assert table["lr_grid_opt"].tolist() == [2.0**-6, 2.0**-8]
    assert table["log2_lr_opt"].tolist() == pytest.approx([-6.0, -8.0], abs=0.05)
    assert (table["edge"] == "").all()
    # the seed-bootstrap CI: the seeds differ by a constant only, so every resample finds the same optimum
    assert table["log2_lr_lo"].tolist() == pytest.approx(table["log2_lr_opt"].tolist(), abs=1e-9)
    assert table["log2_lr_hi"].tolist() == pytest.approx(table["log2_lr_opt"].tolist(), abs=1e-9)
    maxed = SweepView.from_results(pd.DataFrame(rows).assign(final_loss=lambda d: -d["final_loss"]), mode="max")
    assert optimal_lr_table(maxed)["lr_grid_opt"].tolist() == [2.0**-6, 2.0**-8]


def _png_names(md: str) -> list[str]:
    return re.findall(r"\(report_files/([^)]+\.png)\)", md)


def test_report_for_one_sweep_with_heatmap_and_probes(tmp_path):
    spec = sweep_toy.toy_sweep(grid={"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-8, -3, 1]},
                                     "optim.lr_ratio": [1, 2, 4]})
    spec["base"]["task"]["probes"] = True
    run_sweep(spec, tmp_path, executor="serial", quiet=True)
    paths = write_report(tmp_path)
    html = paths["html"].read_text()
    md = paths["md"].read_text()
    # self-contained: images inline, no external references
    assert html.count("data:image/png;base64,") == 2  # lr_a x lr_b heatmaps, Z_A/Z_B + loss curve
    assert not re.search(r"src=['\"](?!data:)", html) and "<link" not in html
    assert "Best (lr_a, lr_b)" in md and "lr_a x lr_b" in md and "Z_A and Z_B" in md
    assert "ratio_opt" in md and "metric_diag_opt" in md
    names = _png_names(md)
    assert len(names) == 2 and all((tmp_path / "report_files" / n).is_file() for n in names)
    assert "diverged" in md  # status counts
    # without an lr_b axis: loss vs lr and the optimal-lr table
    run_sweep(sweep_toy.toy_sweep(), tmp_path / "plain", executor="serial", quiet=True)
    plain = write_report(tmp_path / "plain")["md"].read_text()
    assert "Optimal learning rate" in plain and "lr_grid_opt" in plain and len(_png_names(plain)) == 1
    # the inits compared at their own optimal lr, with three-valued verdicts
    assert "### Best vs best" in plain and "is better than" in plain and "| rank | lora.init |" in plain


def test_report_for_a_parent_of_experiments_with_verdicts(tmp_path):
    for name in ("exp-a", "exp-b"):
        exp = tmp_path / name
        run_sweep(sweep_toy.toy_sweep(name=name), exp / "sweep", executor="serial", quiet=True)
        verdicts = [{"claim": f"{name} claim", "expected": "slope -0.5", "measured": "-0.48", "holds": True},
                    {"claim": "second", "expected": "x", "measured": "y", "holds": name == "exp-a"}]
        if name == "exp-b":  # three-valued verdicts, as experiments write them now
            verdicts = [{**v, "status": "holds" if v["holds"] else "fails", "reason": ""} for v in verdicts]
            verdicts.append({"claim": "third", "expected": "z", "measured": "w", "status": "undecided",
                             "holds": None, "reason": "optimum on a grid edge: A n=128 (low)"})
        (exp / "summary.json").write_text(json.dumps({"verdicts": verdicts}))
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2, 2))
        fig.subplots().plot([1, 2], [1, 2])
        fig.savefig(exp / "figure.png")
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    assert md.index("## exp-a") < md.index("## exp-b")
    assert "exp-a claim" in md and "2 claims: 2 hold, 0 fail, 0 undecided" in md
    assert "3 claims: 1 hold, 1 fail, 1 undecided" in md
    assert "| fails | second |" in md and "| undecided | third | z | w | optimum on a grid edge: A n=128 (low) |" in md
    assert "exp-a_figure.png" in md and "exp-b_figure.png" in md
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 2 * (1 + 1)  # experiment figure + loss vs lr
    assert load_results(tmp_path)["sweep"].nunique() == 2


def test_report_of_a_sweep_with_only_failures(tmp_path):
    spec = sweep_toy.toy_sweep(grid={"optim.lr_a": [0.5]})
    spec["base"]["task"]["fail_lr_above"] = 0.1
    run_sweep(spec, tmp_path, executor="serial", quiet=True)
    md = write_report(tmp_path)["md"].read_text()
    assert "Failed trials" in md and "toy trial refused" in md


def test_feature_norm_panel_of_a_short_run_has_its_points_and_no_warning(tmp_path, monkeypatch):
    """Before: with one recorded step (step 0 of a 3-step run) Z_A was one point drawn as a line (invisible),
    and Z_B, exactly 0 at step 0 under both inits, went on a log axis: an empty panel and matplotlib's
    "Data has no positive values" warning on stderr."""
    pytest.importorskip("loradyn.synthetic")
    import warnings

    from loradyn.sweep import figures

    spec = {"name": "short", "metric": "final_train_loss", "seeds": [0, 1],
            "base": {"task": {"kind": "synthetic", "width": 16, "n_train": 32, "n_test": 8}, "lora": {"rank": 2},
                     "train": {"steps": 3, "dtype": "float64", "record_every": 10}},
            "grid": {"lora.init": ["A", "B"], "optim.lr_a": {"log2": [-8, -4, 4]}}}
    run_sweep(spec, tmp_path, executor="serial", quiet=True)
    panels = []
    to_png = figures.to_png

    def keep_axes(fig, dpi=100):
        panels.append({ax.get_title(): ax for ax in fig.axes})
        return to_png(fig, dpi)

    monkeypatch.setattr(figures, "to_png", keep_axes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = write_report(tmp_path)["md"].read_text()
    assert "Z_A and Z_B" in md
    norms = next(p for p in panels if set(p) == {"z_a", "z_b"})
    za_points = sorted(float(line.get_ydata()[0]) for line in norms["z_a"].get_lines())
    assert [line.get_marker() for line in norms["z_a"].get_lines()] == ["o", "o"]
    assert za_points[0] == 0.0 and za_points[1] > 0  # Init[B]: A = 0; Init[A]: A x > 0
    assert norms["z_b"].get_yscale() == "linear"
    assert [list(line.get_ydata()) for line in norms["z_b"].get_lines()] == [[0.0], [0.0]]


def test_report_shows_the_ci_of_each_verdict(tmp_path):
    run_sweep(sweep_toy.toy_sweep(), tmp_path, executor="serial", quiet=True)
    (tmp_path / "summary.json").write_text(json.dumps({"verdicts": [
        {"claim": "slope", "expected": "-0.50 ± 0.15", "measured": "-0.71", "status": "fails", "holds": False,
         "reason": "", "ci": [-0.84, -0.58]},
        {"claim": "growth", "expected": "> 1", "measured": "×2", "status": "holds", "holds": True, "reason": "",
         "ci": None}]}))
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    assert "| status | claim | expected | measured | 95% CI | reason |" in md
    assert "| fails | slope | -0.50 ± 0.15 | -0.71 | [-0.84, -0.58] |" in md
    assert "[-0.84, -0.58]" in paths["html"].read_text()


def test_report_keeps_long_verdict_claims_whole(tmp_path):
    run_sweep(sweep_toy.toy_sweep(), tmp_path, executor="serial", quiet=True)
    claim = "optimal lr_a falls like width^-1/2 under Init[A] with LoRA+ at every rank in the grid, seed means"
    (tmp_path / "summary.json").write_text(json.dumps({"verdicts": [
        {"claim": claim, "expected": "slope -0.5", "measured": "-0.48", "holds": True}]}))
    paths = write_report(tmp_path)
    assert len(claim) > 60 and claim in paths["md"].read_text() and claim in paths["html"].read_text()


def test_feature_norm_curves_without_probe_rows_for_the_best_trials(tmp_path, monkeypatch):
    """Before: probe rows only for other trials raised IndexError in feature_norm_curves."""
    from loradyn.sweep import figures

    rows = [{"trial_id": f"{init}{lr}", "lora.init": init, "optim.lr_a": lr, "seed": 0, "status": "done",
             "final_loss": (lr - 0.01) ** 2, "error": None, "seconds": 0.0} for init in "AB" for lr in (0.001, 0.01, 0.1)]
    view = SweepView.from_results(pd.DataFrame(rows))
    probes = pd.DataFrame([{"trial_id": f"{init}0.1", "step": 0, "module": "m", "feature": "z_a", "stat": "rms",
                            "value": 1.0} for init in "AB"])  # only the worst learning rate was probed
    assert figures.feature_norm_curves(view, probes) is None
    spec = sweep_toy.toy_sweep()
    spec["base"]["task"]["probes"] = True
    run_sweep(spec, tmp_path, executor="serial", quiet=True)
    monkeypatch.setattr(figures, "feature_norm_curves", lambda *a, **k: None)
    md = write_report(tmp_path)["md"].read_text()
    assert "No Z_A / Z_B records for the trials at the best learning rates." in md


def test_report_lists_the_trials_the_alarm_stopped(tmp_path):
    spec = {"name": "alarmed", "base": {"task": {"kind": "synthetic", "width": 32, "n_train": 64, "n_test": 16},
                                        "train": {"steps": 30, "alarm": {"z_b_ratio": 2.0}}},
            "grid": {"optim.lr_a": [1e-3, 0.5], "lora.init": ["A", "B"]}, "seeds": 1, "metric": "test_loss"}
    df = run_sweep(spec, tmp_path, executor="serial", quiet=True)
    alarmed = df[df["alarm_step"].notna()]
    assert len(alarmed) >= 1 and (alarmed["status"] == "diverged").all() and (alarmed["optim.lr_a"] == 0.5).all()
    assert (df.loc[df["optim.lr_a"] == 1e-3, "status"] == "done").all()
    md = write_report(tmp_path)["md"].read_text()
    assert f"Trials stopped by the instability alarm ({len(alarmed)})" in md and "lower lr_a" in md
    assert "alarm_layer" in md and "| hidden |" in md
