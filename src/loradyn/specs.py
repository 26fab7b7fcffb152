"""``LoraSpec``: the frozen description of a LoRA adapter, with YAML as its serialization.

``LoraSpec`` speaks loradyn's field names and also accepts PEFT's (``r``, ``lora_alpha``,
``lora_dropout``, ``use_rslora``) as constructor keywords, in :meth:`LoraSpec.from_dict` and in
YAML; :meth:`LoraSpec.from_peft` converts a ``peft.LoraConfig``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import LoradynError, SpecError
from .init_methods import check_init_method, is_peft_method
from .overrides import apply_overrides
from .serialize import late_field, load_yaml, save_spec, spec_from_dict, spec_to_dict

__all__ = ["PEFT_NAMES", "LoraSpec", "OptimSpec"]

#: PEFT ``LoraConfig`` name -> loradyn ``LoraSpec`` name (``target_modules`` and ``modules_to_save``
#: are spelled the same in both).
PEFT_NAMES = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "use_rslora": "rslora"}

Distribution = Literal["kaiming_uniform", "gaussian"]


def _is_number(value: object) -> bool:
    """A real number that is not a bool (YAML's ``true`` must not pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def canonical_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with PEFT's key names renamed to loradyn's; both names of one field is an error."""
    out = dict(data)
    for peft_name, ours in PEFT_NAMES.items():
        if peft_name in out:
            if ours in out:
                raise SpecError(f"LoraSpec got both {ours} and PEFT's name for it, {peft_name}: give one")
            out[ours] = out.pop(peft_name)
    return out


def _accept_peft_keywords(cls: type) -> type:
    """Let the dataclass constructor take PEFT's keyword names too (``LoraSpec(r=8, lora_alpha=16)``)."""
    generated = cls.__init__

    @functools.wraps(generated)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        generated(self, *args, **canonical_keys(kwargs))

    cls.__init__ = __init__
    return cls


@_accept_peft_keywords
@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter: ``W = W0 + scaling * lora_B @ lora_A`` with ``lora_A`` (r x in), ``lora_B`` (out x r).

    Attributes:
        rank: r >= 1.
        alpha: PEFT's ``lora_alpha``; ``scaling = alpha / rank`` (``alpha / sqrt(rank)`` with rslora).
        init: ``"A"`` = Init[A] (B = 0, A random; PEFT's default), ``"B"`` = Init[B] (A = 0, B random),
            ``"AB"`` (both random, B·A != 0), or PEFT's ``"gaussian"``, ``"pissa"``,
            ``"pissa_niter_<K>"`` (K >= 1), ``"olora"``, ``"orthogonal"`` (even rank): see
            :mod:`loradyn.init_methods`. PEFT's inits take no ``distribution``/``std_a``/``std_b``.
        distribution: ``"kaiming_uniform"`` (PEFT-like; variance 1/(3 fan_in)) or ``"gaussian"``
            (N(0, 1/fan_in)). See :func:`loradyn.init_lora_`.
        std_a, std_b: explicit standard deviations that override the distribution's default.
        rslora: use ``alpha / sqrt(rank)`` scaling.
        dropout: dropout probability on the adapter input, 0 <= p < 1.
        target_modules: module-name suffixes to adapt, or ``("all-linear",)``.
        modules_to_save: module-name suffixes of modules that are trained in full and saved with
            the adapter (PEFT's ``modules_to_save``), e.g. ``("classifier",)``. ``None`` (default)
            means the classification head (``classifier`` / ``score``) on classification models
            (``*ForSequenceClassification``, ``*ForTokenClassification``), as PEFT's
            ``task_type="SEQ_CLS"`` does, and nothing otherwise; ``()`` means nothing.

    PEFT's names are accepted as constructor keywords, in :meth:`from_dict` and in YAML (giving
    both names of one field is an error); :meth:`from_peft` converts a ``peft.LoraConfig``:

    ================================= ============================== ====================================
    loradyn ``LoraSpec``              PEFT ``LoraConfig``            note
    ================================= ============================== ====================================
    ``rank``                          ``r``
    ``alpha``                         ``lora_alpha``                 scaling = alpha / rank
    ``dropout``                       ``lora_dropout``
    ``rslora``                        ``use_rslora``                 scaling = alpha / sqrt(rank)
    ``target_modules``                ``target_modules``             names; a regex string is refused
    ``modules_to_save``               ``modules_to_save``            ``None``: head of cls. models
    ``init="A"``                      ``init_lora_weights=True``     B = 0, A kaiming-uniform
    ``distribution="gaussian"``,      ``init_lora_weights=``         A ~ N(0, (1/r)^2), B = 0
    ``std_a=1/rank``                  ``"gaussian"``
    ``init="B"``, ``std_b``           (none)                         loradyn only: ``from_peft`` keywords
    ``init="AB"``, ``"pissa"``...     (not converted)                loradyn applies them (init_methods)
    ================================= ============================== ====================================

    Every other ``LoraConfig`` option (DoRA, bias, rank/alpha patterns, layers_to_transform, ...)
    must stay at its default for ``from_peft``; ``fan_in_fan_out`` is ignored (loradyn detects
    ``Conv1D``).
    """

    rank: int = 8
    alpha: float = 8.0
    init: str = "A"
    distribution: Distribution = "kaiming_uniform"
    std_a: float | None = None
    std_b: float | None = None
    rslora: bool = False
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    modules_to_save: tuple[str, ...] | None = late_field(None)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise SpecError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not _is_number(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise SpecError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        try:
            object.__setattr__(self, "init", check_init_method(self.init))
        except LoradynError as err:
            raise SpecError(f"init: {err}") from None
        if self.distribution not in ("kaiming_uniform", "gaussian"):
            raise SpecError(
                f"distribution must be 'kaiming_uniform' or 'gaussian', got {self.distribution!r}"
            )
        for name in ("std_a", "std_b"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not math.isfinite(value) or value <= 0):
                raise SpecError(f"{name} must be a finite number > 0 (or null for the default), got {value!r}")
        if is_peft_method(self.init):
            if self.std_a is not None or self.std_b is not None or self.distribution != "kaiming_uniform":
                raise SpecError(f"init={self.init!r} is PEFT's, with its own distribution: leave distribution, "
                                "std_a and std_b at their defaults (they are for A, B, AB)")
            if self.init == "orthogonal" and self.rank % 2:
                raise SpecError(f"init='orthogonal' needs an even rank (PEFT's orthogonal init), got rank={self.rank}")
        if not isinstance(self.rslora, bool):
            raise SpecError(f"rslora must be true or false, got {self.rslora!r}")
        if not _is_number(self.dropout) or not (0.0 <= self.dropout < 1.0):
            raise SpecError(f"dropout must satisfy 0 <= dropout < 1, got {self.dropout!r}")
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        else:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise SpecError("target_modules must be a non-empty list of module names (or ['all-linear'])")
        if self.modules_to_save is not None:
            saved = (self.modules_to_save,) if isinstance(self.modules_to_save, str) else tuple(self.modules_to_save)
            if not all(isinstance(t, str) and t for t in saved):
                raise SpecError("modules_to_save must be a list of module names ([] for none, null for the default)")
            object.__setattr__(self, "modules_to_save", saved)

    @property
    def scaling(self) -> float:
        """The forward multiplier of ``B @ A``: alpha/r, or alpha/sqrt(r) with rslora."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LoraSpec:
        """Build from plain data; loradyn's or PEFT's key names (see the class docstring)."""
        if data is not None and not isinstance(data, Mapping):
            raise SpecError(f"LoraSpec: expected a mapping, got {data!r}")
        return spec_from_dict(cls, canonical_keys(data or {}))

    def to_dict(self) -> dict:
        return spec_to_dict(self)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoraSpec:
        """Load from YAML with dotted ``key=value`` overrides; loradyn's or PEFT's key names."""
        data = load_yaml(path)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(f"{str(path)!r} must hold a YAML mapping, not {type(data).__name__}")
        renamed = []
        for item in overrides:
            key, sep, value = str(item).partition("=")
            renamed.append(f"{PEFT_NAMES.get(key.strip(), key)}{sep}{value}")
        return cls.from_dict(apply_overrides(canonical_keys(data), renamed))

    @classmethod
    def from_peft(cls, config: Any, **overrides: Any) -> LoraSpec:
        """Convert a ``peft.LoraConfig``; ``overrides`` set loradyn-only fields (``init="B"``, ``std_b``...).

        Raises:
            LoradynError: an option loradyn cannot honour (DoRA, bias, per-layer patterns, a regex
                ``target_modules``, another init...), one line naming it.
        """
        return cls(**{**_kwargs_from_peft(config), **overrides})

    def to_yaml(self, path: str | Path) -> Path:
        return save_spec(self, path)


# LoraConfig fields from_peft converts, and fields that do not change the adapter's function
_CONVERTED = {"r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "modules_to_save", "init_lora_weights"}
_IRRELEVANT = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
               "inference_mode", "fan_in_fan_out", "runtime_config", "megatron_core", "qalora_group_size"}
_CLS_TASKS = ("SEQ_CLS", "TOKEN_CLS")


def _kwargs_from_peft(config: Any) -> dict[str, Any]:
    """LoraSpec keyword arguments equivalent to a ``peft.LoraConfig`` (see the LoraSpec table)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise LoradynError("LoraSpec.from_peft needs peft: pip install 'loradyn[hf]'") from None
    if not isinstance(config, LoraConfig):
        raise LoradynError(f"LoraSpec.from_peft takes a peft.LoraConfig, got {type(config).__name__}")
    default = LoraConfig()
    for field in dataclasses.fields(config):
        name = field.name
        if name in _CONVERTED or name in _IRRELEVANT:
            continue
        value, plain = getattr(config, name), getattr(default, name, None)
        if value != plain:
            raise LoradynError(
                f"LoraConfig.{name}={value!r} has no loradyn equivalent: leave it at {plain!r} or use peft.get_peft_model"
            )
    targets = config.target_modules
    if targets is None:
        raise LoradynError("LoraConfig.target_modules is None (PEFT's per-architecture default): list the modules")
    if isinstance(targets, str):
        if targets.lower() != "all-linear":
            raise LoradynError(
                f"LoraConfig.target_modules={targets!r} is a regex; loradyn matches name suffixes: give a list of names"
            )
        targets = [targets]
    kwargs: dict[str, Any] = {
        "rank": config.r, "alpha": float(config.lora_alpha), "dropout": float(config.lora_dropout),
        "rslora": bool(config.use_rslora), "target_modules": tuple(sorted(targets)),
    }
    task = getattr(config.task_type, "value", config.task_type)
    saved = config.modules_to_save
    if saved is not None:
        saved = tuple(saved)
        if task in _CLS_TASKS and not {"classifier", "score"} & set(saved):
            raise LoradynError(
                f"LoraConfig(task_type={task!r}) also trains the 'classifier'/'score' head: add the model's head "
                "to modules_to_save"
            )
    elif task not in (None, *_CLS_TASKS):
        saved = ()  # CAUSAL_LM etc. train no head; SEQ_CLS/TOKEN_CLS/None keep loradyn's head default
    kwargs["modules_to_save"] = saved
    init = config.init_lora_weights
    if isinstance(init, str) and init.lower() == "gaussian":
        kwargs.update(distribution="gaussian", std_a=1.0 / config.r)  # PEFT: A ~ N(0, 1/r)
    elif init is not True:
        raise LoradynError(
            f"LoraConfig.init_lora_weights={init!r} has no loradyn equivalent: use True or 'gaussian' "
            "(and init='B' for Init[B])"
        )
    return kwargs


@dataclass(frozen=True)
class OptimSpec:
    """The optimizer of an experiment: Adam(W) with LoRA+ learning rates.

    ``lr_b = lr_ratio * lr_a`` (LoRA+, arXiv 2402.12354; ``lr_ratio = 1`` is plain LoRA).

    Attributes:
        name: ``"adam"`` or ``"adamw"``.
        lr_a: learning rate of ``lora_A`` (and of every other trainable matrix).
        lr_ratio: λ = lr_b / lr_a.
        betas, eps, weight_decay: the usual Adam(W) hyper-parameters.
    """

    name: Literal["adam", "adamw"] = "adam"
    lr_a: float = 1e-3
    lr_ratio: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr_a) and self.lr_a > 0):
            raise SpecError(f"optim.lr_a must be a finite number > 0, got {self.lr_a!r}")
        if not (math.isfinite(self.lr_ratio) and self.lr_ratio > 0):
            raise SpecError(f"optim.lr_ratio must be a finite number > 0, got {self.lr_ratio!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise SpecError(f"optim.betas must lie in [0, 1), got {self.betas!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise SpecError(f"optim.eps must be a finite number >= 0, got {self.eps!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise SpecError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")

    @property
    def lr_b(self) -> float:
        return self.lr_a * self.lr_ratio
