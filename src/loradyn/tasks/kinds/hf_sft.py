"""``hf-sft``: supervised finetuning on prompt/completion pairs or chat messages, loss on the completion."""

from ..hf_spec import HFSFTTrial
from ._real import real_kind

KIND = real_kind(
    "hf-sft", HFSFTTrial,
    {"val_loss": "min", "test_loss": "min", "val_ppl": "min", "test_ppl": "min", "val_exact_match": "max",
     "test_exact_match": "max", "val_score": "max", "test_score": "max", "final_train_loss": "min"},
    "prompt -> completion (or chat messages) with the loss on completion tokens; optional exact match / score",
)
