"""Base models, tokenizers and LoRA targets of the real-model tasks (loradyn.tasks.models)."""

from __future__ import annotations

import pytest

from real_tasks import require_task_wheels

require_task_wheels()

from loradyn.errors import LoradynError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_llama_default_targets_translate_to_bert_names():
    from loradyn.tasks.models import check_targets, load_model

    model = load_model("tiny-bert", kind="classify", num_labels=2)
    assert check_targets(model, ("q_proj", "v_proj")) == ("query", "value")


def test_check_model_name_finds_wheels_and_folders(tmp_path):
    from loradyn.tasks.models import check_model_name

    for name in ("minilm", "tiny-bert", "tiny-llama"):
        check_model_name(name)
    with pytest.raises(LoradynError, match="existing model folder"):
        check_model_name(str(tmp_path / "missing"))
    with pytest.raises(LoradynError, match="no config.json"):
        check_model_name(str(tmp_path))


def fake_hub_model(cache, repo_id, *, tokenizer=True):
    """A 2-layer BERT saved with save_pretrained where `hf download repo_id` would leave it."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from loradyn.tasks.assets import minilm_dir

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.1)
    BertForSequenceClassification(config).save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def test_resolve_model_names_folders_and_the_local_hub_cache(tmp_path, monkeypatch):
    from loradyn.tasks.assets import minilm_dir
    from loradyn.tasks.models import check_model_name, load_model, load_tokenizer, resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("minilm", "tiny-bert", "tiny-llama"):
        assert resolve_model(name) == minilm_dir()
    folder = fake_hub_model(tmp_path / "hub", "someone/tiny-bert-2l")
    assert resolve_model("someone/tiny-bert-2l") == folder
    assert resolve_model(str(folder)) == folder  # the folder itself
    check_model_name("someone/tiny-bert-2l")
    model = load_model("someone/tiny-bert-2l", kind="classify", num_labels=3)
    assert model.config.num_labels == 3 and model.config.num_hidden_layers == 2
    assert model.config.hidden_dropout_prob == 0.0  # dropout off, as for every model
    assert load_tokenizer("someone/tiny-bert-2l")("a b").input_ids[0] == 101


def test_resolve_model_errors_are_one_line(tmp_path, monkeypatch):
    from loradyn.tasks.models import check_model_name, resolve_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(LoradynError) as info:
        check_model_name("nobody/no-model")
    msg = str(info.value)
    assert "\n" not in msg and "nobody/no-model" in msg and "local Hugging Face cache" in msg
    assert "hf download nobody/no-model" in msg and "huggingface-cli download nobody/no-model" in msg
    assert "save_pretrained" in msg and f"HF_HOME={tmp_path / 'hf'}" in msg and str(tmp_path / "hub") in msg
    with pytest.raises(LoradynError, match="existing model folder"):
        resolve_model(str(tmp_path / "missing" / "deeper" / "model"))
    repo = tmp_path / "hub" / "models--someone--partial"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c0ffee")
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "snapshots" / "c0ffee" / "README.md").write_text("only the card")
    with pytest.raises(LoradynError, match="has no config.json: download the whole model"):
        resolve_model("someone/partial")
