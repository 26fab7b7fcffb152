"""apply_lora: PEFT-style target matching, freezing, init per spec, model-level merge/unmerge.

Numerical tolerances: float64 models; merged vs unmerged outputs within 1e-12 absolute, unmerge
restores base weights within 1e-13 absolute (one add and one subtract of the same delta).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import loradyn
from helpers import ToyAttention, model_output, tiny_gpt2, tiny_llama, train_steps
from loradyn.discover import iter_lora_layers
from loradyn.errors import LoradynError
from loradyn.inject import find_targets, lora_disabled, lora_layers, lora_state_dict, matches_target
from loradyn.layers import LoRAEmbedding, LoRALinear

IDS = torch.tensor([[1, 5, 7, 2], [3, 3, 0, 9]])


def toy() -> nn.Module:
    torch.manual_seed(0)
    return ToyAttention().double()


def trainable(model: nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def test_matches_target_is_peft_suffix_rule() -> None:
    assert matches_target("q_proj", ["q_proj"])
    assert matches_target("model.layers.0.self_attn.q_proj", ["q_proj"])
    assert matches_target("a.b.c", ["b.c"])
    assert not matches_target("a.xq_proj", ["q_proj"])  # suffix must start at a name boundary
    assert not matches_target("q_proj.base_layer", ["q_proj"])


def test_only_targets_replaced_base_frozen_and_counts() -> None:
    model = toy()
    spec = loradyn.LoraSpec(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "embed_tokens"))
    out = loradyn.apply_lora(model, spec, generator=0)
    assert out is model and model._loradyn_spec == spec
    assert isinstance(model.q_proj, LoRALinear) and isinstance(model.v_proj, LoRALinear)
    assert isinstance(model.embed_tokens, LoRAEmbedding)
    assert type(model.k_proj) is nn.Linear and type(model.o_proj) is nn.Linear
    width, vocab, r = 16, 32, 4
    assert trainable(model) == {
        "embed_tokens.lora_embedding_A": r * vocab,
        "embed_tokens.lora_embedding_B": width * r,
        "q_proj.lora_A.weight": r * width,
        "q_proj.lora_B.weight": width * r,
        "v_proj.lora_A.weight": r * width,
        "v_proj.lora_B.weight": width * r,
    }
    assert sum(trainable(model).values()) == 3 * r * (width + width) - r * width + r * vocab
    assert set(lora_state_dict(model)) == set(trainable(model))
    assert [h.name for h in iter_lora_layers(model)] == ["embed_tokens", "q_proj", "v_proj"]


@pytest.mark.parametrize("scheme", ["A", "B"])
def test_output_equals_base_at_init_and_after_init_lora_b(scheme: str) -> None:
    model = toy()
    base = copy.deepcopy(model)
    spec = loradyn.LoraSpec(rank=3, alpha=6.0, init=scheme, target_modules=("all-linear", "embed_tokens"))
    loradyn.apply_lora(model, spec, generator=1)
    torch.testing.assert_close(model(IDS), base(IDS), rtol=0, atol=0)
    assert loradyn.init_lora_(model, "B", generator=2) == 5
    torch.testing.assert_close(model(IDS), base(IDS), rtol=0, atol=0)


def test_spec_init_and_generator_match_init_lora() -> None:
    spec = loradyn.LoraSpec(rank=2, init="B", distribution="gaussian", std_b=0.3, target_modules=("q_proj", "v_proj"))
    a = loradyn.apply_lora(toy(), spec, generator=5)
    b = loradyn.apply_lora(toy(), spec, generator=6)
    loradyn.init_lora_(b, "B", distribution="gaussian", std_b=0.3, generator=5, force=True)
    for key, value in lora_state_dict(a).items():
        torch.testing.assert_close(value, lora_state_dict(b)[key], rtol=0, atol=0)
    assert not a.q_proj.lora_A.weight.any()
    assert float(a.q_proj.lora_B.weight.detach().std()) == pytest.approx(0.3, rel=0.5)


def test_all_linear_on_toy_excludes_classifier_head() -> None:
    model = loradyn.apply_lora(toy(), loradyn.LoraSpec(rank=2, target_modules=("all-linear",)))
    assert [n for n, _ in model.named_modules() if getattr(_, "_loradyn_layer", False)] == [
        "q_proj", "k_proj", "v_proj", "o_proj"]
    assert type(model.classifier) is nn.Linear


def test_all_linear_on_llama_excludes_lm_head() -> None:
    pytest.importorskip("transformers")
    model = tiny_llama()
    names = find_targets(model, ("all-linear",))
    assert "lm_head" not in names and len(names) == 2 * 7  # q k v o gate up down per layer
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in names)


def test_all_linear_on_gpt2_wraps_conv1d() -> None:
    pytest.importorskip("transformers")
    model = tiny_gpt2()
    base = copy.deepcopy(model)
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=2, target_modules=("all-linear",)), generator=0)
    layers = list(lora_layers(model))
    assert len(layers) == 2 * 4 and all(layer.fan_in_fan_out for layer in layers)  # c_attn c_proj c_fc c_proj
    assert type(model.lm_head) is nn.Linear
    torch.testing.assert_close(model_output(model, IDS), model_output(base, IDS), rtol=0, atol=0)


def test_model_merge_unmerge_round_trip() -> None:
    model = toy()
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=3, target_modules=("q_proj", "o_proj", "embed_tokens")), generator=0)
    train_steps(model, IDS, steps=3, lr=0.05)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    y = model(IDS).detach()
    assert loradyn.merge(model) == 3 and loradyn.merge(model) == 0
    torch.testing.assert_close(model(IDS), y, rtol=0, atol=1e-12)
    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    assert loradyn.unmerge(model) == 3 and loradyn.unmerge(model) == 0
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], rtol=0, atol=1e-13)
    torch.testing.assert_close(model(IDS), y, rtol=0, atol=1e-12)


def test_lora_disabled_gives_base_function() -> None:
    model = toy()
    base = copy.deepcopy(model)
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=3, target_modules=("q_proj", "v_proj")), generator=0)
    train_steps(model, IDS, steps=2, lr=0.05)
    assert not torch.allclose(model(IDS), base(IDS))
    with lora_disabled(model):
        torch.testing.assert_close(model(IDS), base(IDS), rtol=0, atol=1e-14)
    assert not model.q_proj.disabled


def test_shared_module_replaced_at_every_path() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=1, target_modules=("0",)))
    assert isinstance(model[0], LoRALinear) and model[2] is model[0]


def test_works_with_peft_merge() -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(toy(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    loradyn.init_lora_(model, "B", generator=0)
    train_steps(model, IDS, steps=2, lr=0.05)
    y = model(IDS).detach()
    assert loradyn.merge(model) == 2
    torch.testing.assert_close(model(IDS), y, rtol=1e-6, atol=1e-6)  # PEFT keeps fp32 adapters
    assert loradyn.unmerge(model) == 2


# --- errors -------------------------------------------------------------------------------------
def test_no_match_lists_existing_names() -> None:
    with pytest.raises(LoradynError, match=r"matched no module.*q_proj") as info:
        loradyn.apply_lora(toy(), loradyn.LoraSpec(target_modules=("query",)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("target", ["norm", ""])
def test_unsupported_target_type(target: str) -> None:
    if not target:  # a container module
        model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
        target = "0"
    else:
        model = toy()
    with pytest.raises(LoradynError, match="loradyn adapts nn.Linear"):
        loradyn.apply_lora(model, loradyn.LoraSpec(target_modules=(target,)))


def test_already_has_lora_layers() -> None:
    model = loradyn.apply_lora(toy(), loradyn.LoraSpec(rank=2, target_modules=("q_proj",)))
    with pytest.raises(LoradynError, match="already has LoRA layers"):
        loradyn.apply_lora(model, loradyn.LoraSpec(rank=2, target_modules=("v_proj",)))


def test_multihead_attention_out_proj_refused_and_skipped_by_all_linear() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(LoradynError, match="MultiheadAttention"):
        loradyn.apply_lora(model, loradyn.LoraSpec(target_modules=("out_proj",)))
    assert find_targets(model, ("all-linear",)) == ["1", "2"]


def test_merge_without_lora_layers_raises() -> None:
    with pytest.raises(LoradynError, match="apply_lora"):
        loradyn.merge(toy())


def test_bad_spec_type() -> None:
    with pytest.raises(LoradynError, match="LoraSpec"):
        loradyn.apply_lora(toy(), {"rank": 2})


# --- modules_to_save ------------------------------------------------------------------------------
def tiny_bert_classifier() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg).double().eval()


def test_classification_head_is_trained_by_default_as_peft_seq_cls() -> None:
    model = loradyn.apply_lora(tiny_bert_classifier(), loradyn.LoraSpec(rank=2, target_modules=("query",)))
    names = set(trainable(model))
    assert {"classifier.weight", "classifier.bias"} <= names
    assert names - {"classifier.weight", "classifier.bias"} == set(lora_state_dict(model))
    assert model._loradyn_modules_to_save == ("classifier",)
    assert model._loradyn_spec.modules_to_save is None  # the spec is stored as given
    none = loradyn.apply_lora(tiny_bert_classifier(), loradyn.LoraSpec(rank=2, target_modules=("query",)),
                              modules_to_save=())
    assert not any(n.startswith("classifier") for n in trainable(none))
    spec_none = loradyn.LoraSpec(rank=2, target_modules=("query",), modules_to_save=())
    assert not any(n.startswith("classifier") for n in trainable(loradyn.apply_lora(tiny_bert_classifier(), spec_none)))


def test_explicit_modules_to_save_and_no_default_without_a_head() -> None:
    model = loradyn.apply_lora(toy(), loradyn.LoraSpec(rank=2, target_modules=("q_proj",)))
    assert not any(n.startswith("classifier") for n in trainable(model))  # ToyAttention has no config
    model = loradyn.apply_lora(toy(), loradyn.LoraSpec(rank=2, target_modules=("q_proj",)),
                               modules_to_save=["classifier", "norm"])
    assert {"classifier.weight", "classifier.bias", "norm.weight", "norm.bias"} <= set(trainable(model))
    assert model._loradyn_spec.modules_to_save == ("classifier", "norm")


def test_lora_targets_inside_modules_to_save_are_skipped_as_in_peft() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)))
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=2, target_modules=("all-linear",), modules_to_save=("1",)))
    assert isinstance(model[0], LoRALinear) and type(model[1][0]) is nn.Linear
    assert {"1.0.weight", "1.1.weight"} <= set(trainable(model))
    with pytest.raises(LoradynError, match="matched no module outside modules_to_save") as err:
        loradyn.apply_lora(toy(), loradyn.LoraSpec(target_modules=("classifier",), modules_to_save=("classifier",)))
    assert "\n" not in str(err.value)


def test_unknown_modules_to_save_is_one_line() -> None:
    with pytest.raises(LoradynError, match=r"modules_to_save \['head'\] matched no module") as err:
        loradyn.apply_lora(toy(), loradyn.LoraSpec(rank=2, target_modules=("q_proj",), modules_to_save=("head",)))
    assert "\n" not in str(err.value)


# --- rank larger than the layer -------------------------------------------------------------------
def test_rank_above_min_features_warns_once_in_one_line() -> None:
    model = nn.Sequential(nn.Linear(16, 4), nn.Linear(4, 16), nn.Linear(16, 16))
    with pytest.warns(UserWarning) as record:
        loradyn.apply_lora(model, loradyn.LoraSpec(rank=8, target_modules=("0", "1", "2")))
    messages = [str(w.message) for w in record if "exceeds" in str(w.message)]
    assert messages == ["rank 8 exceeds min(in_features, out_features) = 4 of '0' (and 1 more layers): "
                        "the update B @ A has rank at most 4 there; lower the rank"]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loradyn.apply_lora(nn.Sequential(nn.Linear(16, 4)), loradyn.LoraSpec(rank=4, target_modules=("0",)))
        loradyn.apply_lora(nn.Sequential(nn.Embedding(10, 4)), loradyn.LoraSpec(rank=4, target_modules=("0",)))
    with pytest.warns(UserWarning, match="= 4 of '0'"):
        loradyn.apply_lora(nn.Sequential(nn.Embedding(10, 4)), loradyn.LoraSpec(rank=5, target_modules=("0",)))
