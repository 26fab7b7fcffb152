"""``loradyn.experiments``: the registry, tiny end-to-end runs of every synthetic experiment on the
sweep engine, the results schema, and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from loradyn.errors import LoradynError
from loradyn.experiments import experiments, reproduce

SYNTHETIC = [e.id for e in experiments().values() if e.in_all]
# the results schema (docs/schema.md): these lead, then the trial's configuration columns
LEADING = ["experiment", "sweep", "trial_id"]

pytest.importorskip("matplotlib")

TINY = ["task.n_train=48", "task.n_test=8", "experiment.steps=8"]
TINY_PARAMS = {
    "width-lr": ["experiment.widths=[32,64]", "experiment.lr_step=1.0", "experiment.span=1.0", "experiment.max_extend=1", "experiment.fit_min_width=32"],
    "feature-norms": ["experiment.widths=[32,64]", "experiment.record_every=4", "experiment.lr_A=0.01", "experiment.lr_B=0.002"],
    "loraplus-heatmap": ["experiment.widths=[32,64]", "experiment.lr_a_span=1.0", "experiment.ratio_log2=[0,2]"],
    "rank-lr": ["experiment.width=32", "experiment.ranks=[1,4]", "experiment.lr_step=1.0", "experiment.span=1.0", "optim.lr_ratio=4"],
    "coord-check": ["experiment.widths=[32,64]", "experiment.inits=[A]"],
}


def check_outputs(out, experiment):
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns[:3]) == LEADING and list(df.columns[-2:]) == ["error", "seconds"]
    assert {"task.width", "lora.init", "optim.lr_a", "optim.lr_b", "seed", "status", "final_train_loss"} <= set(df.columns)
    assert (df["experiment"] == experiment).all() and len(df) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdicts"], "every experiment states verdicts"
    for v in summary["verdicts"]:
        assert set(v) == {"claim", "expected", "measured", "status", "holds", "reason", "ci"}
        assert v["holds"] == {"holds": True, "fails": False, "undecided": None}[v["status"]]
        assert bool(v["reason"]) == (v["status"] == "undecided")  # an undecided verdict says why
    assert summary["figures"] and all((out / f).exists() for f in summary["figures"])
    return df, summary


def test_registry_lists_every_experiment_in_order():
    found = experiments()
    assert SYNTHETIC == ["width-lr", "feature-norms", "loraplus-heatmap", "rank-lr", "coord-check"]
    assert list(found) == [*SYNTHETIC, "sentiment-init", "trec6-init", "wiki-init", "gsm-init"]
    for exp in found.values():
        assert exp.description and exp.quick is not None and exp.full is not None
        assert type(exp.quick) is exp.params and type(exp.full) is exp.params


@pytest.mark.parametrize("experiment", SYNTHETIC)
def test_each_experiment_runs_end_to_end(experiment, tmp_path, capsys):
    summary = reproduce(experiment, out=tmp_path, seeds=1, overrides=TINY + TINY_PARAMS[experiment], executor="serial")
    df, written = check_outputs(tmp_path, experiment)
    assert written["verdicts"] == summary["verdicts"]
    printed = capsys.readouterr().out
    assert "verdict" in printed and "too few for a" in printed  # the verdict table, with reasons
    if experiment == "rank-lr":
        assert set(df["lora.method"]) == {"lora", "full"} and set(df["lora.init"]) == {"A", "B"}
        assert ((df["optim.lr_b"] / df["optim.lr_a"]).round(9) == 4).all()  # base overrides reach every trial
        lora_a = (df["lora.init"] == "A") & (df["lora.method"] == "lora")
        assert set(df.loc[lora_a, "lora.alpha_rule"]) == {"1", "1/sqrt(r)", "1/r"}
    if experiment == "feature-norms":  # given learning rates are used as given
        rates = summary["learning_rates"]
        assert {v["source"] for v in rates.values()} == {"given"}
        assert rates["A@32"]["lr"] == 0.01 and set(df.loc[df["lora.init"] == "B", "optim.lr_a"]) == {0.002}
    if experiment == "loraplus-heatmap":
        assert (df["optim.lr_b"] > df["optim.lr_a"]).any() and (df["optim.lr_b"] == df["optim.lr_a"]).any()


def test_rerun_resumes_without_retraining(tmp_path):
    args = dict(out=tmp_path, seeds=1, overrides=TINY + TINY_PARAMS["width-lr"], executor="serial", quiet=True)
    first = reproduce("width-lr", **args)
    second = reproduce("width-lr", **args)
    assert first["verdicts"] == second["verdicts"]
    assert first["optimal_lr"] == second["optimal_lr"]


def test_all_runs_in_order_and_feature_norms_reuses_width_lr(tmp_path):
    overrides = TINY + [
        "experiment.widths=[32,64]", "experiment.lr_step=1.0", "experiment.span=1.0", "experiment.fit_min_width=32",
        "experiment.width=32", "experiment.ranks=[1,4]", "experiment.lr_a_span=1.0", "experiment.ratio_log2=[0,2]",
    ]
    combined = reproduce("all", out=tmp_path, seeds=1, overrides=overrides, executor="serial", quiet=True)
    assert list(combined["experiments"]) == SYNTHETIC
    for eid in SYNTHETIC:
        check_outputs(tmp_path / eid, eid)
    sources = {v["source"] for v in combined["experiments"]["feature-norms"]["learning_rates"].values()}
    assert sources == {"width-lr"}
    assert len(combined["verdicts"]) == sum(len(s["verdicts"]) for s in combined["experiments"].values())
    assert json.loads((tmp_path / "summary.json").read_text())["verdicts"]


@pytest.mark.parametrize("bad,match", [
    (dict(experiment_id="width"), "valid ids: width-lr, feature-norms, loraplus-heatmap, rank-lr, coord-check, sentiment-init, "
                                  "trec6-init, wiki-init, gsm-init, all"),
    (dict(experiment_id="width-lr", overrides=["experiment.widthz=[1]"]), "unknown key experiment.widthz"),
    (dict(experiment_id="width-lr", overrides=["lora.rnak=3"]), "unknown key lora.rnak"),
    (dict(experiment_id="width-lr", overrides=["lora.init=C"]), "lora.init"),
    (dict(experiment_id="all", overrides=["experiment.nope=1"]), "experiment.nope"),
    (dict(experiment_id="width-lr", overrides=["steps"]), "key=value"),
    (dict(experiment_id="width-lr", seeds=0), "seeds"),
])
def test_bad_input_is_one_line(bad, match, tmp_path):
    with pytest.raises(LoradynError, match=match) as err:
        reproduce(out=tmp_path, executor="serial", quiet=True, **{"seeds": None, **bad})
    assert "\n" not in str(err.value)


def test_the_verdict_table_wraps_long_claims_at_word_boundaries():
    from loradyn.verdicts import Verdict, verdict_table

    claim = "Init[A]'s optimal learning rate is larger than Init[B]'s at every width from 128 to 8192 inclusive"
    table = verdict_table([Verdict.check(claim, "a > b", "measured value", True).to_dict()])
    header, _, *rows = table.splitlines()
    start, end = header.index("claim"), header.index("expected")
    assert " ".join(row[start:end].strip() for row in rows) == claim  # wrapped at spaces, nothing cut
    assert len(rows) == 2 and all(len(row[start:end].rstrip()) <= 56 for row in rows)
