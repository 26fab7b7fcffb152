"""``gsm``: SmolLM2-135M on reasoning-gym's grade-school maths, loss on answer tokens only."""

from ..spec import GsmTrial
from ._real import real_kind

KIND = real_kind(
    "gsm", GsmTrial,
    {"val_exact_match": "max", "test_exact_match": "max", "val_loss": "min", "test_loss": "min",
     "final_train_loss": "min"},
    "SmolLM2-135M on reasoning-gym maths problems, exact match of greedy answers",
)
