"""Lease owners: ``host:pid:token`` ids of the runs that hold trials, and whether one is dead.

A running trial's lease is taken over only when it expired or its owner is certainly dead: a
process of this host that no longer exists (or is a zombie). Owners on other hosts are trusted
until their lease expires.
"""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_owner", "owner_alive"]

# owners created by this interpreter that are still running (see owner_alive)
_LIVE_OWNERS: set[str] = set()


def new_owner() -> str:
    """A fresh lease-owner id ``host:pid:token`` for one run."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _LIVE_OWNERS.add(owner)
    return owner


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` is certainly dead: a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine: trust the lease expiry
    pid = int(pid_text)
    if pid == os.getpid():
        return owner in _LIVE_OWNERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
