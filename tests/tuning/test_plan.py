"""loradyn.tuning.plan: the proxy and target, the alpha convention, widths, grids and budgets, and
their one-line refusals."""

from __future__ import annotations

import math

import pytest

from loradyn.errors import SpecError
from loradyn.tuning.plan import make_plan, parse_budget, read_alpha_rule


def synthetic(**grid):
    return {"name": "syn", "base": {"task": {"kind": "synthetic", "width": 32, "n_train": 48, "n_test": 8},
                                    "lora": {"rank": 16, "init": "A", "alpha_rule": "1"},
                                    "optim": {"lr_a": 1e-3}, "train": {"steps": 12}},
            "grid": {"optim.lr_a": {"log2": [-12, -4, 0.5]}, **grid}, "seeds": [0, 1, 2]}


def classify(alpha=16.0, rslora=False):
    """An hf-classify spec (never trained here: make_plan does no I/O for it)."""
    return {"name": "cls", "base": {"task": {"kind": "hf-classify", "model": "some/model", "data": "rows.csv",
                                             "columns": {"text": "t", "label": "y"}},
                                    "lora": {"rank": 64, "alpha": alpha, "rslora": rslora},
                                    "optim": {"lr_a": 1e-4}, "train": {"steps": 50}},
            "grid": {"optim.lr_a": {"log2": [-14, -8, 0.5]}}, "seeds": 3}


@pytest.mark.parametrize(("text", "trials", "seconds"), [
    (40, 40, None), ("40", 40, None), ("600s", None, 600.0), ("10m", None, 600.0), ("1.5h", None, 5400.0)])
def test_parse_budget(text, trials, seconds):
    budget = parse_budget(text)
    assert (budget.trials, budget.seconds) == (trials, seconds)


@pytest.mark.parametrize("bad", ["ten", "0", "2.5", "-3s", "5 parsecs", True])
def test_parse_budget_refuses_in_one_line(bad):
    with pytest.raises(SpecError, match="budget") as err:
        parse_budget(bad)
    assert "\n" not in str(err.value)


def test_plan_of_a_synthetic_rank_transfer():
    plan = make_plan(synthetic(), proxy=["lora.rank=2"], target=["lora.rank=16"])
    assert plan.rank == (2, 16) and plan.alpha_rule == "1" and plan.width is None
    assert plan.lrs == tuple(2.0 ** e for e in range(-12, -3))  # the spec's half-octave axis, coarsened
    assert plan.full_lrs is not None and len(plan.full_lrs) == 17
    assert plan.proxy_seeds == (0,) and plan.confirm_seeds == (0, 1, 2)
    assert plan.inits == ("A",) and plan.ratios == (1.0,) and not plan.equal
    assert plan.proxy.name == "syn-proxy" and plan.metric == "final_train_loss" and plan.mode == "min"


def test_picked_proxy_is_rank_over_four_at_most_four_with_one_seed():
    plan = make_plan(synthetic())
    assert plan.proxy_picked and plan.rank == (4, 16) and plan.proxy_seeds == (0,)
    assert "proxy picked by loradyn" in plan.notes[0]
    plan = make_plan(synthetic(), target=["lora.rank=8"])
    assert plan.rank == (2, 8)


def test_searched_axes_and_width():
    plan = make_plan(synthetic(**{"lora.init": ["A", "B"], "optim.lr_ratio": [1, 4]}),
                     proxy=["lora.rank=2", "task.width=16", "optim.lr_a=[0.001,0.004]"], target=["task.width=64"])
    assert plan.inits == ("A", "B") and plan.ratios == (1, 4) and plan.lrs == (0.001, 0.004)
    assert plan.width == (16, 64) and plan.rank == (2, 16)
    assert plan.full_axes == {"lora.init": 2, "optim.lr_ratio": 2}
    # the target may narrow a searched axis: only what both allow is searched
    plan = make_plan(synthetic(**{"lora.init": ["A", "B"]}), proxy=["lora.rank=2"], target=["lora.init=B"])
    assert plan.inits == ("B",)


def test_no_lr_axis_means_octaves_around_the_base_lr():
    spec = synthetic()
    spec["grid"] = {}
    plan = make_plan(spec, proxy=["lora.rank=2"])
    assert plan.lrs == tuple(1e-3 * 2.0 ** k for k in range(-4, 5)) and plan.full_lrs is None


def test_target_equal_to_proxy_is_detected():
    assert make_plan(synthetic(), proxy=["lora.rank=16"], target=["lora.rank=16"]).equal
    assert make_plan(synthetic(), proxy=["train.steps=12"]).equal
    assert not make_plan(synthetic(), proxy=["train.steps=6"]).equal


@pytest.mark.parametrize(("alpha", "rslora", "proxy_alpha", "rule"), [
    (16.0, False, None, "1/r"),            # fixed lora_alpha
    (16.0, True, None, "1/sqrt(r)"),       # rsLoRA, fixed alpha
    (128.0, False, 8.0, "1"),              # lora_alpha = 2r
])
def test_alpha_convention_is_read_from_the_spec(alpha, rslora, proxy_alpha, rule):
    proxy = ["lora.rank=4"] + ([f"lora.alpha={proxy_alpha}"] if proxy_alpha else [])
    plan = make_plan(classify(alpha, rslora), proxy=proxy)
    assert plan.alpha_rule == rule and plan.rank == (4, 64)


