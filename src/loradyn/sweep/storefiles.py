"""The store's files on disk: opening ``sweep.db`` to write or only to read, and every SQLite or OS
failure on the way as one line that names the file and the fix.

Readers (``loradyn results``, ``loradyn report``) open the database read-only, so a store on
read-only media (a mounted snapshot, a CD, a ``ro`` bind mount) is read in place: first with
``mode=ro`` (SQLite then needs the ``-shm`` file of WAL mode, which it cannot create there), then
``immutable=1``, which is exact when no write-ahead log holds unmerged changes (a store left by a
driver that ended cleanly). A log with changes on read-only media is refused with the way out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..errors import LoradynError

__all__ = ["connect_reader", "connect_writer", "db_timeout", "explain", "make_directory", "store_errors"]

TIMEOUT_ENV = "LORADYN_DB_TIMEOUT"
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def db_timeout() -> float:
    """Seconds to wait for another process's write lock: ``LORADYN_DB_TIMEOUT`` or 60."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else 60.0
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise LoradynError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def explain(err: BaseException, path: Path) -> LoradynError:
    """One line for a SQLite or OS error met on the store ``path`` (``DIR/sweep.db``)."""
    directory = path.parent
    text = " ".join(str(err).split()) or type(err).__name__
    code = getattr(err, "errno", None)
    target = Path(err.filename) if isinstance(err, OSError) and err.filename else path
    low = text.lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in low:
        return LoradynError(f"{target}: database or disk is full; free space on the disk that holds {directory} "
                            "(or choose another --out), then re-run the same command to resume")
    if path.is_dir():
        return LoradynError(f"{path} is a directory, not a sweep store: remove or rename it, or choose another --out")
    if code == errno.EROFS or "readonly database" in low or (
            "unable to open" in low and _read_only_fs(directory)):
        return LoradynError(f"{directory} is on a read-only filesystem and loradyn sweep must write {target}: "
                            "copy the directory to writable storage and run there (loradyn results and "
                            "loradyn report read it in place)")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return LoradynError(f"{path} is damaged or not a SQLite database ({text}): move it aside "
                            f"(mv {path} {path}.broken) and re-run to start this sweep over, or restore a copy")
    if "locked" in low or "busy" in low:
        return LoradynError(f"{path} stayed locked by another process for {db_timeout():g} s (another loradyn, or "
                            "a sqlite3 session holding a write lock): stop it or wait, then re-run the same command")
    if code in (errno.EACCES, errno.EPERM) or "unable to open" in low:
        return LoradynError(f"cannot open {target} ({text}): make {directory} readable and writable for you, "
                            "or choose another --out")
    if "i/o error" in low or code == errno.EIO:
        return LoradynError(f"{target}: disk I/O error ({text}): check the disk or network filesystem under "
                            f"{directory}, then re-run the same command to resume")
    return LoradynError(f"{target}: {text}")


@contextlib.contextmanager
def store_errors(path: Path) -> Iterator[None]:
    """Turn SQLite and OS errors met on the store ``path`` into :func:`explain`'s one line."""
    try:
        yield
    except sqlite3.Error as err:
        raise explain(err, Path(path)) from None
    except OSError as err:
        if err.filename is None and err.errno not in _DISK_ERRNOS:
            raise  # not a file's or a disk's failure (a broken pipe, a refused connection)
        raise explain(err, Path(path)) from None


def make_directory(directory: Path) -> None:
    """``mkdir -p`` for ``--out``, with one line for a file in the way or a read-only filesystem."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LoradynError(f"--out {str(directory)!r} exists and is a file, not a directory; "
                           "choose another --out") from None
    except NotADirectoryError:
        parent = next((p for p in directory.parents if p.exists()), directory)
        raise LoradynError(f"--out {str(directory)!r}: {str(parent)!r} is a file, not a directory; "
                           "choose another --out") from None
    except OSError as err:
        where = next((p for p in directory.parents if p.exists()), directory)
        why = "read-only filesystem" if err.errno == errno.EROFS else (err.strerror or str(err))
        raise LoradynError(f"cannot create --out {str(directory)!r} ({why} at {str(where)!r}); "
                           "choose a --out on writable storage") from None
    if not directory.is_dir():
        raise LoradynError(f"--out {str(directory)!r} exists and is not a directory; choose another --out")


def connect_writer(path: Path) -> sqlite3.Connection:
    """A read-write connection (autocommit; transactions are explicit) waiting :func:`db_timeout` for locks."""
    timeout = db_timeout()
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection; on read-only media an immutable one (see the module docstring)."""
    uri = path.resolve().as_uri()
    timeout = db_timeout()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as err:
        conn.close()
        if "unable to open" not in str(err) or not (_read_only_fs(path.parent) or not os.access(path.parent, os.W_OK)):
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise LoradynError(f"{path} has changes not yet merged from {wal.name} and {path.parent} cannot be written: "
                           "copy the directory to writable storage and read it there")
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
