"""Frozen specs of the real-model tasks: the data section of each kind, training, and the trial.

Constructing a spec does no I/O: whether a model or dataset is there is checked by the kind's
``validate`` (:func:`loradyn.tasks.runner.validate`) before any training.

A trial is ``{task, lora, optim, train, seed}`` (the sweep engine's shape). ``seed`` drives the
adapter init and the classification head; ``task.split_seed`` fixes the train/validation/test
split; the batch order comes from ``train.data_order_seed`` (``None``: from ``seed``).

Adapters that share everything except ``optim.lr_a``, ``optim.lr_ratio``, the init fields of
``lora`` and (with a fixed ``train.data_order_seed``) ``seed`` see identical batches, so they can
be trained as one multi-adapter pack (:mod:`loradyn.packs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..alarm import AlarmSpec
from ..errors import SpecError
from ..serialize import late_field
from ..specs import LoraSpec, OptimSpec

__all__ = [
    "GsmSpec",
    "GsmTrial",
    "SentimentSpec",
    "SentimentTrial",
    "TrainSpec",
    "Trec6Spec",
    "Trec6Trial",
    "WikiLMSpec",
    "WikiLMTrial",
    "check_device_syntax",
]

DEVICES = "auto | cpu | cuda | cuda:N | mps"
PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_syntax(value: Any, where: str = "train.device") -> str:
    """``value`` if it is one of :data:`DEVICES` (syntax only: no hardware is touched), else one line."""
    if not isinstance(value, str) or not _DEVICE_SYNTAX.fullmatch(value):
        raise SpecError(f"{where} must be one of {DEVICES}, got {value!r}")
    return value


def _positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if value is None or isinstance(value, bool) or value < 1:
            raise SpecError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


def _non_negative(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if value is None or isinstance(value, bool) or value < 0:
            raise SpecError(f"{owner}.{name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class TrainSpec:
    """How a trial trains (shared by every real-model task).

    Attributes:
        steps: optimizer steps.
        batch_size: examples per forward (per adapter): the micro-batch. An optimizer step sees
            ``batch_size × grad_accum`` examples.
        eval_batch_size: examples per evaluation forward (per adapter).
        eval_every: also evaluate on the validation split every this many steps (0: only at the end).
        device: ``auto`` (CUDA when there is one — the worker's visible device —, else MPS, else
            the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. Whether it exists (and can run
            ``precision``) is checked by the kind's ``validate``, before any training.
        precision: ``fp32``; ``bf16`` (forward and backward under ``torch.autocast`` in bfloat16;
            on the CPU the frozen Linear weights are also stored in bf16, :mod:`loradyn.tasks.precision`);
            ``fp16`` (autocast in float16 with a ``torch.amp.GradScaler``: gradients are unscaled
            before clipping, and a step the scaler skips for inf/nan gradients is not a divergence).
            Trainable parameters stay float32.
        grad_accum: micro-batches per optimizer step; each micro-batch loss is divided by
            ``grad_accum`` (the step's loss is the mean over micro-batches, like transformers'
            ``gradient_accumulation_steps``).
        bf16: the older spelling of ``precision: bf16`` (``true`` sets it; with ``precision: fp16``
            it is a contradiction and rejected). Kept equal to ``precision == "bf16"``.
        schedule: ``constant`` or ``linear`` decay to 0 after ``warmup_steps`` linear warm-up.
        warmup_steps: linear warm-up steps.
        max_grad_norm: clip each adapter's gradient norm to this (``None``: no clipping).
        probe_every: record Z_A / Z_B norms with ``FeatureNormProbe`` every this many steps (0: off).
        pack: ``auto`` (the measured faster of pack and solo), ``pack`` or ``solo``.
        max_pack: the largest number of adapters trained together on one base model.
        data_order_seed: seed of the batch order; ``None`` uses the trial seed (then adapters
            with different seeds are not packed together).
        threads: torch threads of the process running the trial.
        alarm: the instability alarm (:class:`loradyn.alarm.AlarmSpec`; on by default): a trial
            whose loss, Z_B or update size runs away is stopped there and reported ``diverged``
            with the step, layer, feature and likely fix (``alarm: {enabled: false}`` turns it off).
    """

    steps: int = 200
    batch_size: int = 16
    eval_batch_size: int = 64
    eval_every: int = 0
    bf16: bool = False
    schedule: Literal["constant", "linear"] = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    probe_every: int = 0
    pack: Literal["auto", "pack", "solo"] = "auto"
    max_pack: int = 8
    data_order_seed: int | None = None
    threads: int = 1
    device: str = late_field("auto")
    precision: Literal["fp32", "bf16", "fp16"] = late_field("fp32")
    grad_accum: int = late_field(1)
    alarm: AlarmSpec = late_field(AlarmSpec())

    def __post_init__(self) -> None:
        _positive("train", steps=self.steps, batch_size=self.batch_size,
                  eval_batch_size=self.eval_batch_size, max_pack=self.max_pack, threads=self.threads,
                  grad_accum=self.grad_accum)
        _non_negative("train", eval_every=self.eval_every, warmup_steps=self.warmup_steps,
                      probe_every=self.probe_every)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise SpecError(f"train.max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}")
        check_device_syntax(self.device)
        if self.precision not in PRECISIONS:
            raise SpecError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.bf16 and self.precision == "fp16":
            raise SpecError("train.bf16=true contradicts train.precision=fp16: drop train.bf16 "
                            "(train.precision alone says it)")
        if self.bf16:  # the older spelling: one canonical form, so both give the same trial
            object.__setattr__(self, "precision", "bf16")
        object.__setattr__(self, "bf16", self.precision == "bf16")


@dataclass(frozen=True)
class _ClassifySpec:
    model: str = "minilm"
    max_length: int = 64
    n_train: int = 0
    n_val: int = 1000
    n_test: int = 1000
    split_seed: int = 0

    def __post_init__(self) -> None:
        _positive("task", max_length=self.max_length, n_val=self.n_val, n_test=self.n_test)
        _non_negative("task", n_train=self.n_train)


@dataclass(frozen=True)
class SentimentSpec(_ClassifySpec):
    """Rotten Tomatoes sentence polarity (SST-2-like) on all-MiniLM-L6-v2.

    Attributes:
        kind: ``sentiment``.
        model: ``minilm`` (the wheel), ``tiny-bert`` (random, for tests) or a model folder.
        max_length: truncation length in tokens (padding is dynamic, to the longest in a batch).
        n_train: train examples used (0: the whole train split).
        n_val, n_test: validation / test examples (the split is fixed by ``split_seed``).
        min_abs_score: drop sentences whose mean human rating has ``|score| <`` this.
    """

    kind: Literal["sentiment"] = "sentiment"
    min_abs_score: float = 0.5


@dataclass(frozen=True)
class Trec6Spec(_ClassifySpec):
    """TREC question classification, 6 coarse classes, deduplicated."""

    kind: Literal["trec6"] = "trec6"
    n_val: int = 500
    n_test: int = 500


@dataclass(frozen=True)
class WikiLMSpec:
    """Causal LM on gensim's English Wikipedia articles, split by article, chunked.

    Attributes:
        kind: ``wiki-lm``.
        model: ``smollm2`` (the wheel, converted and cached), ``tiny-llama`` or a model folder.
        seq_len: tokens per chunk.
        val_articles, test_articles: articles held out for validation / test.
        max_articles: use only this many articles of the seeded article order (0: all 105).
        n_train: train chunks used (0: all).
        n_val, n_test: chunks evaluated.
        split_seed: seed of the article split and chunk order.
    """

    kind: Literal["wiki-lm"] = "wiki-lm"
    model: str = "smollm2"
    seq_len: int = 128
    val_articles: int = 10
    test_articles: int = 10
    max_articles: int = 0
    n_train: int = 0
    n_val: int = 64
    n_test: int = 64
    split_seed: int = 0

    def __post_init__(self) -> None:
        _positive("task", seq_len=self.seq_len, val_articles=self.val_articles,
                  test_articles=self.test_articles, n_val=self.n_val, n_test=self.n_test)
        _non_negative("task", n_train=self.n_train, max_articles=self.max_articles)


@dataclass(frozen=True)
class GsmSpec:
    """Grade-school maths from reasoning-gym: loss on answer tokens, exact match by its grader.

    Attributes:
        kind: ``gsm``.
        model: ``smollm2``, ``tiny-llama`` or a model folder.
        dataset: ``gsm_symbolic`` (GSM8K templates, chain-of-thought ending ``#### n``),
            ``chain_sum`` or ``basic_arithmetic`` (short answers; the quick variants).
        n_train, n_val, n_test: problems per split (distinct questions).
        max_length: truncation length of prompt + answer.
        max_new_tokens: greedy generation budget at evaluation (0: 8 for the short datasets,
            160 for gsm_symbolic).
        split_seed: the reasoning-gym seed.
    """

    kind: Literal["gsm"] = "gsm"
    model: str = "smollm2"
    dataset: Literal["gsm_symbolic", "chain_sum", "basic_arithmetic"] = "gsm_symbolic"
    n_train: int = 2000
    n_val: int = 64
    n_test: int = 64
    max_length: int = 320
    max_new_tokens: int = 0
    split_seed: int = 0

    def __post_init__(self) -> None:
        _positive("task", n_train=self.n_train, n_val=self.n_val, n_test=self.n_test,
                  max_length=self.max_length)
        _non_negative("task", max_new_tokens=self.max_new_tokens)


# every Linear of the encoder (attention q/k/v/output and both FFN layers): with only query/value
# the [CLS] pooler of this sentence-embedding model barely moves in a short run
_BERT_LORA = LoraSpec(rank=8, alpha=16.0, target_modules=("query", "key", "value", "dense"))
_LLAMA_LORA = LoraSpec(rank=8, alpha=16.0, target_modules=("q_proj", "v_proj"))


@dataclass(frozen=True)
class SentimentTrial:
    task: SentimentSpec = field(default_factory=SentimentSpec)
    lora: LoraSpec = _BERT_LORA
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(name="adamw", lr_a=5e-4))
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0


@dataclass(frozen=True)
class Trec6Trial:
    task: Trec6Spec = field(default_factory=Trec6Spec)
    lora: LoraSpec = _BERT_LORA
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(name="adamw", lr_a=5e-4))
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0


@dataclass(frozen=True)
class WikiLMTrial:
    task: WikiLMSpec = field(default_factory=WikiLMSpec)
    lora: LoraSpec = _LLAMA_LORA
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(name="adamw", lr_a=5e-4))
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=60, batch_size=8))
    seed: int = 0


@dataclass(frozen=True)
class GsmTrial:
    task: GsmSpec = field(default_factory=GsmSpec)
    lora: LoraSpec = _LLAMA_LORA
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(name="adamw", lr_a=1e-3))
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=100, batch_size=8))
    seed: int = 0
