"""The SQLite store: claims and leases, atomic completion, reading tables back."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from loradyn.errors import LoradynError
from loradyn.sweep.leases import new_owner
from loradyn.sweep.store import SweepStore
from loradyn.sweep.tables import find_stores, load_results, record_table, results_frame


def _store(tmp_path, n=6, pack_size=2):
    store = SweepStore.create(tmp_path)
    rows = [(f"t{i}", f"p{i // pack_size}", {"task": {"kind": "toy"}, "optim": {"lr_a": 0.1 * (i + 1)}, "seed": i})
            for i in range(n)]
    assert store.add_trials(rows) == n
    return store, {r[0] for r in rows}


def _result(tid, status="done", value=1.0, **extra):
    return {"trial_id": tid, "status": status, "metrics": {"loss": value}, "error": None, "seconds": 0.1, **extra}


def test_add_trials_is_idempotent_and_keeps_order(tmp_path):
    store, ids = _store(tmp_path)
    assert store.add_trials([("t0", "p0", {"seed": 0}), ("t9", "p9", {"seed": 9})]) == 1
    df = results_frame(store)
    assert list(df["trial_id"]) == ["t0", "t1", "t2", "t3", "t4", "t5", "t9"]
    assert set(df["status"]) == {"pending"}


def test_claim_takes_whole_packs_in_order_and_never_twice(tmp_path):
    store, ids = _store(tmp_path)
    a, b = new_owner(), new_owner()
    c1 = store.claim(a, ids, 60)
    c2 = store.claim(b, ids, 60)
    c3 = store.claim(a, ids, 60)
    assert (c1.trial_ids, c2.trial_ids, c3.trial_ids) == (("t0", "t1"), ("t2", "t3"), ("t4", "t5"))
    assert store.claim(b, ids, 60) is None  # everything is held by live owners
    assert c1.configs[0]["optim"]["lr_a"] == pytest.approx(0.1)


def test_claim_respects_the_trial_subset(tmp_path):
    store, _ = _store(tmp_path)
    claim = store.claim(new_owner(), {"t3", "t5"}, 60)
    assert claim.trial_ids == ("t3",)  # pack p1 first; only the wanted member


def test_complete_writes_atomically_only_for_the_lease_holder(tmp_path):
    store, ids = _store(tmp_path)
    a, b = new_owner(), new_owner()
    claim = store.claim(a, ids, 60)
    curves = [{"step": 1, "metric": "loss", "value": 2.0}, {"step": 2, "metric": "loss", "value": 1.0}]
    probes = [{"step": 1, "module": "m", "feature": "z_a", "stat": "rms", "value": 3.0}]
    assert store.complete(b, b, [_result(t) for t in claim.trial_ids]) == 0  # not b's lease
    assert store.complete(a, a, [_result(t) for t in claim.trial_ids]) == 0  # the run, not the claim
    written = store.complete(claim.token, a, [_result("t0", curves=curves, probes=probes),
                                              _result("t1", "diverged", float("inf"))])
    assert written == 2
    df = results_frame(store)
    assert list(df["status"][:2]) == ["done", "diverged"]
    assert df["loss"][1] == float("inf")
    assert len(record_table(store, "curves")) == 2 and len(record_table(store, "probes")) == 1
    # a finished trial is never claimable again
    assert all(c not in ("t0", "t1") for c in store.claim(a, ids, 60).trial_ids)


def test_expired_lease_is_reclaimed(tmp_path):
    store, ids = _store(tmp_path, n=2)
    remote = "other-host:1:abcd"  # a live owner on another machine: only expiry frees its trials
    claim = store.claim(remote, ids, 0.2)
    assert claim is not None
    assert store.claim(new_owner(), ids, 60) is None
    time.sleep(0.3)
    again = store.claim(new_owner(), ids, 60)
    assert again is not None and again.trial_ids == claim.trial_ids


def test_heartbeat_renewal_keeps_the_lease(tmp_path):
    store, ids = _store(tmp_path, n=2)
    remote = "other-host:1:abcd"
    store.claim(remote, ids, 0.3)
    for _ in range(3):
        time.sleep(0.15)
        store.renew(remote, 0.3)
        assert store.claim(new_owner(), ids, 60) is None


def test_dead_local_owner_is_reclaimed_immediately(tmp_path):
    store, ids = _store(tmp_path, n=2)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{socket.gethostname()}:{int(proc.stdout)}:dead0000"
    store.claim(dead, ids, 3600)
    claim = store.claim(new_owner(), ids, 60)
    assert claim is not None and claim.trial_ids == ("t0", "t1")


def test_release_returns_trials_to_pending(tmp_path):
    store, ids = _store(tmp_path, n=2)
    owner = new_owner()
    store.claim(owner, ids, 60)
    store.release(owner)
    assert set(store.statuses().values()) == {"pending"}


def test_database_is_wal_and_schema_checks_status(tmp_path):
    store, _ = _store(tmp_path, n=1)
    conn = sqlite3.connect(tmp_path / "sweep.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE trials SET status = 'weird'")
    conn.close()


def test_results_columns_and_load_results(tmp_path):
    store, ids = _store(tmp_path, n=2)
    owner = new_owner()
    claim = store.claim(owner, ids, 60)
    store.complete(claim.token, owner, [_result("t0"), {**_result("t1", "failed"), "error": "boom", "metrics": {}}])
    store.close()
    df = load_results(tmp_path)
    assert list(df.columns) == ["trial_id", "task.kind", "optim.lr_a", "seed", "status", "loss", "error", "seconds"]
    assert df["error"].isna().tolist() == [True, False] and df["error"][1] == "boom"
    assert df["loss"][0] == 1.0 and df["loss"].isna()[1]


def test_missing_store_is_one_line_error(tmp_path):
    with pytest.raises(LoradynError, match="no sweep store"):
        load_results(tmp_path)
    with pytest.raises(LoradynError, match="does not exist"):
        load_results(tmp_path / "nope")


def test_find_stores_below_a_parent(tmp_path):
    for name in ("b", "a/inner"):
        SweepStore.create(tmp_path / name).close()
    assert [p.relative_to(tmp_path).as_posix() for p in find_stores(tmp_path)] == ["a/inner", "b"]


def _create_and_close(directory):
    try:
        SweepStore.create(directory).close()
        return None
    except Exception as exc:  # reported to the parent
        return repr(exc)


def test_concurrent_creates_of_one_new_store_all_succeed(tmp_path):
    # two drivers started together on one --out: the WAL switch used to fail with "database is locked"
    import multiprocessing as mp

    with mp.get_context("fork").Pool(4) as pool:
        errors = [e for i in range(40) for e in pool.map(_create_and_close, [tmp_path / f"s{i}"] * 4) if e]
    assert errors == []
    assert sqlite3.connect(tmp_path / "s0" / "sweep.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_records_its_schema_version_and_refuses_another(tmp_path):
    from loradyn.sweep.store import SCHEMA_VERSION

    store = SweepStore.create(tmp_path)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    store.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    store.close()
    for opener in (SweepStore.open, SweepStore.create):
        with pytest.raises(LoradynError, match=f"schema version {SCHEMA_VERSION + 1}.*a new --out") as err:
            opener(tmp_path)
        assert "\n" not in str(err.value)


def test_a_store_from_before_versioning_opens_as_version_1(tmp_path):
    store = SweepStore.create(tmp_path)
    store._conn.execute("DELETE FROM meta WHERE key = 'schema_version'")
    store.close()
    SweepStore.open(tmp_path).close()
    again = SweepStore.create(tmp_path)
    assert again.get_meta("schema_version") == "1"
    again.close()


def test_a_foreign_sqlite_file_is_one_line(tmp_path):
    conn = sqlite3.connect(tmp_path / "sweep.db")
    conn.execute("CREATE TABLE other (x)")
    conn.close()
    with pytest.raises(LoradynError, match="not a loradyn sweep store"):
        SweepStore.open(tmp_path)


def test_a_failing_transaction_rolls_back_everything(tmp_path):
    store, ids = _store(tmp_path, n=4, pack_size=2)
    owner = new_owner()
    claim = store.claim(owner, ids, 60)
    good = _result(claim.trial_ids[0], curves=[{"step": 1, "metric": "loss", "value": 1.0}])
    with pytest.raises(KeyError):
        store.complete(claim.token, owner, [good, {"trial_id": claim.trial_ids[1]}])  # the second has no status
    assert not store._conn.in_transaction
    assert [store.statuses()[t] for t in claim.trial_ids] == ["running", "running"]  # both rolled back
    assert record_table(store, "curves").empty
    assert store.complete(claim.token, owner, [good]) == 1
    store.close()


def test_transaction_commits_or_rolls_back_and_never_hides_the_error(tmp_path):
    from loradyn.sweep.store import transaction

    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError, match="boom"):
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("boom")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)] and not conn.in_transaction
    conn.close()
