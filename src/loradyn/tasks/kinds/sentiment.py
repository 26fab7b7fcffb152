"""``sentiment``: all-MiniLM-L6-v2 on Rotten Tomatoes sentence polarity (shipped inside wheels)."""

from ..spec import SentimentTrial
from ._real import real_kind

KIND = real_kind(
    "sentiment", SentimentTrial,
    {"val_accuracy": "max", "test_accuracy": "max", "val_loss": "min", "test_loss": "min",
     "final_train_loss": "min"},
    "all-MiniLM-L6-v2 on Rotten Tomatoes sentence polarity (2 classes), accuracy",
)
