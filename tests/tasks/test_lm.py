"""The causal-LM recipes (loradyn.tasks.lm): article splits, and the fast causal-LM loss on
labelled positions, which equals the logits path (float64 reference written out per position)."""

from __future__ import annotations

import copy

import pytest
import torch

from real_tasks import require_task_wheels, tiny_gsm

require_task_wheels()

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.packs import AdapterPack  # noqa: E402
from loradyn.serialize import spec_from_dict  # noqa: E402
from loradyn.tasks import data  # noqa: E402
from loradyn.tasks.lm import _decoder_and_head  # noqa: E402
from loradyn.tasks.recipes import IGNORE  # noqa: E402
from loradyn.tasks.registry import get_task  # noqa: E402
from loradyn.tasks.runner import recipe_for  # noqa: E402
from loradyn.tasks.train import SoloPack, build_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


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


def test_wiki_lm_pipeline_splits_by_article(monkeypatch):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa ".split()
    fake = tuple((f"T{i}", " ".join(words[(i + j) % len(words)] for j in range(400))) for i in range(12))
    monkeypatch.setattr(data, "wiki_articles", lambda: fake)
    task = get_task("wiki-lm")
    cfg = spec_from_dict(task.spec_cls, {
        "task": {"kind": "wiki-lm", "model": "tiny-llama", "seq_len": 32, "val_articles": 2, "test_articles": 2,
                 "n_val": 4, "n_test": 4, "n_train": 16},
        "lora": {"rank": 2}, "train": {"steps": 2, "batch_size": 4, "bf16": True, "pack": "solo"}})
    from loradyn.tasks.lm import CausalLMRecipe

    recipe = CausalLMRecipe(cfg.task)
    assert len(recipe.train_rows) == 16 and all(len(c) == 32 for c in recipe.train_rows)
    [result] = task.run_pack([cfg])
    assert result.status == "done" and result.metrics["val_ppl"] > 1
    with pytest.raises(LoradynError, match="too small"):
        CausalLMRecipe(spec_from_dict(type(cfg.task), {"kind": "wiki-lm", "model": "tiny-llama", "val_articles": 6,
                                                       "test_articles": 6}))


def test_fused_loss_equals_reference_float64_answer_tokens_only():
    config = tiny_gsm()
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
    configs = [tiny_gsm("A", 0), tiny_gsm("B", 1)]
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
    config = tiny_gsm(targets=("q_proj", "v_proj", "lm_head"))
    recipe = recipe_for(config.task)
    model, _ = build_model(recipe, [config], recipe.base_model(torch.float64))
    assert _decoder_and_head(model) is None
    batch = _one_batch(recipe)
    (loss,) = recipe.train_losses(model, SoloPack(), batch)
    ref = _reference_loss(model, batch)
    assert abs(loss.item() - ref.item()) <= 1e-12 * abs(ref.item())
