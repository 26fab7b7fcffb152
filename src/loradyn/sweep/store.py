"""The sweep store: one SQLite database (standard library, WAL mode) per sweep directory.

Layout of a sweep directory::

    DIR/spec.yaml      the resolved sweep spec (after overrides; grids expanded)
    DIR/env.json       the environment of the latest run (every run's is in the ``runs`` table)
    DIR/sweep.db       SQLite: tables trials, curves, probes, runs, meta

``trials`` has one row per trial: ``trial_id`` (content hash), ``idx`` (expansion order), ``pack``,
``config`` (JSON), ``status`` (``pending|running|done|diverged|failed``), ``metrics`` (JSON),
``error``, ``seconds`` (compute time), ``attempts``, ``lease_owner``/``lease_expires`` (the claim),
``started_at``/``finished_at`` and ``run_id`` (the run that finished it).

Concurrency and crashes:

* A run *claims* a pack of pending trials in one ``BEGIN IMMEDIATE`` transaction, marking them
  ``running`` under a lease: a claim token ``owner/n`` (:mod:`~loradyn.sweep.leases`) and an
  expiry. Its heartbeat renews the lease. A running trial can be claimed again only when its
  lease has expired or its owner is a dead process on this host, so two runs on one store never
  run the same trial twice.
* A pack's results (status, metrics, curves, probes) are written in one transaction, and only
  under the exact claim token they were claimed with, while the trials are still ``running``:
  a result that arrives twice (a retry and a late original) is written once, and a late result
  of an older claim never overwrites what a later claim (this driver's or another's) wrote.
  ``kill -9`` at any moment therefore loses at most the trials in flight, and SQLite's journal
  keeps the file consistent.
* SQLite and OS failures (a damaged file, a read-only or full disk, a lock held too long) become
  one line naming the file and the fix (:mod:`~loradyn.sweep.storefiles`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LoradynError
from .leases import claim_token, owner_alive
from .storefiles import connect_reader, connect_writer, db_timeout, make_directory, store_errors

__all__ = ["DB_NAME", "FINISHED", "SCHEMA_VERSION", "Claim", "SweepStore", "transaction"]

DB_NAME = "sweep.db"
FINISHED = ("done", "diverged", "failed")
#: The layout of the tables below; a store records it in ``meta.schema_version``. Stores written
#: before versioning have this same layout (version 1).
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started REAL, finished REAL, executor TEXT, workers INTEGER, env TEXT
);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    pack TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'diverged', 'failed')),
    metrics TEXT,
    error TEXT,
    seconds REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    started_at REAL,
    finished_at REAL,
    run_id TEXT
);
CREATE INDEX IF NOT EXISTS trials_status ON trials (status, idx);
CREATE TABLE IF NOT EXISTS curves (
    trial_id TEXT NOT NULL, step INTEGER, metric TEXT, value REAL
);
CREATE INDEX IF NOT EXISTS curves_trial ON curves (trial_id);
CREATE TABLE IF NOT EXISTS probes (
    trial_id TEXT NOT NULL, step INTEGER, module TEXT, feature TEXT, stat TEXT, value REAL
);
CREATE INDEX IF NOT EXISTS probes_trial ON probes (trial_id);
"""

