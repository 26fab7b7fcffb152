"""Per-kind data pipelines: encoded splits, batches, per-adapter losses and evaluation.

A recipe is built once per pack from the task section (data and tokenizer are shared by every
adapter of the pack). Batches are padded dynamically, to the longest sequence in the batch.
Losses and metrics are computed per slice of a K-fold repeated batch (see :mod:`loradyn.packs`),
so the same code serves solo runs (K = 1) and packs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import LoradynError
from ..fused_ce import linear_cross_entropy
from . import data
from .models import load_model, load_tokenizer, reset_head_

__all__ = ["ClassifyRecipe", "GsmRecipe", "WikiLMRecipe", "make_recipe"]

IGNORE = -100


def _pad(seqs: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + list(s)) if left else (list(s) + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def _mask(seqs: Sequence[Sequence[int]], *, left: bool = False) -> torch.Tensor:
    return _pad([[1] * len(s) for s in seqs], 0, left=left)


def _eos_id(tok) -> int:
    for attr in ("eos_token_id", "sep_token_id", "pad_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    raise LoradynError("the tokenizer has no eos, sep or pad token")


class _Recipe:
    task_type = "SEQ_CLS"
    model_kind = "classify"
    num_labels: int | None = None

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
                yield self.collate([self.train_rows[i] for i in order[start : start + batch_size]])

    def collate(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

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
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


class ClassifyRecipe(_Recipe):
    """``sentiment`` (2 classes) and ``trec6`` (6 classes): accuracy and cross-entropy."""

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        if task.kind == "sentiment":
            examples, self.num_labels = data.rt_snippets(task.min_abs_score), 2
        else:
            examples, self.num_labels = data.trec6(), len(data.TREC6_LABELS)
        train, val, test = data.split_examples(
            examples, n_val=task.n_val, n_test=task.n_test, seed=task.split_seed, n_train=task.n_train
        )
        self.train_rows, self.splits = self._encode(train), {"val": self._encode(val), "test": self._encode(test)}

    def _encode(self, rows: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
        ids = self.tok([t for t, _ in rows], truncation=True, max_length=self.task.max_length)["input_ids"]
        return list(zip(ids, [label for _, label in rows]))

    def reset_head(self, model, adapter: str, seed: int) -> None:
        for module in model.modules():
            if type(module).__name__ == "ModulesToSaveWrapper" and adapter in module.modules_to_save:
                reset_head_(module.modules_to_save[adapter], seed)

    def collate(self, rows):
        seqs = [r[0] for r in rows]
        return {
            "input_ids": _pad(seqs, self.pad_id),
            "attention_mask": _mask(seqs),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.long),
        }

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
            batch = self.collate(rows[start : start + batch_size])
            logits = model(**pack.repeat(self.inputs(batch))).logits
            for i, lg in enumerate(logits.float().chunk(pack.k, dim=0)):
                correct[i] += int((lg.argmax(-1) == batch["labels"]).sum())
                nll[i] += float(F.cross_entropy(lg, batch["labels"], reduction="sum"))
        n = len(rows)
        counts = torch.bincount(torch.tensor([r[1] for r in rows]), minlength=self.num_labels)
        chance = float(counts.max()) / n  # the majority class's share: accuracy of a constant guess
        return [{f"{split}_accuracy": c / n, f"{split}_loss": s / n, f"{split}_chance_accuracy": chance}
                for c, s in zip(correct, nll)]


# model types whose causal-LM forward is ``lm_head(decoder(...).last_hidden_state)``, nothing else
_PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def _decoder_and_head(model):
    """``(decoder, lm_head weight)`` when the loss may skip the logits, else ``None``.

    The fused path needs a plain bias-free ``nn.Linear`` head (not a LoRA or ``modules_to_save``
    wrapper) on a model whose forward adds nothing between the decoder and the head.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in _PLAIN_HEAD_TYPES:
        return None
    head = base.get_output_embeddings()
    decoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None:
        return None
    return decoder, head.weight


