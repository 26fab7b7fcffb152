"""PEFT-compatible adapters: loradyn -> stock PEFT, PEFT (Init[B]) -> stock PEFT, and load_adapter.

All models are tiny, randomly initialised transformers models in float64 (no downloads). After a
few Adam steps both factors are non-zero, so equal outputs prove the factors, keys, scaling and
fan_in_fan_out all survived. Tolerance: 1e-10 absolute on outputs of order 1 (float64; the two
implementations only reorder roundings).
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import loradyn
from helpers import model_output, tiny_bert, tiny_gpt2, tiny_llama, train_steps
from loradyn.adapter_io import PEFT_EXTRA_KEY_WARNING, load_adapter, save_adapter
from loradyn.errors import LoradynError
from loradyn.inject import lora_state_dict

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytestmark = pytest.mark.peft

TOL = dict(rtol=0, atol=1e-10)
IDS = torch.tensor([[1, 5, 7, 2, 9, 11], [3, 3, 0, 9, 60, 2]])

CASES = {
    # name: (builder, target_modules, LoraSpec extras)
    "llama": (tiny_llama, ("q_proj", "v_proj", "embed_tokens"), {}),
    "bert": (tiny_bert, ("query", "value", "word_embeddings"), {"rslora": True}),
    "gpt2": (tiny_gpt2, ("c_attn",), {"dropout": 0.1}),
}


def peft_load(base: torch.nn.Module, directory) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_EXTRA_KEY_WARNING)
        return peft.PeftModel.from_pretrained(base, str(directory)).eval()


def lora_names(model: torch.nn.Module) -> set[str]:
    """Module paths of LoRA layers relative to the base model (PEFT's prefix stripped)."""
    names = set()
    for h in loradyn.iter_lora_layers(model):
        names.add(h.name.removeprefix("base_model.model."))
    return names


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("scheme", ["A", "B"])
def test_loradyn_to_stock_peft_identical_outputs(case: str, scheme: str, tmp_path) -> None:
    build, targets, extra = CASES[case]
    model = build()
    fresh = copy.deepcopy(model)
    spec = loradyn.LoraSpec(rank=4, alpha=8.0, init=scheme, target_modules=targets, **extra)
    loradyn.apply_lora(model, spec, generator=0)
    model.train()
    train_steps(model, IDS, steps=3, lr=1e-2)
    model.eval()
    assert all(t.abs().sum() > 0 for t in lora_state_dict(model).values())  # both factors moved
    directory = save_adapter(model, tmp_path / "adapter")
    loaded = peft_load(fresh, directory)
    assert lora_names(loaded) == lora_names(model)
    torch.testing.assert_close(model_output(loaded, IDS), model_output(model, IDS), **TOL)


def test_saved_files_follow_peft_format(tmp_path) -> None:
    model = tiny_gpt2()
    spec = loradyn.LoraSpec(rank=2, alpha=4.0, init="B", target_modules=("c_attn", "wte"))
    loradyn.apply_lora(model, spec, generator=0)
    directory = save_adapter(model, tmp_path, base_model_name_or_path="tiny-gpt2")
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] is None
    assert config["init_lora_weights"] is True  # never "B": PEFT would raise on load
    assert (config["r"], config["lora_alpha"], config["use_rslora"], config["bias"]) == (2, 4.0, False, "none")
    assert config["fan_in_fan_out"] is True and config["base_model_name_or_path"] == "tiny-gpt2"
    assert sorted(config["target_modules"]) == ["c_attn", "wte"]
    assert config["loradyn"]["spec"]["init"] == "B" and config["loradyn"]["version"] == loradyn.__version__
    from safetensors import safe_open

    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
    assert "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight" in keys
    assert "base_model.model.transformer.wte.lora_embedding_A" in keys
    assert "base_model.model.transformer.wte.lora_embedding_B" in keys
    assert len(keys) == 2 * 3