@dataclass(frozen=True)
class Claim:
    """Trials of one pack that a run now holds: ids and their config JSON, in expansion order, and
    the claim token (``lease_owner``) under which their results may be written."""

    pack: str
    trial_ids: tuple[str, ...]
    configs: tuple[dict[str, Any], ...]
    token: str = ""


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; on any error (the COMMIT's own included) roll back if
    SQLite has not already done so, and re-raise the original error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """One line when the store was written by a loradyn with another store layout."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table: not written by loradyn at all
        raise LoradynError(f"{str(path)!r} is not a loradyn sweep store (no meta table)") from None
    version = int(row[0]) if row and str(row[0]).isdigit() else SCHEMA_VERSION
    if version != SCHEMA_VERSION:
        raise LoradynError(
            f"{str(path)!r} was written with sweep-store schema version {version}, this loradyn reads "
            f"version {SCHEMA_VERSION}: use the loradyn version that wrote it, or a new --out"
        )


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA quick_check`` (about 0.5 s per 100 MB); one line naming the damage and the way out."""
    problem = conn.execute("PRAGMA quick_check").fetchone()[0]
    if problem != "ok":
        raise LoradynError(f"{path} is damaged ({' '.join(str(problem).split())[:200]}): move it aside "
                           f"(mv {path} {path}.broken) and re-run to start this sweep over, or restore a copy")


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, retrying while another process does the same on a fresh database.

    SQLite answers ``database is locked`` at once here (the busy timeout does not cover the switch),
    so two drivers starting on one new store would otherwise lose one of them.
    """
    deadline = time.monotonic() + db_timeout()
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class SweepStore:
    """A sweep directory's SQLite database. Open with :meth:`create` (writers) or :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def create(cls, directory: str | Path) -> SweepStore:
        """Open (creating if needed) the store in ``directory`` to write; one line for any failure."""
        directory = Path(directory)
        make_directory(directory)
        path = directory / DB_NAME
        existed = path.exists()
        conn = None
        try:
            with store_errors(path):
                conn = connect_writer(path)
                if existed:  # a damaged file (truncated, overwritten) is refused before anything is added to it
                    _quick_check(conn, path)
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.executescript(_SCHEMA)
                _check_schema(conn, path)
                with transaction(conn):
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)", (repr(time.time()),))
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return cls(path, conn)

    @classmethod
    def open(cls, directory: str | Path) -> SweepStore:
        """Open an existing store to read (read-only media too); one line naming the directory if
        there is none, or for a damaged file."""
        directory = Path(directory)
        path = directory / DB_NAME
        if not path.is_file():
            if not directory.exists():
                raise LoradynError(f"{str(directory)!r} does not exist")
            if path.is_dir():
                raise LoradynError(f"{path} is a directory, not a sweep store: remove or rename it")
            raise LoradynError(f"no sweep store in {str(directory)!r} (expected {DB_NAME}; run loradyn sweep first)")
        with store_errors(path):
            conn = connect_reader(path)
            try:
                _check_schema(conn, path)
            except BaseException:
                conn.close()
                raise
        return cls(path, conn)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        self._conn.close()

    def reader(self) -> SweepStore:
        """A second read-write connection to the same database (for another thread)."""
        return SweepStore(self.path, connect_writer(self.path))

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of a read-only query (for :mod:`loradyn.sweep.tables`); one line for a damaged file."""
        with store_errors(self.path):
            return self._conn.execute(sql, params).fetchall()

    # ---- metadata ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def begin_run(self, run_id: str, executor: str, workers: int, env: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO runs (run_id, started, executor, workers, env) VALUES (?, ?, ?, ?, ?)",
            (run_id, time.time(), executor, workers, json.dumps(env, default=str)),
        )

    def end_run(self, run_id: str) -> None:
        self._conn.execute("UPDATE runs SET finished = ? WHERE run_id = ?", (time.time(), run_id))

    # ---- trials -----------------------------------------------------------------------------
    def add_trials(self, rows: Iterable[tuple[str, str, dict[str, Any]]]) -> int:
        """Insert ``(trial_id, pack, config)`` rows not yet present; returns how many were new."""
        with transaction(self._conn) as conn:
            start = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM trials").fetchone()[0]
            before = conn.total_changes
            for i, (tid, pack, config) in enumerate(rows):
                conn.execute(
                    "INSERT OR IGNORE INTO trials (trial_id, idx, pack, config) VALUES (?, ?, ?, ?)",
                    (tid, start + i, pack, json.dumps(config)),
                )
            return conn.total_changes - before

    def reset_failed(self, trial_ids: Sequence[str]) -> int:
        """Put ``failed`` trials among ``trial_ids`` back to ``pending`` (``--retry-failed``)."""
        wanted = set(trial_ids)
        with transaction(self._conn) as conn:
            ids = [r[0] for r in conn.execute("SELECT trial_id FROM trials WHERE status = 'failed'") if r[0] in wanted]
            for tid in ids:
                conn.execute(
                    "UPDATE trials SET status = 'pending', error = NULL, metrics = NULL "
                    "WHERE trial_id = ? AND status = 'failed'",
                    (tid,),
                )
        return len(ids)

    def statuses(self, trial_ids: Iterable[str] | None = None) -> dict[str, str]:
        rows = self._conn.execute("SELECT trial_id, status FROM trials").fetchall()
        if trial_ids is None:
            return dict(rows)
        wanted = set(trial_ids)
        return {tid: status for tid, status in rows if tid in wanted}

    def claim(self, owner: str, trial_ids: set[str], lease_seconds: float) -> Claim | None:
        """Atomically take the next pack with claimable trials among ``trial_ids`` (or None).

        Claimable: ``pending``, or ``running`` with an expired lease or a dead owner. The trials are
        held under a fresh claim token (``Claim.token``) of ``owner``.
        """
        token = claim_token(owner)
        with transaction(self._conn) as conn:
            now = time.time()
            rows = conn.execute(
                "SELECT trial_id, pack, config, status, lease_owner, lease_expires FROM trials "
                "WHERE status IN ('pending', 'running') ORDER BY idx"
            ).fetchall()
            alive: dict[str, bool] = {}

            def claimable(status: str, owner_: str | None, expires: float | None) -> bool:
                if status == "pending":
                    return True
                if owner_ is None or expires is None or expires < now:
                    return True
                if owner_ not in alive:
                    alive[owner_] = owner_alive(owner_)
                return not alive[owner_]

            chosen = [r for r in rows if r[0] in trial_ids and claimable(r[3], r[4], r[5])]
            if not chosen:
                return None
            pack = chosen[0][1]
            chosen = [r for r in chosen if r[1] == pack]
            for r in chosen:
                conn.execute(
                    "UPDATE trials SET status = 'running', lease_owner = ?, lease_expires = ?, "
                    "attempts = attempts + 1, started_at = ? WHERE trial_id = ?",
                    (token, now + lease_seconds, now, r[0]),
                )
        return Claim(pack, tuple(r[0] for r in chosen), tuple(json.loads(r[2]) for r in chosen), token)

    # the trials held by ``owner``: under any of its claim tokens (or the bare owner id)
    _HELD = "status = 'running' AND (lease_owner = ? OR substr(lease_owner, 1, ?) = ?)"

    def renew(self, owner: str, lease_seconds: float) -> None:
        """Heartbeat: extend the lease of every trial ``owner`` is running."""
        self._conn.execute(f"UPDATE trials SET lease_expires = ? WHERE {self._HELD}",
                           (time.time() + lease_seconds, owner, len(owner) + 1, owner + "/"))

    def release(self, owner: str, trial_ids: Sequence[str] | None = None) -> None:
        """Give back trials ``owner`` claimed but did not finish (all, or those of ``trial_ids``)."""
        sql = (f"UPDATE trials SET status = 'pending', lease_owner = NULL, lease_expires = NULL "
               f"WHERE {self._HELD}")
        params = (owner, len(owner) + 1, owner + "/")
        if trial_ids is None:
            self._conn.execute(sql, params)
            return
        with transaction(self._conn) as conn:
            for tid in trial_ids:
                conn.execute(sql + " AND trial_id = ?", (*params, tid))

    def complete(self, lease: str, run_id: str, results: Sequence[dict[str, Any]]) -> int:
        """Write finished trials in one transaction, only those still ``running`` under the claim
        token ``lease`` (``Claim.token``): a result that arrives again, or after another claim
        took the trial over, is skipped.

        Each result: ``trial_id, status, metrics, error, seconds, curves, probes``.
        Returns the number of trials written.
        """
        with transaction(self._conn) as conn:
            written = 0
            now = time.time()
            for res in results:
                cur = conn.execute(
                    "UPDATE trials SET status = ?, metrics = ?, error = ?, seconds = ?, finished_at = ?, "
                    "run_id = ?, lease_owner = NULL, lease_expires = NULL "
                    "WHERE trial_id = ? AND lease_owner = ? AND status = 'running'",
                    (
                        res["status"],
                        json.dumps(res["metrics"], sort_keys=True, default=str),
                        res.get("error"),
                        res.get("seconds"),
                        now,
                        run_id,
                        res["trial_id"],
                        lease,
                    ),
                )
                if cur.rowcount != 1:
                    continue
                written += 1
                tid = res["trial_id"]
                conn.execute("DELETE FROM curves WHERE trial_id = ?", (tid,))
                conn.execute("DELETE FROM probes WHERE trial_id = ?", (tid,))
                if res.get("curves"):
                    conn.executemany(
                        "INSERT INTO curves (trial_id, step, metric, value) VALUES (?, ?, ?, ?)",
                        [(tid, c.get("step"), c.get("metric"), c.get("value")) for c in res["curves"]],
                    )
                if res.get("probes"):
                    conn.executemany(
                        "INSERT INTO probes (trial_id, step, module, feature, stat, value) VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (tid, p.get("step"), p.get("module"), p.get("feature"), p.get("stat"), p.get("value"))
                            for p in res["probes"]
                        ],
                    )
        return written
