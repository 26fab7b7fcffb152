"""Save a trained PEFT adapter so that stock PEFT reloads it on the ORIGINAL base: :func:`save_peft_adapter`.

An adapter whose init left the base weights alone (A, B, AB, gaussian, orthogonal; see
:mod:`loradyn.init_methods`) is PEFT's plain ``save_pretrained``: the factors are all there is, even
when ``B·A != 0`` at init. One whose init rewrote the base (pissa, pissa_niter_K, olora: the model
computes ``W_res + s·B·A`` with ``W_res = W - s·B0·A0``) goes through PEFT's conversion,
``save_pretrained(..., path_initial_model_for_weight_conversion=...)``, which stores
``[A | A0]`` and ``[B | -B0]`` at rank 2r with ``lora_alpha`` doubled (×√2 under rsLoRA), i.e.
``s·(B·A - B0·A0)`` on top of the original W.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .adapter_load import CONFIG_NAME, WEIGHTS_NAME, file_errors, one_line, safetensors_module
from .errors import LoradynError
from .init_methods import capture_initial_state

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["capture_initial_state", "save_peft_adapter"]

_INITIAL_NAME = "loradyn_initial"  # adapter name under which PEFT's conversion loads the initial state


def _is_factor(key: str) -> bool:
    return key.endswith((".lora_A.weight", ".lora_B.weight"))


def save_peft_adapter(
    model: nn.Module,
    directory: str | Path,
    *,
    adapter: str = "default",
    initial_state: dict[str, torch.Tensor] | str | Path | None = None,
) -> Path:
    """Save a PEFT adapter so that stock ``PeftModel.from_pretrained(original_base, directory)`` reproduces it.

    Args:
        model: the (trained) ``PeftModel``.
        directory: gets ``adapter_config.json`` and ``adapter_model.safetensors`` (for every
            adapter name, also pack adapters ``t0``...).
        adapter: which adapter.
        initial_state: the adapter's factors right after a base-rewriting init: a dict from
            :func:`capture_initial_state` or a directory saved by ``model.save_pretrained`` at
            that point. Default: what :func:`apply_init_` recorded (none for A, B, AB, gaussian,
            orthogonal: the plain save is exact for them).

    With an initial state, PEFT's conversion writes rank 2r factors ``[A | A0]``, ``[B | -B0]`` and
    ``lora_alpha`` doubled (×√2 with rsLoRA), so ``W + s'·B'A' = W_res + s·B·A``: the adapter applies to
    the original base. peft 0.21's conversion drops ``modules_to_save`` (a classification head);
    loradyn adds them back. The saved config always says ``init_lora_weights: true``.
    """
    if not (hasattr(model, "peft_config") and hasattr(model, "save_pretrained")):
        raise LoradynError("save_peft_adapter takes a peft.PeftModel; a model with loradyn layers saves with loradyn.save_adapter")
    if adapter not in model.peft_config:
        raise LoradynError(f"no adapter {adapter!r} in the model; its adapters: {', '.join(model.peft_config)}")
    from peft.utils import get_peft_model_state_dict

    st = safetensors_module()
    if isinstance(initial_state, (str, Path)):
        try:
            initial_state = st.load_file(str(Path(initial_state) / WEIGHTS_NAME))
        except file_errors() as err:
            raise LoradynError(f"cannot read the initial adapter in {initial_state} ({one_line(err)})") from None
    if initial_state is None:
        initial_state = model.__dict__.get("_loradyn_initial_state", {}).get(adapter)
    trained = get_peft_model_state_dict(model, adapter_name=adapter)
    out = Path(directory)
    config = model.peft_config[adapter]
    before = config.init_lora_weights
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "out"
        try:
            config.init_lora_weights = True  # a stock reload must not re-run pissa & co. on the fresh base
            if initial_state is None:
                model.save_pretrained(str(saved), selected_adapters=[adapter])
            else:
                _convert_save(model, adapter, trained, initial_state, Path(tmp), saved)
        finally:
            config.init_lora_weights = before
        folder = saved if adapter == "default" else saved / adapter
        if initial_state is not None:  # PEFT's conversion keeps only the LoRA factors
            path = folder / WEIGHTS_NAME
            tensors = st.load_file(str(path))
            tensors.update({k: v.detach().contiguous() for k, v in trained.items() if k not in tensors})
            st.save_file(tensors, str(path), metadata={"format": "pt"})
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                shutil.copyfile(folder / name, out / name)
        except OSError as err:
            raise LoradynError(f"cannot write the adapter to {out} ({one_line(err)}): give a writable directory") from None
    return out


def _convert_save(model, adapter: str, trained: dict, initial: dict, tmp: Path, saved: Path) -> None:
    """PEFT's conversion path: the initial state as an adapter folder, then ``save_pretrained`` with it."""
    factors = [k for k in trained if _is_factor(k)]
    missing = [k for k in factors if k not in initial]
    if missing:
        raise LoradynError(f"initial_state has no {missing[0]!r}: capture it from this model right after the init")
    if _INITIAL_NAME in model.peft_config:
        raise LoradynError(f"the model has an adapter named {_INITIAL_NAME!r}, which the conversion needs: rename it")
    folder = tmp / _INITIAL_NAME
    folder.mkdir()
    tensors = {k: (initial[k] if k in factors else v).detach().contiguous() for k, v in trained.items()}
    safetensors_module().save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Quant\\(W_res\\)|found missing adapter keys).*")
        model.save_pretrained(str(saved), selected_adapters=[adapter], path_initial_model_for_weight_conversion=str(folder))
