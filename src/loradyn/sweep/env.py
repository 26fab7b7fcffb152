"""The environment a sweep ran in: package versions, git revision, host, torch threads, dtype."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["environment"]

_PACKAGES = ("loradyn", "torch", "numpy", "pandas", "pyyaml", "peft", "transformers", "safetensors", "ray")


def _git_revision() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout that holds loradyn's source, if any."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def environment(executor: str, workers: int) -> dict[str, Any]:
    """A JSON-safe description of this run's environment.

    ``torch_threads`` is what every pack runs with: 1 for all executors (the serial executor sets
    it around each pack; worker processes and Ray tasks set it at start).
    """
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    dtype = None
    if "torch" in sys.modules:
        dtype = str(sys.modules["torch"].get_default_dtype()).removeprefix("torch.")
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "git": _git_revision(),
        "executor": executor,
        "workers": workers,
        "torch_threads": 1,
        "default_dtype": dtype or "float32",
        "argv": sys.argv,
    }
