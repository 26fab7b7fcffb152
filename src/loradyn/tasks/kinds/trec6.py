"""``trec6``: all-MiniLM-L6-v2 on TREC question types, 6 classes (shipped inside wheels)."""

from ..spec import Trec6Trial
from ._real import real_kind

KIND = real_kind(
    "trec6", Trec6Trial,
    {"val_accuracy": "max", "test_accuracy": "max", "val_loss": "min", "test_loss": "min",
     "final_train_loss": "min"},
    "all-MiniLM-L6-v2 on TREC question classification (6 classes), accuracy",
)
