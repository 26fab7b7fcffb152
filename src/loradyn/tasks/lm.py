"""Causal-LM recipes: language modelling on raw text (``hf-causal-lm``; preset ``wiki-lm``) and
supervised finetuning with the loss on completion tokens only (``hf-sft``; preset ``gsm``).

Losses skip the (tokens × vocab) logits on plain-head models: the decoder's hidden states at the
labelled positions go through :func:`loradyn.fused_ce.linear_cross_entropy` (the same loss up to
float summation order).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import LoradynError
from ..fused_ce import linear_cross_entropy
from .presets import Pair, pair_data, text_data
from .recipes import IGNORE, Recipe, _eos_id, _mask, _pad, to_device

__all__ = ["CausalLMRecipe", "SFTRecipe"]


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
        batch = recipe.batch(rows[start : start + batch_size])
        losses, count = _causal_losses(model, pack, recipe.inputs(batch), batch["labels"])
        tokens += count
        for i, loss in enumerate(losses):
            nll[i] += float(loss) * count
    return [s / tokens for s in nll]


class CausalLMRecipe(Recipe):
    """Next-token loss on chunks of ``max_length`` tokens cut from each split's documents (joined
    with the tokenizer's eos); perplexity = exp(mean token NLL)."""

    task_type = "CAUSAL_LM"
    model_kind = "causal"

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        docs = text_data(task)
        self.seq_len = getattr(task, "seq_len", None) or task.max_length
        self.eos = _eos_id(self.tok)
        chunks = {name: self._chunks(texts, task.split_seed)
                  for name, texts in (("train", docs.train), ("val", docs.val), ("test", docs.test))}
        caps = {"val": task.n_val, "test": task.n_test} if task.kind == "wiki-lm" else {}
        self.train_rows = chunks["train"][: task.n_train] if task.n_train and task.kind == "wiki-lm" else chunks["train"]
        self.splits = {}
        for name in ("val", "test"):
            n = caps.get(name, len(chunks[name]))
            if len(chunks[name]) < max(n, 1):
                raise LoradynError(
                    f"dataset too small: the {name} documents give {len(chunks[name])} chunks of "
                    f"{self.seq_len} tokens < {max(n, 1)}: lower the chunk length or give more text"
                )
            self.splits[name] = chunks[name][:n]
        if not self.train_rows:
            raise LoradynError(f"dataset too small: the train documents give no chunk of {self.seq_len} tokens")
        self.source = f"{docs.source}; chunks of {self.seq_len} tokens"

    def _chunks(self, texts: list[str], seed: int) -> list[list[int]]:
        stream: list[int] = []
        for ids in self.tok(texts, add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
            stream.append(self.eos)
        n = self.seq_len
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
        return [{f"{split}_loss": m, f"{split}_ppl": _ppl(m)} for m in means]


def _ppl(mean_nll: float) -> float:
    return math.exp(mean_nll) if mean_nll < 700 else math.inf


class SFTRecipe(Recipe):
    """Prompt -> completion with the loss on completion tokens only. A tokenizer with a chat template
    renders the prompt as a user message (or the conversation before the answer) with the generation
    prompt; otherwise the preset's plain format applies. With a grader, the final evaluation also
    greedy-decodes every prompt and reports the mean grade (``exact_match`` or ``score``)."""

    task_type = "CAUSAL_LM"
    model_kind = "causal"

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        self.data = pair_data(task)
        self.eos = _eos_id(self.tok)
        self.chat = bool(getattr(self.tok, "chat_template", None))
        encoded = {name: [(p, self._encode(p)) for p in pairs]
                   for name, pairs in (("train", self.data.train), ("val", self.data.val), ("test", self.data.test))}
        self.dropped = {}
        for name, rows in encoded.items():
            kept = [(p, e) for p, e in rows if any(label != IGNORE for label in e[1])]
            self.dropped[name] = len(rows) - len(kept)
            if rows and not kept:
                raise LoradynError(
                    f"every {name} example loses its whole completion to truncation at task.max_length="
                    f"{task.max_length}: raise task.max_length or shorten the prompts"
                )
            encoded[name] = kept
        self.train_rows = [e for _, e in encoded["train"]]
        self.pairs = {name: [p for p, _ in encoded[name]] for name in ("val", "test")}
        self.splits = {name: [e for _, e in encoded[name]] for name in ("val", "test")}
        self.max_new_tokens = self.data.max_new_tokens
        lost = {k: v for k, v in self.dropped.items() if v}
        self.source = self.data.source + (
            f"; dropped (no completion token left after truncation): {lost}" if lost else "")

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        if self.chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tok(text, add_special_tokens=False)["input_ids"]
        if not isinstance(prompt, str):
            raise LoradynError("chat messages need a tokenizer with a chat template; this model's has none: "
                               "give prompt/completion columns instead")
        return self.tok(self.data.plain_prompt(prompt), add_special_tokens=False)["input_ids"]

    def _encode(self, pair: Pair) -> tuple[list[int], list[int]]:
        prompt = self.prompt_ids(pair.prompt)
        text = ("" if self.chat else self.data.completion_prefix) + pair.completion
        answer = self.tok(text, add_special_tokens=False)["input_ids"] + [self.eos]
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
        means = _mean_causal_nll(self, model, pack, self.splits[split], batch_size)
        out = [{f"{split}_loss": m, f"{split}_ppl": _ppl(m)} for m in means]
        if final and self.data.grade is not None:
            for i, value in enumerate(self.generation_scores(model, pack, split, batch_size)):
                out[i][f"{split}_{self.data.metric}"] = value
        return out

    @torch.no_grad()
    def generation_scores(self, model, pack, split: str, batch_size: int) -> list[float]:
        """Greedy-decode every prompt of ``split`` for each adapter; the mean grade."""
        # longest prompt first: left padding to the longest prompt of a batch costs less
        pairs = sorted(self.pairs[split], key=lambda p: -len(self.prompt_ids(p.prompt)))
        total = [0.0] * pack.k
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            prompts = [self.prompt_ids(p.prompt) for p in chunk]
            inputs = to_device({"input_ids": _pad(prompts, self.pad_id, left=True),
                                "attention_mask": _mask(prompts, left=True)}, self.device)
            out = model.generate(
                **pack.repeat(inputs), max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=self.pad_id, eos_token_id=self.eos,
            )
            new = out[:, inputs["input_ids"].shape[1] :]
            for i, rows in enumerate(new.chunk(pack.k, dim=0)):
                for pair, row in zip(chunk, rows):
                    total[i] += self.data.grade(self.tok.decode(row, skip_special_tokens=True), pair)
        return [t / len(pairs) for t in total]
