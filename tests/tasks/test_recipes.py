"""The shared recipe base and classification (loradyn.tasks.recipes): encoding, batches, evaluation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from real_tasks import require_task_wheels, tiny_sentiment

require_task_wheels()
pytest.importorskip("datasets")

from loradyn.tasks.recipes import ClassifyRecipe, to_device  # noqa: E402
from loradyn.tasks.runner import recipe_for  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_train_batches_are_seeded_epochs_of_full_batches():
    recipe = recipe_for(tiny_sentiment().task)
    first = [b["labels"].tolist() for b, _ in zip(recipe.train_batches(8, seed=3), range(8))]
    again = [b["labels"].tolist() for b, _ in zip(recipe.train_batches(8, seed=3), range(8))]
    other = [b["labels"].tolist() for b, _ in zip(recipe.train_batches(8, seed=4), range(8))]
    assert first == again and first != other and all(len(b) == 8 for b in first)
    # an epoch (32 rows, batch 8) visits every training row once
    epoch = [row for b, _ in zip(recipe.train_batches(8, seed=3), range(4)) for row in b["input_ids"].tolist()]
    assert len(epoch) == 32


def test_text_pairs_get_token_types_and_the_majority_class_is_reported(tmp_path):
    rows = [{"premise": f"a cat sits {i}", "hypothesis": f"an animal {i}", "label": "yes" if i % 4 else "no"}
            for i in range(40)]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.hf_spec import HFClassifySpec

    task = spec_from_dict(HFClassifySpec, {"model": "tiny-bert", "data": str(tmp_path / "pairs.csv"),
                                           "columns": {"text": "premise", "text_pair": "hypothesis"},
                                           "n_val": 8, "n_test": 8})
    recipe = ClassifyRecipe(task)
    assert recipe.label_names == ("no", "yes") and recipe.num_labels == 2
    batch = next(recipe.train_batches(4, 0))
    assert "token_type_ids" in batch and batch["token_type_ids"].max() == 1  # the second segment
    assert set(recipe.inputs(batch)) == {"input_ids", "attention_mask", "token_type_ids"}
    assert "train 24, val 8, test 8" in recipe.describe()


def test_to_device_keeps_cpu_batches_as_they_are():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    assert to_device(batch, torch.device("cpu")) is batch
