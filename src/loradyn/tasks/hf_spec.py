"""Frozen specs of the generic real-model kinds: ``hf-classify``, ``hf-causal-lm`` and ``hf-sft`` on
any Hugging Face model and the user's own data.

A section names its model and data and maps the kind's *roles* to the user's column names::

    task:
      kind: hf-classify
      model: path/to/model-folder        # or a Hub id present in the local HF cache
      data: path/to/all.csv              # one file, split by split_seed; or {train: a.csv, validation: b.csv, test: c.csv}
      columns: {text: review, label: sentiment}
      n_train: 2000

Constructing a spec does no I/O: the files, columns and model are checked by the kind's
``validate`` (:func:`loradyn.tasks.runner.validate`) before any training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import SpecError
from ..specs import LoraSpec, OptimSpec
from .spec import TrainSpec, _non_negative, _positive

__all__ = [
    "HFCausalLMSpec",
    "HFCausalLMTrial",
    "HFClassifySpec",
    "HFClassifyTrial",
    "HFSFTSpec",
    "HFSFTTrial",
]

_SPLIT_KEYS = ("train", "validation", "val", "test")


def _check_source(kind: str, model: str, data: Any, columns: Mapping[str, str], roles: tuple[str, ...]) -> None:
    """Local checks of a generic section: model and data named, known split keys and roles (no I/O)."""
    if not isinstance(model, str) or not model:
        raise SpecError(f"task.model is required ({kind}): a model folder, or a Hub id in the local Hugging Face cache")
    if isinstance(data, Mapping):
        unknown = [k for k in data if k not in _SPLIT_KEYS]
        if unknown:
            raise SpecError(f"task.data: unknown split {unknown[0]!r}; use train, validation and test")
        if "train" not in data:
            raise SpecError("task.data: a mapping of files needs a 'train' file (validation and test are optional)")
        if not all(isinstance(v, str) and v for v in data.values()):
            raise SpecError("task.data: every split must name a file or folder")
    elif not isinstance(data, str) or not data:
        raise SpecError(f"task.data is required ({kind}): a CSV/JSONL/Parquet file, a folder written by "
                        "datasets' save_to_disk, a dataset id in the local Hugging Face cache, or {{train: …, "
                        "validation: …, test: …}}")
    unknown = [r for r in columns if r not in roles]
    if unknown:
        raise SpecError(f"task.columns: unknown role {unknown[0]!r}; the roles of {kind} are {', '.join(roles)}")


@dataclass(frozen=True)
class _HFSection:
    """Fields every generic section has; see the kinds' docstrings."""

    model: str = ""
    data: str | dict[str, str] = ""
    columns: dict[str, str] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    split_seed: int = 0

    ROLES: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        _check_source(self.kind, self.model, self.data, self.columns, self.ROLES)
        _non_negative("task", n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        _positive("task", max_length=self.max_length)


@dataclass(frozen=True)
class HFClassifySpec(_HFSection):
    """``hf-classify``: sequence classification of a text or a text pair with any Hugging Face model.

    Attributes:
        model: a local model folder or a Hub id in the local Hugging Face cache (a classification
            head with one output per label is added).
        data: one file or dataset (split by ``split_seed``) or ``{train, validation, test}`` files:
            CSV, JSONL, Parquet, a ``save_to_disk`` folder or a cached Hub dataset id.
        columns: roles -> your column names: ``text`` (required), ``text_pair``, ``label``
            (required; strings or integers, mapped to classes and reported).
        max_length: truncation length in tokens.
        n_train, n_val, n_test: rows used per split (0: all of a given split; for a carved split see
            :func:`loradyn.tasks.userdata.load_splits`).
        split_seed: seed of the split and of the subsets.
    """

    kind: Literal["hf-classify"] = "hf-classify"
    max_length: int = 128
    ROLES: ClassVar[tuple[str, ...]] = ("text", "text_pair", "label")


@dataclass(frozen=True)
class HFCausalLMSpec(_HFSection):
    """``hf-causal-lm``: next-token language modelling on raw text; metric: perplexity.

    Rows are documents: the splits hold out whole rows (``n_val``, ``n_test``), then each split's
    text is joined (with the tokenizer's eos) and cut into chunks of ``max_length`` tokens.

    Attributes:
        columns: ``text`` (required).
        max_length: tokens per chunk.
    """

    kind: Literal["hf-causal-lm"] = "hf-causal-lm"
    max_length: int = 256
    ROLES: ClassVar[tuple[str, ...]] = ("text",)


@dataclass(frozen=True)
class HFSFTSpec(_HFSection):
    """``hf-sft``: supervised finetuning, the loss on completion tokens only.

    Attributes:
        columns: ``prompt`` + ``completion``, or ``messages`` (chat turns ending with the assistant
            answer learned; rendered with the tokenizer's chat template).
        max_length: truncation length of prompt + completion (a row that keeps no completion token is
            dropped and counted; all of them dropped is an error).
        exact_match: also greedy-decode the validation/test prompts and report the fraction whose
            output equals the completion (whitespace-normalised) as ``*_exact_match``.
        score: ``"package.module:function"`` called as ``function(generated_text, row)`` -> a number,
            reported (mean) as ``*_score``; replaces ``exact_match``.
        max_new_tokens: the greedy-decoding budget.
    """

    kind: Literal["hf-sft"] = "hf-sft"
    max_length: int = 512
    exact_match: bool = False
    score: str | None = None
    max_new_tokens: int = 64
    ROLES: ClassVar[tuple[str, ...]] = ("prompt", "completion", "messages")

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("task", max_new_tokens=self.max_new_tokens)
        if self.score is not None:
            from .callables import check_reference

            try:
                check_reference(self.score, "task.score")
            except Exception as err:
                raise SpecError(str(err)) from None


_ALL_LINEAR = LoraSpec(rank=8, alpha=16.0, target_modules=("all-linear",))


@dataclass(frozen=True)
class HFClassifyTrial:
    task: HFClassifySpec = field(default_factory=lambda: HFClassifySpec(model="?", data="?"))
    lora: LoraSpec = _ALL_LINEAR
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(name="adamw", lr_a=5e-4))
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0


@dataclass(frozen=True)
class HFCausalLMTrial:
    task: HFCausalLMSpec = field(default_factory=lambda: HFCausalLMSpec(model="?", data="?"))
    lora: LoraSpec = _ALL_LINEAR
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(name="adamw", lr_a=5e-4))
    train: TrainSpec = field(default_factory=lambda: TrainSpec(batch_size=8))
    seed: int = 0


@dataclass(frozen=True)
class HFSFTTrial:
    task: HFSFTSpec = field(default_factory=lambda: HFSFTSpec(model="?", data="?"))
    lora: LoraSpec = _ALL_LINEAR
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(name="adamw", lr_a=5e-4))
    train: TrainSpec = field(default_factory=lambda: TrainSpec(batch_size=8))
    seed: int = 0
