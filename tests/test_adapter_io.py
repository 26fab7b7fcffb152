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


# --- modules_to_save: the classification head is trained, saved and reloaded ------------------------
SENTENCES = ["a wonderful, moving film", "dull and far too long", "I loved every minute of it",
             "a waste of two hours", "sharp, funny and warm", "the plot makes no sense"]


def _minilm(seed: int) -> torch.nn.Module:
    """MiniLM with a fresh 2-class head drawn from ``seed`` (eval mode: no dropout, deterministic)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from loradyn.tasks.assets import minilm_dir

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "Some weights ... newly initialized: classifier" is the point here
    try:
        return AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2).eval()
    finally:
        hf_logging.set_verbosity(verbosity)


def test_minilm_head_is_trained_saved_and_reloaded_by_stock_peft_and_load_adapter(tmp_path) -> None:
    """Before modules_to_save the head stayed frozen and unsaved: a reloaded model had another head."""
    from transformers import AutoTokenizer

    from loradyn.tasks.assets import minilm_dir

    batch = AutoTokenizer.from_pretrained(minilm_dir())(SENTENCES, padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    model = _minilm(seed=0)
    head = model.classifier.weight.detach().clone()
    loradyn.apply_lora(model, loradyn.LoraSpec(rank=4, alpha=8.0, target_modules=("query", "value")), generator=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable  # the default for *ForSequenceClassification
    assert all("lora_" in n or n.startswith("classifier.") for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and not torch.equal(model.classifier.weight, head)  # the head learns
    with torch.no_grad():
        want = model(**batch).logits
    directory = save_adapter(model, tmp_path)

    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"
    keys = set(safetensors_torch.load_file(str(directory / "adapter_model.safetensors")))
    # PEFT's layout: the module's own keys; "classifier.modules_to_save.default.weight" would not load
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    assert not any("modules_to_save" in k or "original_module" in k for k in keys)

    fresh = _minilm(seed=1)
    assert not torch.equal(fresh.classifier.weight, head)  # another random head
    with torch.no_grad():
        got = peft_load(fresh, directory)(**batch).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    again = load_adapter(_minilm(seed=2), directory)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == trainable
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, want, rtol=0, atol=1e-5)


def test_peft_seq_cls_adapter_loads_head_into_loradyn(tmp_path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    def base():
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return BertForSequenceClassification(cfg).double().eval()

    model = peft.get_peft_model(base(), peft.LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    train_steps(model, IDS, steps=2)
    model.save_pretrained(str(tmp_path))
    fresh = base()
    torch.nn.init.normal_(fresh.classifier.weight)  # another head than the one PEFT trained
    load_adapter(fresh, tmp_path)
    assert fresh.classifier.weight.requires_grad
    torch.testing.assert_close(model_output(fresh, IDS), model_output(model, IDS), **TOL)


def test_explicit_modules_to_save_round_trip_through_stock_peft(tmp_path) -> None:
    model = tiny_llama()
    fresh = tiny_llama(seed=1)
    fresh.load_state_dict(model.state_dict())
    torch.nn.init.normal_(fresh.lm_head.weight)  # only the saved module differs
    spec = loradyn.LoraSpec(rank=2, target_modules=("q_proj",), modules_to_save=("lm_head",))
    loradyn.apply_lora(model, spec, generator=0)
    train_steps(model, IDS, steps=2)
    directory = save_adapter(model, tmp_path)
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["lm_head"] and config["task_type"] is None
    torch.testing.assert_close(model_output(peft_load(copy.deepcopy(fresh), directory), IDS),
                               model_output(model, IDS), **TOL)
    torch.testing.assert_close(model_output(load_adapter(fresh, directory), IDS), model_output(model, IDS), **TOL)


# --- file errors: one line naming the file and the fix; pickles are never unpickled ---------------------
def _saved(tmp_path):
    model = loradyn.apply_lora(tiny_llama(), loradyn.LoraSpec(rank=2, target_modules=("q_proj",)), generator=0)
    return save_adapter(model, tmp_path / "adapter")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and "\x1b" not in msg
    return msg


def test_save_to_an_unwritable_path_is_one_line(tmp_path) -> None:
    model = loradyn.apply_lora(tiny_llama(), loradyn.LoraSpec(rank=2, target_modules=("q_proj",)))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for target in (blocker, blocker / "sub"):
        with pytest.raises(LoradynError, match="cannot write the adapter to .*a_file.*give a writable directory") as err:
            save_adapter(model, target)
        _one_line(err)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle_renamed", "empty"])
def test_corrupt_safetensors_is_one_line(damage: str, tmp_path) -> None:
    directory = _saved(tmp_path)
    weights = directory / "adapter_model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00\x01not safetensors" * 10)
    elif damage == "pickle_renamed":
        torch.save({"base_model.model.x.lora_A.weight": torch.zeros(2, 2)}, weights)
    else:
        weights.write_bytes(b"")
    with pytest.raises(LoradynError, match=r"adapter_model\.safetensors is not a readable safetensors file.*again") as err:
        load_adapter(tiny_llama(), directory)
    _one_line(err)


def test_pickled_bin_weights_are_refused_without_unpickling(tmp_path, monkeypatch) -> None:
    directory = _saved(tmp_path)
    tensors = safetensors_torch.load_file(str(directory / "adapter_model.safetensors"))
    torch.save(tensors, directory / "adapter_model.bin")  # a perfectly valid torch pickle
    (directory / "adapter_model.safetensors").unlink()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(LoradynError, match=r"adapter_model\.bin is a pickle, which loradyn never loads") as err:
        load_adapter(tiny_llama(), directory)
    _one_line(err)


def test_bad_config_and_paths_are_one_line(tmp_path) -> None:
    directory = _saved(tmp_path)
    with pytest.raises(LoradynError, match="is a file: pass the adapter directory") as err:
        load_adapter(tiny_llama(), directory / "adapter_model.safetensors")
    _one_line(err)
    with pytest.raises(LoradynError, match="not found") as err:
        load_adapter(tiny_llama(), tmp_path / "missing")
    _one_line(err)
    config = directory / "adapter_config.json"
    config.write_text(config.read_text()[:40])  # truncated JSON
    with pytest.raises(LoradynError, match=r"adapter_config\.json is not valid JSON .*save the adapter again") as err:
        load_adapter(tiny_llama(), directory)
    _one_line(err)
    config.write_text("[1, 2]")
    with pytest.raises(LoradynError, match="holds no JSON object") as err:
        load_adapter(tiny_llama(), directory)
    _one_line(err)
    config.write_text('{"peft_type": "LORA"}')
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(LoradynError, match="no adapter_model.safetensors in") as err:
        load_adapter(tiny_llama(), directory)
    _one_line(err)
