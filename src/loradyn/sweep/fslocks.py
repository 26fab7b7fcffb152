"""Several drivers on one store need file locks that work; where they may not, one driver at a time.

SQLite keeps concurrent writers apart with POSIX file locks, and WAL mode with shared memory: on a
network filesystem (NFS, SMB/CIFS, sshfs, 9p, AFS) these do not work across machines, and two
drivers writing one store there can corrupt it. Before a driver opens a store it looks at the
filesystem under the directory (its type in ``/proc/self/mountinfo``, and whether a lock taken
on one open file actually stops a second one). Where locks are not to be trusted, the driver takes
a *driver mark* ``DIR/.loradyn-driver`` (created with ``O_EXCL``, refreshed by its heartbeat,
removed at the end), and a second driver that finds a live mark stops with one line instead of
writing. A mark whose run is dead on this host, or that was not refreshed for a lease, is stale
and taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoradynError
from .leases import owner_alive

__all__ = ["DriverMark", "NETWORK_FILESYSTEMS", "filesystem_type", "guard_store", "locks_work"]

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ncpfs", "coda")
MARK = ".loradyn-driver"


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(directory: str | Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding ``directory`` (``ext4``, ``nfs4``, …), from
    ``/proc/self/mountinfo`` (or the text ``mountinfo``); None where that cannot be read."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(directory)
    best, kind = "", None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, right.split()[0]
    return kind


def locks_work(directory: str | Path) -> bool | None:
    """Whether a write lock on one open file of ``directory`` stops a second open file (Linux open
    file description locks, as two processes would see them); None where this cannot be tested."""
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    if setlk is None:
        return None
    path = Path(directory) / f".loradyn-lockcheck-{os.getpid()}"
    lock = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    fds: list[int] = []
    try:
        fds = [os.open(path, os.O_RDWR | os.O_CREAT, 0o600)]
        fds.append(os.open(path, os.O_RDWR))
        try:
            fcntl.fcntl(fds[0], setlk, lock)
        except OSError as err:  # ENOLCK (no lock daemon), ENOSYS, EINVAL: no working locks
            return False if err.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP) else None
        try:
            fcntl.fcntl(fds[1], setlk, lock)
        except OSError as err:
            return err.errno in (errno.EAGAIN, errno.EACCES)
        return False  # the second lock was granted: the filesystem ignores locks
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()


@dataclass
class DriverMark:
    """This driver's ``DIR/.loradyn-driver`` on a filesystem without trustworthy locks."""

    path: Path
    owner: str

    def refresh(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_text().split("\n", 1)[0] == self.owner:
                self.path.unlink()


def _take(path: Path, owner: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{owner}\n{time.time()!r}\n")
    return True


def guard_store(directory: str | Path, owner: str, lease: float) -> DriverMark | None:
    """Check the filesystem under ``directory`` before a driver writes its store there.

    Returns None where locks work; else this driver's :class:`DriverMark`. Raises
    :class:`LoradynError` (one line) when another live driver holds the mark.
    """
    directory = Path(directory)
    kind = filesystem_type(directory)
    network = kind is not None and (kind in NETWORK_FILESYSTEMS or kind.startswith("nfs"))
    working = locks_work(directory)
    if not network and working is not False:
        return None
    why = (f"a {kind} filesystem, where SQLite's file locks do not work across machines" if network
           else f"a filesystem ({kind or 'unknown type'}) whose file locks do not work")
    path = directory / MARK
    for _ in range(3):
        if _take(path, owner):
            mark = DriverMark(path, owner)
            time.sleep(0.05)  # a racing driver that removed a stale mark at the same moment shows here
            with contextlib.suppress(OSError):
                if path.read_text().split("\n", 1)[0] == owner:
                    return mark
            continue
        try:
            holder = path.read_text().split("\n", 1)[0]
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue  # removed meanwhile: try again
        if owner_alive(holder) and age < lease:
            raise LoradynError(
                f"{directory} is on {why}, and another loradyn driver ({holder}) is using this store: run one "
                "driver per store there (several drivers need a local disk; across machines use one driver "
                "with --executor ray), or wait for it to finish")
        with contextlib.suppress(OSError):
            stale = path.with_name(f"{MARK}.stale.{os.getpid()}")
            os.rename(path, stale)
            stale.unlink()
    raise LoradynError(f"{directory} is on {why}, and other drivers keep taking this store: run one driver per store")
