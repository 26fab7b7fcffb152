"""``hf-causal-lm``: language modelling on raw text with any Hugging Face causal LM."""

from ..hf_spec import HFCausalLMTrial
from ._real import real_kind

KIND = real_kind(
    "hf-causal-lm", HFCausalLMTrial,
    {"val_ppl": "min", "test_ppl": "min", "val_loss": "min", "test_loss": "min", "final_train_loss": "min"},
    "next-token language modelling on your text (chunked to max_length), perplexity",
)
