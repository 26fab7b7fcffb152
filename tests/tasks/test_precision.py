"""bf16 training on CPU (loradyn.tasks.precision): bf16 weight storage is bit-identical to plain
autocast, and a slow bf16 CPU gets one warning line."""

from __future__ import annotations

import copy

import pytest
import torch

from real_tasks import require_task_wheels, tiny_gsm

require_task_wheels()

from loradyn.tasks.precision import prepare_half_  # noqa: E402
from loradyn.tasks.runner import recipe_for  # noqa: E402
from loradyn.tasks.train import SoloPack, build_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _one_batch(recipe):
    return next(recipe.train_batches(4, 0))


def test_bf16_weight_storage_is_bit_identical_to_autocast():
    config = tiny_gsm()
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
    recipe = recipe_for(tiny_gsm().task)
    batch = _one_batch(recipe)
    base = recipe.base_model(torch.float32)
    losses = []
    for bf16 in (False, True):
        config = tiny_gsm(bf16=bf16)
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
        runner._warn_slow_bf16(tiny_gsm(bf16=True))
    runner._warn_slow_bf16(tiny_gsm(bf16=False))
    err = capsys.readouterr().err
    assert err.count("\n") == (1 if warned else 0)
    if warned:
        assert "8.0x slower" in err and "train.bf16=false" in err


def test_bf16_slowdown_is_measured():
    from loradyn.tasks.precision import bf16_matmul_slowdown

    value = bf16_matmul_slowdown()
    assert 0 < value < 1000 and bf16_matmul_slowdown() == value  # cached
