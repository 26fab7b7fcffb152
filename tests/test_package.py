"""The package surface: ``import loradyn`` stays light; every submodule and public name resolves lazily."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import loradyn

SRC = Path(loradyn.__file__).resolve().parents[1]  # the loradyn under test, also in the subprocess
HEAVY = ("transformers", "peft", "matplotlib", "ray", "safetensors", "accelerate")
# the submodules users reach as attributes (the list); others resolve the same way
NAMED = ("hf", "scaling", "sweep", "synthetic", "tasks", "probes", "optim", "init", "inject", "adapter_io",
         "packs", "report", "analysis", "plots", "specs", "serialize", "cli")


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_is_light_and_submodules_resolve_as_attributes() -> None:
    """Before: ``import loradyn; loradyn.hf.setup`` raised AttributeError (and loradyn.load_adapter too).

    The lazy resolution must keep ``import loradyn`` free of the optional extras.
    """
    out = _run(f"""
        import sys
        import loradyn
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        print("loradyn.hf" in sys.modules or "loradyn.scaling" in sys.modules)
        setup = loradyn.hf.setup
        table = loradyn.scaling.lr_rules_table
        assert callable(setup) and callable(table)
        assert loradyn.load_adapter is sys.modules["loradyn.adapter_io"].load_adapter
        for name in {NAMED!r}:
            assert getattr(loradyn, name) is sys.modules["loradyn." + name], name
            assert name in dir(loradyn), name
        print("ok")
    """)
    assert out.splitlines() == ["[]", "False", "ok"]


def test_every_submodule_is_an_attribute_and_unknown_names_still_fail() -> None:
    names = [m.name for m in pkgutil.iter_modules(loradyn.__path__) if not m.name.startswith("_")]
    assert set(NAMED) <= set(names)
    assert set(names) <= set(dir(loradyn))
    assert "load_adapter" in loradyn.__all__ and "load_adapter" in dir(loradyn)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_module'"):
        loradyn.no_such_module  # noqa: B018
    with pytest.raises(AttributeError):
        loradyn.__main__  # noqa: B018  (never run the CLI by attribute access)
