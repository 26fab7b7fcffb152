"""loradyn.tuning.output: the compute estimate, the PEFT settings and the snippet (which runs)."""

from __future__ import annotations

import pandas as pd
import pytest

from loradyn.tuning.output import compute_summary, peft_settings, snippet_text
from loradyn.tuning.plan import make_plan, point_config


def classify_spec():
    return {"name": "cls", "base": {"task": {"kind": "hf-classify", "model": "some/model", "data": "rows.csv",
                                             "columns": {"text": "t", "label": "y"}},
                                    "lora": {"rank": 8, "alpha": 16.0, "rslora": True,
                                             "target_modules": ["query", "value"]},
                                    "optim": {"name": "adamw", "lr_a": 1e-4, "weight_decay": 0.01},
                                    "train": {"steps": 7, "batch_size": 4, "warmup_steps": 2}},
            "grid": {"optim.lr_a": {"log2": [-14, -8, 0.5]}, "lora.init": ["A", "B"]}, "seeds": 3}


def rec(**kw):
    return {"init": "B", "lr_a": 2e-3, "lr_ratio": 4.0, "lr_b": 8e-3, "transferred_lr_a": 2e-3,
            "decision": "holds", "reason": "", **kw}


def test_compute_fraction_is_tune_seconds_over_the_estimated_full_grid():
    plan = make_plan(classify_spec(), proxy=["lora.rank=2"])
    proxy = pd.DataFrame({"seconds": [1.0, 2.0, 3.0], "status": ["done"] * 3})
    confirm = pd.DataFrame({"seconds": [4.0, 6.0, 100.0], "status": ["done", "done", "diverged"]})
    got = compute_summary(plan, proxy, confirm, factor=1.0)
    # full grid: 13 lrs (the spec's half-octave axis) x 2 inits x 3 seeds, 5 s each (mean of finished trials)
    assert got["full_grid"]["n_trials"] == 13 * 2 * 3 and got["full_grid"]["seconds_per_trial"] == 5.0
    assert got["tune_trial_seconds"] == 116.0 and got["tune_trials"] == 6
    assert got["compute_fraction"] == pytest.approx(116.0 / (78 * 5.0))
    assert "13 learning rates (the target spec's optim.lr_a axis) x 2 lora.init x 3 seeds" in got["full_grid"]["assumption"]


def test_peft_settings_of_an_hf_classify_target():
    plan = make_plan(classify_spec(), proxy=["lora.rank=2"])
    cfg = point_config(plan.target, "B", 1.0, 2e-3)
    got = peft_settings(plan, cfg, rec())
    assert got["lora_config"] == {"r": 8, "lora_alpha": 16.0, "use_rslora": True, "lora_dropout": 0.0,
                                  "target_modules": ["query", "value"], "task_type": "SEQ_CLS"}
    args = got["training_arguments"]
    assert args["learning_rate"] == 2e-3 and args["max_steps"] == 7 and args["per_device_train_batch_size"] == 4
    assert args["lr_scheduler_type"] == "constant_with_warmup" and args["warmup_steps"] == 2
    assert args["weight_decay"] == 0.01 and args["max_grad_norm"] == 0.0 and args["seed"] == 0
    assert got["loradyn_setup"] == {"init": "B", "lr_ratio": 4.0, "seed": 0}


def test_synthetic_alpha_rule_becomes_peft_lora_alpha():
    spec = {"name": "syn", "base": {"task": {"kind": "synthetic", "width": 32},
                                    "lora": {"rank": 16, "alpha_rule": "1/sqrt(r)"}, "train": {"steps": 5}}}
    plan = make_plan(spec, proxy=["lora.rank=4"])
    lora = peft_settings(plan, point_config(plan.target), rec())["lora_config"]
    assert lora["lora_alpha"] / lora["r"] == pytest.approx(16 ** -0.5)  # PEFT scaling = the toy's α


@pytest.mark.peft
def test_the_snippet_runs_and_sets_up_init_and_loraplus(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    import torch

    from loradyn.tasks.models import load_model

    plan = make_plan(classify_spec(), proxy=["lora.rank=2"])
    settings = peft_settings(plan, point_config(plan.target, "B", 4.0, 2e-3), rec())
    text = snippet_text(plan, settings, rec())
    monkeypatch.chdir(tmp_path)
    ids = torch.randint(5, 100, (8, 6), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": i % 2} for i in range(8)]
    namespace = {"base_model": load_model("tiny-bert", kind="classify", num_labels=2), "train_dataset": rows}
    body = text.replace("trainer.train()\n", "")
    exec(compile(body, "peft_snippet.py", "exec"), namespace)  # noqa: S102
    trainer = namespace["trainer"]
    assert trainer.args.learning_rate == 2e-3 and trainer.args.max_steps == 7
    model = namespace["model"]
    assert model.peft_config["default"].r == 8 and model.peft_config["default"].use_rslora
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert lora_a and all(float(p.detach().abs().max()) == 0.0 for p in lora_a)  # Init[B]: A = 0
    opt = trainer.create_optimizer()
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([2e-3, 8e-3])  # lr_a and lr_b = 4 x lr_a
    trainer.train()  # and it trains (7 steps on 8 rows)
