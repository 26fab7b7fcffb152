"""The synthetic teacher–student LoRA model and its batched engine (arXiv 2406.08447 §3, 2402.12354).

``f(x) = W_out · φ((W* + α·B·A) · φ(W_in x))`` (``task.form=hidden``) or, with ``task.form=residual``,
``f(x) = W_out · φ(z + α·B·A·φ(z))``, ``z = W_in x``: frozen random "pretrained" weights, a teacher
with a random rank-r* adapter, a student that trains its own rank-r adapter from Init[A] or
Init[B] with full-batch Adam. :func:`run_pack` trains many configurations at once;
the sweep engine's ``synthetic`` kind is :mod:`loradyn.tasks.kinds.synthetic`.

Example:
    >>> from loradyn.synthetic import SyntheticSpec, run_pack
    >>> cfg = SyntheticSpec.from_dict({"task": {"width": 128}, "train": {"steps": 5}})
    >>> [r.status for r in run_pack([cfg])]
    ['done']
"""

from .data import (
    FrozenParts,
    clear_cache,
    frozen_parts,
    init_student,
    stream_generator,
    teacher_weights,
)
from .engine import eval_loss, train_full, train_lora_chunk
from .spec import (
    ALPHA_RULES,
    SyntheticLoraSpec,
    SyntheticSpec,
    SyntheticTaskSpec,
    SyntheticTrainSpec,
    alpha_value,
)
from .task import chunk_size, max_pack_size, pack_key, run_pack, seconds_per_step

__all__ = [
    "ALPHA_RULES",
    "FrozenParts",
    "SyntheticLoraSpec",
    "SyntheticSpec",
    "SyntheticTaskSpec",
    "SyntheticTrainSpec",
    "alpha_value",
    "chunk_size",
    "clear_cache",
    "eval_loss",
    "frozen_parts",
    "init_student",
    "max_pack_size",
    "pack_key",
    "run_pack",
    "seconds_per_step",
    "stream_generator",
    "teacher_weights",
    "train_full",
    "train_lora_chunk",
]
