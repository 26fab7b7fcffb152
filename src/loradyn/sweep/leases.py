"""Lease owners and claim tokens: who holds a running trial, and whether that holder is dead.

A run is an *owner* ``host:pid:token``. Each pack it claims gets a *claim token*
``host:pid:token/n`` (:func:`claim_token`), stored as the trials' ``lease_owner``: a result is
written only under the exact token it was claimed with, so a late or repeated result of an
earlier claim (a retried pack, an orphaned task of a dead driver) can never overwrite a later
claim's result, whoever made it.

A running trial's lease is taken over only when it expired or its owner is certainly dead: a
process of this host that no longer exists (or is a zombie). Owners on other hosts are trusted
until their lease expires.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid

__all__ = ["claim_token", "new_owner", "owner_alive", "owner_of", "retire_owner"]

# owners created by this interpreter that are still running (see owner_alive)
_LIVE_OWNERS: set[str] = set()
_CLAIMS = itertools.count(1)


def new_owner() -> str:
    """A fresh lease-owner id ``host:pid:token`` for one run."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _LIVE_OWNERS.add(owner)
    return owner


def retire_owner(owner: str) -> None:
    """``owner``'s run in this process has ended: what it still holds may be taken over at once."""
    _LIVE_OWNERS.discard(owner)


def claim_token(owner: str) -> str:
    """A token for one claim of ``owner``, unique within this process: ``owner/n``."""
    return f"{owner}/{next(_CLAIMS)}"


def owner_of(lease: str) -> str:
    """The run (``host:pid:token``) that made the claim ``lease`` (an owner id stays itself)."""
    return lease.split("/", 1)[0]


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` (or the run of a claim token) is certainly dead: a process of this
    host that no longer exists."""
    owner = owner_of(owner)
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