def test_extra_key_warning_and_metadata_off(tmp_path) -> None:
    model = loradyn.apply_lora(tiny_llama(), loradyn.LoraSpec(rank=2, target_modules=("q_proj",)))
    save_adapter(model, tmp_path / "with")
    save_adapter(model, tmp_path / "without", metadata=False)
    with pytest.warns(UserWarning, match=PEFT_EXTRA_KEY_WARNING):
        peft.PeftConfig.from_pretrained(str(tmp_path / "with"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft.PeftConfig.from_pretrained(str(tmp_path / "without"))


def test_target_suffixes_never_over_match(tmp_path) -> None:
    """BERT has four kinds of `dense`; adapting only attention.output.dense must stay exact."""
    model = tiny_bert()
    fresh = copy.deepcopy(model)
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=2, target_modules=("attention.output.dense",)), generator=0)
    train_steps(model, IDS, steps=2)
    directory = save_adapter(model, tmp_path)
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["target_modules"] == ["output.dense"] or config["target_modules"] == ["attention.output.dense"]
    loaded = peft_load(fresh, directory)
    assert lora_names(loaded) == {f"encoder.layer.{i}.attention.output.dense" for i in range(2)}
    torch.testing.assert_close(model_output(loaded, IDS), model_output(model, IDS), **TOL)


def test_peft_init_b_round_trip_through_stock_peft(tmp_path) -> None:
    base = tiny_llama()
    fresh = copy.deepcopy(base)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"])
    model = peft.get_peft_model(base, config)
    assert loradyn.init_lora_(model, "B", generator=0) == 2 * 2 + 1
    train_steps(model, IDS, steps=3, lr=1e-2)
    model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting `save_embedding_layers`")
        model.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True
    loaded = peft_load(fresh, tmp_path)
    torch.testing.assert_close(model_output(loaded, IDS), model_output(model, IDS), **TOL)


def test_load_adapter_round_trip_into_fresh_model(tmp_path) -> None:
    model = tiny_bert()
    fresh = copy.deepcopy(model)
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=3, alpha=6.0, init="B", target_modules=("key", "word_embeddings")), generator=0)
    train_steps(model, IDS, steps=3)
    save_adapter(model, tmp_path)
    state = torch.get_rng_state()
    load_adapter(fresh, tmp_path)
    assert torch.equal(state, torch.get_rng_state())  # injection does not touch the global RNG
    assert fresh._loradyn_spec.init == "B" and not any(p.requires_grad for n, p in fresh.named_parameters() if "lora" not in n)
    torch.testing.assert_close(model_output(fresh, IDS), model_output(model, IDS), **TOL)


@pytest.mark.parametrize("case", ["gpt2", "llama"])
def test_load_peft_saved_adapter(case: str, tmp_path) -> None:
    build, targets, _ = CASES[case]  # llama includes embed_tokens: PEFT also saves the embedding table
    base = build()
    fresh = copy.deepcopy(base)
    config = peft.LoraConfig(r=2, lora_alpha=5, target_modules=list(targets), fan_in_fan_out=case == "gpt2")
    model = peft.get_peft_model(base, config)
    loradyn.init_lora_(model, "B", generator=1)
    train_steps(model, IDS, steps=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting `save_embedding_layers`")
        model.eval().save_pretrained(str(tmp_path))
    load_adapter(fresh, tmp_path)
    assert lora_names(fresh) == lora_names(model)
    torch.testing.assert_close(model_output(fresh, IDS), model_output(model, IDS), **TOL)


def test_load_adapter_into_existing_layers_checks_scaling(tmp_path) -> None:
    model = loradyn.apply_lora(tiny_llama(), loradyn.LoraSpec(rank=2, alpha=4.0, target_modules=("q_proj",)), generator=0)
    save_adapter(model, tmp_path)
    same = loradyn.apply_lora(tiny_llama(), loradyn.LoraSpec(rank=2, alpha=4.0, target_modules=("q_proj",)), generator=3)
    load_adapter(same, tmp_path)
    torch.testing.assert_close(same.model.layers[0].self_attn.q_proj.lora_A.weight,
                               model.model.layers[0].self_attn.q_proj.lora_A.weight, rtol=0, atol=0)
    other = loradyn.apply_lora(tiny_llama(), loradyn.LoraSpec(rank=2, alpha=8.0, target_modules=("q_proj",)))
    with pytest.raises(LoradynError, match="scaling"):
        load_adapter(other, tmp_path)
    wrong = loradyn.apply_lora(tiny_llama(), loradyn.LoraSpec(rank=2, alpha=4.0, target_modules=("v_proj",)))
    with pytest.raises(LoradynError, match="disagree"):
        load_adapter(wrong, tmp_path)


def test_errors(tmp_path) -> None:
    with pytest.raises(LoradynError, match="apply_lora"):
        save_adapter(tiny_llama(), tmp_path)
    with pytest.raises(LoradynError, match="not found"):
        load_adapter(tiny_llama(), tmp_path / "missing")
