"""``sentiment-init``: Init[A] vs Init[B] (and LoRA+) with MiniLM on Rotten Tomatoes polarity."""

from ._presets import (
    MINILM_FULL_GRID,
    MINILM_FULL_TRAIN,
    MINILM_LORA,
    MINILM_QUICK_GRID,
    MINILM_QUICK_TRAIN,
)
from .init_compare import Metric, Params, init_experiment

FULL = Params(
    base={"task": {"kind": "sentiment", "n_val": 1000, "n_test": 1000}, "lora": MINILM_LORA,
          "optim": {"name": "adamw"}, "train": MINILM_FULL_TRAIN},
    seeds=3, **MINILM_FULL_GRID,
)
QUICK = Params(
    base={"task": {"kind": "sentiment", "n_train": 640, "n_val": 300, "n_test": 300}, "lora": MINILM_LORA,
          "optim": {"name": "adamw"}, "train": MINILM_QUICK_TRAIN},
    seeds=2, **MINILM_QUICK_GRID,
)

EXPERIMENT = init_experiment(
    "sentiment-init",
    "MiniLM on Rotten Tomatoes polarity: Init[A]'s optimal lr is larger and its accuracy as good (2406.08447)",
    metric=Metric("val_accuracy", "max", "test_accuracy"), quick=QUICK, full=FULL, order=110,
)