def _causal_losses(model, pack, inputs, labels) -> tuple[list[torch.Tensor], int]:
    """Mean next-token cross-entropy per adapter slice over the positions whose label counts.

    On plain-head models the loss runs on the decoder's hidden states at those positions only,
    through :func:`loradyn.fused_ce.linear_cross_entropy` (no (tokens × vocab) logits); otherwise
    on the model's logits. Both give the same loss up to float summation order.
    """
    target = labels[:, 1:]
    keep = target != IGNORE
    parts = _decoder_and_head(model)
    if parts is None:
        logits = model(**pack.repeat(inputs)).logits
        out = []
        for lg in logits.chunk(pack.k, dim=0):
            lg = lg[:, :-1]
            lg = lg.float() if lg.dtype in (torch.bfloat16, torch.float16) else lg
            out.append(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1), ignore_index=IGNORE))
        return out, int(keep.sum())
    decoder, weight = parts
    hidden = decoder(**pack.repeat(inputs), use_cache=False).last_hidden_state
    out = [linear_cross_entropy(h[:, :-1][keep], weight, target[keep]) for h in hidden.chunk(pack.k, dim=0)]
    return out, int(keep.sum())


def _mean_causal_nll(recipe, model, pack, rows, batch_size: int) -> list[float]:
    """Token-weighted mean next-token NLL of ``rows`` per adapter slice (no grad)."""
    # longest first: batches pad to their longest row, and the sums do not depend on the order
    rows = sorted(rows, key=lambda r: -len(r[0] if isinstance(r, tuple) else r))
    nll, tokens = [0.0] * pack.k, 0
    for start in range(0, len(rows), batch_size):
        batch = recipe.collate(rows[start : start + batch_size])
        losses, count = _causal_losses(model, pack, recipe.inputs(batch), batch["labels"])
        tokens += count
        for i, loss in enumerate(losses):
            nll[i] += float(loss) * count
    return [s / tokens for s in nll]


