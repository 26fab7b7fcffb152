"""``SyntheticSpec``: one trial of the teacher–student LoRA model (arXiv 2406.08447; docs/theory.md §7).

Two model forms (``task.form``), φ = ReLU:

* ``hidden`` (default): ``f(x) = W_out · φ((W* + α·B·A) · φ(W_in x))`` — LoRA on a frozen hidden matrix W*;
* ``residual``: ``z = W_in·x``, ``h = z + α·B·A·φ(z)``, ``f(x) = W_out · φ(h)`` — LoRA as a residual
  branch with no W* (a recollection of the papers' toy, not verified from their text).

The readout W_out is N(0, 1/n) (``task.readout=sp``) or N(0, 1/n²) (``mup``); the teacher reads its
hidden layer out with the student's W_out or with its own N(0, 1/n) readout
(``task.teacher_readout``). Every knob is a field
with a documented default; a trial is built with :func:`loradyn.serialize.spec_from_dict`, so unknown
keys and ill-typed values are rejected with one line. Sections use the dotted names of sweeps and
``loradyn reproduce`` overrides: ``task.width``, ``lora.init``, ``optim.lr_a``, ``train.steps``...

**Adam ε.** The smallest gradient entries of this model are those of ``B`` under Init[A]:
``∂L/∂B ~ residual · n^-1/2`` (W_out ~ N(0, 1/n)), i.e. about 1e-4 at n = 8192 with a 1e-2 residual.
The default ``optim.eps = 1e-8`` stays ≥ 10^4 below that at every width used here, so Adam's
update is sign-like (entries ≈ ±lr) and the learning rate alone carries the width scaling, as in
the theory. An ε comparable to the gradient scale turns Adam into SGD with step ``lr/ε`` on the
small-gradient parameters, which changes the optimal-lr exponents (SGD's are not those of Adam).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..alarm import AlarmSpec
from ..errors import LoradynError, SpecError
from ..scaling import ALPHA_RULES, alpha_value, canonical_alpha_rule
from ..serialize import late_field, spec_from_dict, spec_to_dict
from ..specs import OptimSpec
from ..tasks.spec import check_device_syntax

__all__ = [
    "ALPHA_RULES",
    "SyntheticLoraSpec",
    "SyntheticSpec",
    "SyntheticTaskSpec",
    "SyntheticTrainSpec",
    "alpha_value",
]

def _positive_int(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{where} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class SyntheticTaskSpec:
    """The frozen "pretrained" network, the teacher and the data.

    Attributes:
        kind: always ``"synthetic"`` (the sweep engine dispatches on it).
        width: hidden width n; W* is n × n.
        d_in: input dimension d (x ~ N(0, I_d)); W_in ~ N(0, 1/d) is n × d.
        d_out: output dimension; W_out is d_out × n.
        n_train: training points N (full batch).
        n_test: held-out points for ``test_loss``.
        teacher_rank: rank r* of the teacher's adapter B*·A* (B* ~ N(0, 1/r*), A* ~ N(0, 1/n)); it
            does not follow the student's rank, so a rank sweep keeps one target.
        with_w_star: must stay ``True``. ``False`` (``W_out φ(α B A φ(W_in x))``) is refused: at
            B·A = 0 every hidden pre-activation is 0 and ReLU'(0) = 0, so no gradient ever reaches
            the adapter; ``form="residual"`` is the form without W* that learns. The residual
            form has no W* and ignores this field.
        data_seed: seed of the teacher and the data; ``None`` (default) uses the trial's ``seed``.
        form: ``"hidden"`` or ``"residual"`` (the module docstring; docs/theory.md §7).
        readout: ``"sp"``: W_out ~ N(0, 1/n) (standard parametrization); ``"mup"``: W_out ~ N(0, 1/n²)
            (μP's output multiplier 1/n, arXiv 2203.03466). The same draw, rescaled.
        teacher_readout: ``"shared"``: the teacher's output is W_out·φ(teacher hidden), the
            student's own readout; ``"independent"``: the teacher has its own W_out* ~ N(0, 1/n)
            (drawn apart from W_out, so targets are Θ(1) whatever ``readout`` is). With a shared
            readout, rescaling W_out rescales the loss only (Adam's updates do not change while ε
            stays negligible), so ``readout=mup`` matters only with an independent teacher.
    """

    kind: Literal["synthetic"] = "synthetic"
    width: int = 1024
    d_in: int = 5
    d_out: int = 1
    n_train: int = 1000
    n_test: int = 100
    teacher_rank: int = 4
    with_w_star: bool = True
    data_seed: int | None = None
    form: Literal["hidden", "residual"] = late_field("hidden")
    readout: Literal["sp", "mup"] = late_field("sp")
    teacher_readout: Literal["shared", "independent"] = late_field("shared")

    def __post_init__(self) -> None:
        for name in ("width", "d_in", "d_out", "n_train", "n_test", "teacher_rank"):
            _positive_int(getattr(self, name), f"task.{name}")
        if self.with_w_star is not True:
            raise SpecError(
                "task.with_w_star=false cannot learn (at B·A = 0 every hidden pre-activation is 0 and "
                "ReLU'(0) = 0, so the adapter gets no gradient); use task.form=residual, the form without W*"
            )


@dataclass(frozen=True)
class SyntheticLoraSpec:
    """The student's trainable part.

    Attributes:
        method: ``"lora"`` trains the rank-r adapter; ``"full"`` trains the whole hidden matrix
            (full finetuning of W* with Adam at ``optim.lr_a``; the μA reference). With ``"full"``
            the other fields are ignored.
        rank: r.
        init: ``"A"`` = Init[A] (B = 0, A random) or ``"B"`` = Init[B] (A = 0, B random).
        alpha_rule: the multiplier α of ``α·B·A``: ``"1"``, ``"1/sqrt(r)"`` or ``"1/r"`` (μA's
            α = r^-γ with γ = 0, 1/2, 1; aliases ``"rslora"``, ``"alpha/r"``: the vocabulary of
            :mod:`loradyn.scaling`).
        distribution: ``"gaussian"`` (default: A ~ N(0, 1/n), B ~ N(0, 1/r), as in the papers) or
            ``"kaiming_uniform"`` (PEFT's U(±1/sqrt(fan_in)), variance 1/(3 fan_in)).
        std_a, std_b: explicit standard deviations of the random factor (``None``: the default).
    """

    method: Literal["lora", "full"] = "lora"
    rank: int = 4
    init: Literal["A", "B"] = "A"
    alpha_rule: str = "1"
    distribution: Literal["gaussian", "kaiming_uniform"] = "gaussian"
    std_a: float | None = None
    std_b: float | None = None

    def __post_init__(self) -> None:
        _positive_int(self.rank, "lora.rank")
        try:
            object.__setattr__(self, "alpha_rule", canonical_alpha_rule(self.alpha_rule))
        except LoradynError as err:
            raise SpecError(f"lora.alpha_rule: {err}") from None
        for name in ("std_a", "std_b"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SpecError(f"lora.{name} must be a finite number > 0 (or null), got {value!r}")

    @property
    def alpha(self) -> float:
        return alpha_value(self.alpha_rule, self.rank)


@dataclass(frozen=True)
class SyntheticTrainSpec:
    """Training length, precision and what to record.

    Attributes:
        steps: T full-batch Adam steps (constant learning rate, no clipping).
        dtype: ``"float32"`` (fast; experiments) or ``"float64"`` (tests). Teacher, data and init
            are drawn in float64 and rounded, so both dtypes see the same draws.
        device: ``auto`` (CUDA when there is one, else MPS, else the CPU), ``cpu``, ``cuda``,
            ``cuda:N`` or ``mps``, as ``train.device`` of the real-model tasks. Draws stay on the
            CPU in float64 and are moved after rounding, so every device sees the same numbers; a
            GPU sums in another order (float64: equal to the CPU's within 1e-9 relative, checked by
            ``benchmarks/gpu_check.py``) and reaches widths far beyond the CPU's (65,536).
        record_every: record Z_A / Z_B norms every this many steps (0: never); step t means "after
            t updates", t = 0..steps.
        record_steps: extra steps at which to record norms.
        curve_every: record train/test loss curves every this many steps (0: none).
        blowup_factor: a configuration whose train loss exceeds ``blowup_factor`` × its loss at
            step 0 (the pretrained model's loss), or whose loss is not finite, is *diverged*: it
            is frozen at that step and reported with status ``diverged``. Default 100: the loss
            has grown 100-fold from the starting point, far outside any trajectory that ends
            near the optimum (the best final losses are 10^2–10^3 times *below* the start).
        alarm: the instability alarm (:class:`loradyn.alarm.AlarmSpec`, on by default): checked
            at every step on the loss, Z_B against the adapter's input H, and the update
            ``α‖B A‖_F`` against ``‖W*‖_F`` (``hidden`` form only); an alarmed configuration is
            frozen there and reported ``diverged`` with the alarm's fields.
    """

    steps: int = 200
    dtype: Literal["float32", "float64"] = "float32"
    record_every: int = 0
    record_steps: tuple[int, ...] = ()
    curve_every: int = 0
    blowup_factor: float = 100.0
    device: str = late_field("auto")
    alarm: AlarmSpec = late_field(AlarmSpec())

    def __post_init__(self) -> None:
        _positive_int(self.steps, "train.steps")
        check_device_syntax(self.device)
        for name in ("record_every", "curve_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SpecError(f"train.{name} must be an integer >= 0, got {value!r}")
        object.__setattr__(self, "record_steps", tuple(int(s) for s in self.record_steps))
        if any(s < 0 for s in self.record_steps):
            raise SpecError(f"train.record_steps must be >= 0, got {list(self.record_steps)!r}")
        if not (math.isfinite(self.blowup_factor) and self.blowup_factor > 1):
            raise SpecError(f"train.blowup_factor must be a finite number > 1, got {self.blowup_factor!r}")

    def recorded_steps(self) -> tuple[int, ...]:
        """The steps (0..steps) at which Z_A / Z_B norms are recorded."""
        steps = set(s for s in self.record_steps if s <= self.steps)
        if self.record_every:
            steps.update(range(0, self.steps + 1, self.record_every))
        return tuple(sorted(steps))


@dataclass(frozen=True)
class SyntheticSpec:
    """One trial: ``task``, ``lora``, ``optim`` (:class:`loradyn.specs.OptimSpec`), ``train``, ``seed``.

    ``optim.lr_a`` is A's learning rate, ``optim.lr_ratio`` is λ with ``lr_b = λ·lr_a`` (LoRA+);
    ``optim.name`` is ``adam`` (L2 ``weight_decay`` added to the gradient) or ``adamw``
    (decoupled). The trial ``seed`` draws the student's init; it also draws the teacher and data
    unless ``task.data_seed`` is set.
    """

    task: SyntheticTaskSpec = field(default_factory=SyntheticTaskSpec)
    lora: SyntheticLoraSpec = field(default_factory=SyntheticLoraSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: SyntheticTrainSpec = field(default_factory=SyntheticTrainSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SpecError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def data_seed(self) -> int:
        return self.seed if self.task.data_seed is None else self.task.data_seed

    @classmethod
    def from_dict(cls, data: dict | None) -> SyntheticSpec:
        return spec_from_dict(cls, data)

    def to_dict(self) -> dict:
        return spec_to_dict(self)
