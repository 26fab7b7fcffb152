"""Data pipelines of the real-model kinds: encoded splits, batches, per-adapter losses, evaluation.

A recipe is built once per pack from the task section (data and tokenizer are shared by every
adapter of the pack); where its examples come from (a preset or the user's files) is
:mod:`loradyn.tasks.presets`' business, so presets and user data take the same code path. Batches
are padded dynamically, to the longest sequence in the batch. Losses and metrics are computed per
slice of a K-fold repeated batch (see :mod:`loradyn.packs`), so the same code serves solo runs
(K = 1) and packs. This module holds the shared base and classification; the causal-LM and
supervised-finetuning recipes are in :mod:`loradyn.tasks.lm`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import LoradynError
from .models import load_model, load_tokenizer, reset_head_
from .presets import classify_data

__all__ = ["ClassifyRecipe", "Recipe"]

IGNORE = -100


def _pad(seqs: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + list(s)) if left else (list(s) + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def _mask(seqs: Sequence[Sequence[int]], *, left: bool = False) -> torch.Tensor:
    return _pad([[1] * len(s) for s in seqs], 0, left=left)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` on ``device`` (the same dict on the CPU)."""
    return batch if device.type == "cpu" else {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _eos_id(tok) -> int:
    for attr in ("eos_token_id", "sep_token_id", "pad_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    raise LoradynError("the tokenizer has no eos, sep or pad token")


class Recipe:
    task_type = "SEQ_CLS"
    model_kind = "classify"
    num_labels: int | None = None
    #: where batches go (the training loop sets the trial's ``train.device``)
    device: torch.device = torch.device("cpu")

    def __init__(self, task: Any) -> None:
        self.task = task
        self.tok = load_tokenizer(task.model)
        self.pad_id = int(self.tok.pad_token_id)
        self.train_rows: list[Any] = []

    # --- model ---------------------------------------------------------------------------------
    def base_model(self, dtype: torch.dtype = torch.float32):
        return load_model(self.task.model, kind=self.model_kind, num_labels=self.num_labels, dtype=dtype)

    def reset_head(self, model, adapter: str, seed: int) -> None:
        """Draw the trainable head of ``adapter`` from ``seed`` (classification only)."""

    # --- batches -------------------------------------------------------------------------------
    def check_batch_size(self, batch_size: int) -> None:
        if len(self.train_rows) < batch_size:
            raise LoradynError(
                f"dataset too small: {len(self.train_rows)} training examples < train.batch_size={batch_size}"
            )

    def train_batches(self, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches in epochs, each epoch a fresh ``random.Random(seed)`` permutation."""
        self.check_batch_size(batch_size)
        rng = random.Random(seed)
        n = len(self.train_rows)
        while True:
            order = list(range(n))
            rng.shuffle(order)
            for start in range(0, n - batch_size + 1, batch_size):
                yield self.batch([self.train_rows[i] for i in order[start : start + batch_size]])

    def collate(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        """``collate(rows)`` on :attr:`device` (built on the CPU, moved once)."""
        return to_device(self.collate(rows), self.device)

    def slice_losses(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], k: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def train_losses(self, model, pack, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The training loss of each adapter slice of ``batch`` (``pack.k`` slices)."""
        logits = model(**pack.repeat(self.inputs(batch))).logits
        return self.slice_losses(logits, batch, pack.k)

    def evaluate(self, model, pack, split: str, batch_size: int, *, final: bool) -> list[dict[str, float]]:
        raise NotImplementedError

    @staticmethod
    def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def describe(self) -> str:
        """What ``loradyn validate`` shows: the data source and split sizes."""
        sizes = {"train": len(self.train_rows), **{k: len(v) for k, v in self.splits.items()}}
        return f"{self.source}; {', '.join(f'{k} {v}' for k, v in sizes.items())}"


class ClassifyRecipe(Recipe):
    """Sequence classification (``hf-classify``; presets ``sentiment`` and ``trec6``): a text or a
    text pair -> a label; accuracy and cross-entropy (and the majority-class accuracy, for chance)."""

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        examples = classify_data(task)
        self.label_names = examples.label_names
        self.num_labels = len(examples.label_names)
        self.source = f"{examples.source}; labels {', '.join(examples.label_names)}"
        self.train_rows = self._encode(examples.train)
        self.splits = {"val": self._encode(examples.val), "test": self._encode(examples.test)}

    def _encode(self, rows: list[tuple[str, str | None, int]]) -> list[tuple]:
        """``(ids, label)`` rows, or ``(ids, label, token_type_ids)`` for text pairs."""
        texts = [t for t, _, _ in rows]
        labels = [label for _, _, label in rows]
        if any(pair is not None for _, pair, _ in rows):
            enc = self.tok(texts, [pair or "" for _, pair, _ in rows], truncation=True,
                           max_length=self.task.max_length)
            types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
            return list(zip(enc["input_ids"], labels, types))
        ids = self.tok(texts, truncation=True, max_length=self.task.max_length)["input_ids"]
        return list(zip(ids, labels))

    def reset_head(self, model, adapter: str, seed: int) -> None:
        for module in model.modules():
            if type(module).__name__ == "ModulesToSaveWrapper" and adapter in module.modules_to_save:
                reset_head_(module.modules_to_save[adapter], seed)

    def collate(self, rows):
        seqs = [r[0] for r in rows]
        batch = {
            "input_ids": _pad(seqs, self.pad_id),
            "attention_mask": _mask(seqs),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.long),
        }
        if len(rows[0]) > 2:
            batch["token_type_ids"] = _pad([r[2] for r in rows], 0)
        return batch

    def slice_losses(self, logits, batch, k):
        return [F.cross_entropy(lg.float(), batch["labels"]) for lg in logits.chunk(k, dim=0)]

    @torch.no_grad()
    def evaluate(self, model, pack, split, batch_size, *, final):
        # longest-first by token count: batches pad to their longest row, so sorting removes most
        # padding (on sentence data ~2x fewer tokens); the metrics are sums over rows, order-free
        rows = sorted(self.splits[split], key=lambda r: -len(r[0]))
        correct = [0] * pack.k
        nll = [0.0] * pack.k
        for start in range(0, len(rows), batch_size):
            batch = self.batch(rows[start : start + batch_size])
            logits = model(**pack.repeat(self.inputs(batch))).logits
            for i, lg in enumerate(logits.float().chunk(pack.k, dim=0)):
                correct[i] += int((lg.argmax(-1) == batch["labels"]).sum())
                nll[i] += float(F.cross_entropy(lg, batch["labels"], reduction="sum"))
        n = len(rows)
        counts = torch.bincount(torch.tensor([r[1] for r in rows]), minlength=self.num_labels)
        chance = float(counts.max()) / n  # the majority class's share: accuracy of a constant guess
        return [{f"{split}_accuracy": c / n, f"{split}_loss": s / n, f"{split}_chance_accuracy": chance}
                for c, s in zip(correct, nll)]
