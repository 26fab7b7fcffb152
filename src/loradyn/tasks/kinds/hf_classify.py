"""``hf-classify``: sequence classification with any Hugging Face model on the user's data."""

from ..hf_spec import HFClassifyTrial
from ._real import real_kind

KIND = real_kind(
    "hf-classify", HFClassifyTrial,
    {"val_accuracy": "max", "test_accuracy": "max", "val_loss": "min", "test_loss": "min",
     "final_train_loss": "min"},
    "text (or text pair) -> label with any Hugging Face model and your CSV/JSONL/Parquet/datasets data",
)
