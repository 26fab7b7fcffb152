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