def test_alpha_rule_given_sets_the_proxys_alpha():
    plan = make_plan(classify(128.0), proxy=["lora.rank=4"], alpha_rule="1")
    assert plan.alpha_rule == "1"
    assert plan.proxy.base["lora"]["alpha"] == pytest.approx(8.0)  # 128 * 4/64: the same multiplier


@pytest.mark.parametrize(("proxy", "given", "match"), [
    (["lora.rank=4", "lora.alpha=2"], None, "cannot read the alpha convention"),  # scaling ∝ r^-1.33
    (["lora.rank=4", "lora.alpha=1"], "1/r", "contradicts the spec"),  # constant multiplier: rule 1
    (["lora.alpha=8"], None, "differs from the target's"),                          # same rank, other multiplier
])
def test_alpha_convention_refusals(proxy, given, match):
    with pytest.raises(SpecError, match=match) as err:
        make_plan(classify(16.0), proxy=proxy, alpha_rule=given)
    assert "\n" not in str(err.value)


def test_alpha_convention_unreadable_for_a_python_trial():
    spec = {"name": "py", "base": {"task": {"kind": "python", "entry": "python_trials:quadratic"},
                                   "lora": {"rank": 8, "init": "A"}, "optim": {"lr_a": 0.1}, "train": {"steps": 5}},
            "metric": "loss", "mode": "min"}
    with pytest.raises(SpecError, match="cannot read the alpha convention from the spec.*--alpha-rule"):
        make_plan(spec, proxy=["lora.rank=2"])
    assert make_plan(spec, proxy=["lora.rank=2"], alpha_rule="rslora").alpha_rule == "1/sqrt(r)"


def test_read_alpha_rule_directly():
    assert read_alpha_rule({"lora": {"alpha_rule": "1/r"}}, {"lora": {"alpha_rule": "alpha/r"}}, (2, 8)) == "1/r"
    with pytest.raises(SpecError, match="differs"):
        read_alpha_rule({"lora": {"alpha_rule": "1"}}, {"lora": {"alpha_rule": "1/r"}}, (2, 8))
    assert read_alpha_rule({}, {}, (8, 8)) is None  # no rank change: nothing to read


@pytest.mark.parametrize(("spec_grid", "proxy", "match"), [
    ({"task.width": [16, 32]}, ["lora.rank=2"], "sweeps task.width over 2 values"),
    ({"lora.init": ["A", "pissa"]}, ["lora.rank=2"], "no transfer rule for lora.init 'pissa'"),
])
def test_axes_refusals(spec_grid, proxy, match):
    spec = synthetic(**spec_grid)
    if "pissa" in str(spec_grid):
        spec = classify()
        spec["grid"]["lora.init"] = ["A", "pissa"]
        proxy = ["lora.rank=4"]
    with pytest.raises(SpecError, match=match):
        make_plan(spec, proxy=proxy)


def test_budget_too_small_for_the_confirmation_is_refused_before_anything_runs():
    with pytest.raises(SpecError, match=r"budget of 10 trials is too small for the confirmation step.*at least 18"):
        make_plan(synthetic(), proxy=["lora.rank=2"], budget=10, search="grid")  # 9 proxy points + 3 x 3 confirmation
    assert make_plan(synthetic(), proxy=["lora.rank=2"], budget=18, search="grid").budget.trials == 18
    # the bracket search (default) needs at least its 3 start points
    with pytest.raises(SpecError, match=r"budget of 11 trials .* the proxy needs at least 3 \(3 points x 1 seed\).*at least 12"):
        make_plan(synthetic(), proxy=["lora.rank=2"], budget=11)
    assert make_plan(synthetic(), proxy=["lora.rank=2"], budget=12).n_start == 3
    with pytest.raises(SpecError, match="unknown search 'random': use bracket, grid, tpe"):
        make_plan(synthetic(), proxy=["lora.rank=2"], search="random")
    assert math.isclose(make_plan(synthetic(), budget="2m").budget.seconds, 120.0)


def test_width_flag_and_full_finetuning_target():
    plan = make_plan(synthetic(), proxy=["lora.rank=2"], width=(64, 256))
    assert plan.width == (64, 256)
    with pytest.raises(SpecError, match="--width takes two integers"):
        make_plan(synthetic(), proxy=["lora.rank=2"], width=(64, 0))
    plan = make_plan(synthetic(), proxy=["lora.rank=2", "lora.init=B"], target=["lora.method=full", "lora.init=B"])
    assert plan.target_method == "full" and plan.rank is None and plan.proxy_multiplier == 1.0


def test_width_is_read_from_two_model_folders(tmp_path):
    import json

    for name, hidden in (("small", 32), ("big", 128)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    spec = classify()
    spec["base"]["task"]["model"] = str(tmp_path / "big")
    plan = make_plan(spec, proxy=["lora.rank=4", f"task.model={tmp_path / 'small'}"])
    assert plan.width == (32, 128) and plan.rank == (4, 64)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text("{}")
    with pytest.raises(SpecError, match="names no hidden_size.*--width"):
        make_plan(spec, proxy=[f"task.model={tmp_path / 'odd'}"])


def test_full_finetuning_target_needs_an_init_b_alpha_one_proxy():
    with pytest.raises(SpecError, match="full-finetuning target needs an Init\\[B\\] proxy"):
        make_plan(synthetic(), proxy=["lora.rank=2"], target=["lora.method=full"])  # Init[A]
    with pytest.raises(SpecError, match="multiplier alpha/r = 1"):
        make_plan(synthetic(), proxy=["lora.rank=2", "lora.init=B", "lora.alpha_rule=1/r"],
                  target=["lora.method=full", "lora.init=B", "lora.alpha_rule=1/r"])
