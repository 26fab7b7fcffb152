"""``wiki-lm``: SmolLM2-135M language modelling on gensim's English Wikipedia articles."""

from ..spec import WikiLMTrial
from ._real import real_kind

KIND = real_kind(
    "wiki-lm", WikiLMTrial,
    {"val_ppl": "min", "test_ppl": "min", "val_loss": "min", "test_loss": "min", "final_train_loss": "min"},
    "SmolLM2-135M on Wikipedia chunks, perplexity",
)