class WikiLMRecipe(_Recipe):
    """``wiki-lm``: next-token loss on Wikipedia chunks; perplexity = exp(mean token NLL)."""

    task_type = "CAUSAL_LM"
    model_kind = "causal"

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        articles = list(data.wiki_articles())
        need = task.val_articles + task.test_articles + 1
        if len(articles[: task.max_articles or None]) < need:
            raise LoradynError(
                f"dataset too small for the split: {len(articles[: task.max_articles or None])} articles < val_articles + test_articles + 1 = {need}"
            )
        order = list(range(len(articles)))
        random.Random(task.split_seed).shuffle(order)
        if task.max_articles:
            order = order[: task.max_articles]
        test_idx = order[: task.test_articles]
        val_idx = order[task.test_articles : task.test_articles + task.val_articles]
        train_idx = order[task.test_articles + task.val_articles :]
        self.eos = _eos_id(self.tok)
        chunks = {name: self._chunks([articles[i][1] for i in idx], task.split_seed)
                  for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
        self.train_rows = chunks["train"][: task.n_train] if task.n_train else chunks["train"]
        self.splits = {}
        for name, n in (("val", task.n_val), ("test", task.n_test)):
            if len(chunks[name]) < n:
                raise LoradynError(
                    f"dataset too small: the {name} articles give {len(chunks[name])} chunks of "
                    f"{task.seq_len} tokens < task.n_{name}={n}"
                )
            self.splits[name] = chunks[name][:n]

    def _chunks(self, texts: list[str], seed: int) -> list[list[int]]:
        stream: list[int] = []
        for ids in self.tok(texts, add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
            stream.append(self.eos)
        n = self.task.seq_len
        chunks = [stream[i : i + n] for i in range(0, len(stream) - n + 1, n)]
        random.Random(seed).shuffle(chunks)
        return chunks

    def collate(self, rows):
        ids = torch.tensor(rows, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def train_losses(self, model, pack, batch):
        return _causal_losses(model, pack, self.inputs(batch), batch["labels"])[0]

    @torch.no_grad()
    def evaluate(self, model, pack, split, batch_size, *, final):
        means = _mean_causal_nll(self, model, pack, self.splits[split], batch_size)
        return [{f"{split}_loss": m, f"{split}_ppl": math.exp(m) if m < 700 else math.inf} for m in means]


class GsmRecipe(_Recipe):
    """``gsm``: loss on the answer tokens only; exact match of greedy answers by reasoning-gym's grader."""

    task_type = "CAUSAL_LM"
    model_kind = "causal"

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        total = task.n_train + task.n_val + task.n_test
        problems, self.dataset = data.gsm_problems(task.dataset, total, task.split_seed)
        test, val, train = problems[: task.n_test], problems[task.n_test : task.n_test + task.n_val], problems[task.n_test + task.n_val :]
        self.eos = _eos_id(self.tok)
        self.chat = bool(getattr(self.tok, "chat_template", None))
        self.train_rows = [self._encode(p) for p in train]
        self.problems = {"val": val, "test": test}
        self.splits = {name: [self._encode(p) for p in ps] for name, ps in self.problems.items()}
        self.max_new_tokens = task.max_new_tokens or (160 if task.dataset == "gsm_symbolic" else 8)

    def prompt_ids(self, question: str) -> list[int]:
        if self.chat:
            text = self.tok.apply_chat_template([{"role": "user", "content": question}],
                                                add_generation_prompt=True, tokenize=False)
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]

    def _encode(self, problem: data.GsmProblem) -> tuple[list[int], list[int]]:
        prompt = self.prompt_ids(problem.question)
        answer = self.tok(("" if self.chat else " ") + problem.target, add_special_tokens=False)["input_ids"] + [self.eos]
        ids = (prompt + answer)[: self.task.max_length]
        labels = ([IGNORE] * len(prompt) + answer)[: self.task.max_length]
        return ids, labels

    def collate(self, rows):
        return {
            "input_ids": _pad([r[0] for r in rows], self.pad_id),
            "attention_mask": _mask([r[0] for r in rows]),
            "labels": _pad([r[1] for r in rows], IGNORE),
        }

    def train_losses(self, model, pack, batch):
        return _causal_losses(model, pack, self.inputs(batch), batch["labels"])[0]

    @torch.no_grad()
    def evaluate(self, model, pack, split, batch_size, *, final):
        out = [{f"{split}_loss": m} for m in _mean_causal_nll(self, model, pack, self.splits[split], batch_size)]
        if final:
            for i, em in enumerate(self.exact_match(model, pack, split, batch_size)):
                out[i][f"{split}_exact_match"] = em
        return out

    @torch.no_grad()
    def exact_match(self, model, pack, split: str, batch_size: int) -> list[float]:
        """Greedy-decode every problem of ``split`` for each adapter; the fraction graded 1.0."""
        # longest prompt first: left padding to the longest prompt of a batch costs less
        problems = sorted(self.problems[split], key=lambda p: -len(self.prompt_ids(p.question)))
        hits = [0] * pack.k
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            prompts = [self.prompt_ids(p.question) for p in chunk]
            inputs = {"input_ids": _pad(prompts, self.pad_id, left=True), "attention_mask": _mask(prompts, left=True)}
            out = model.generate(
                **pack.repeat(inputs), max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=self.pad_id, eos_token_id=self.eos,
            )
            new = out[:, inputs["input_ids"].shape[1] :]
            for i, rows in enumerate(new.chunk(pack.k, dim=0)):
                for problem, row in zip(chunk, rows):
                    text = self.tok.decode(row, skip_special_tokens=True)
                    answer = data.extract_answer(text, self.task.dataset)
                    hits[i] += int(answer != "" and self.dataset.score_answer(answer, problem.entry) == 1.0)
        return [h / len(problems) for h in hits]


def make_recipe(task: Any) -> _Recipe:
    """The recipe of a task section (``SentimentSpec``, ``Trec6Spec``, ``WikiLMSpec``, ``GsmSpec``)."""
    if task.kind in ("sentiment", "trec6"):
        return ClassifyRecipe(task)
    if task.kind == "wiki-lm":
        return WikiLMRecipe(task)
    if task.kind == "gsm":
        return GsmRecipe(task)
    raise LoradynError(f"unknown task kind {task.kind!r}; valid: sentiment, trec6, wiki-lm, gsm")
