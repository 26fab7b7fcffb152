"""SQLite and OS failures on the store: one line (exit 2) naming the file and the fix, never a traceback.

Read-only media and a full disk are real: the CLI runs inside a private mount namespace
(``unshare -rm``) with a ``ro`` bind mount or a small tmpfs (skipped where unshare is not allowed).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import textwrap
import time

import pandas as pd
import pytest
import yaml

import sweep_toy
from loradyn.cli import main
from loradyn.sweep import load_results, run_sweep


def _spec_file(tmp_path, **task):
    data = sweep_toy.toy_sweep()
    data["base"]["task"].update(task)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loradyn: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _sweep(spec, out) -> int:
    return main(["sweep", str(spec), "--out", str(out), "--executor", "serial", "--quiet"])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeroed header"])
def test_a_damaged_store_is_one_line_for_sweep_and_results(tmp_path, capsys, damage):
    spec = _spec_file(tmp_path, probes=True, steps=3000)
    out = tmp_path / "s"
    assert _sweep(spec, out) == 0
    capsys.readouterr()
    db = out / "sweep.db"
    data = db.read_bytes()
    assert len(data) > 64 * 1024
    db.write_bytes({"garbage": os.urandom(len(data)), "truncated": data[: len(data) // 2],
                    "zeroed header": b"\0" * 100 + data[100:]}[damage])
    assert _sweep(spec, out) == 2
    line = _one_line(capsys)
    assert str(db) in line and f"mv {db} {db}.broken" in line and "re-run to start this sweep over" in line
    if damage != "truncated":  # a truncated file may still hold a readable trials table
        assert main(["results", str(out)]) == 2
        assert str(db) in _one_line(capsys)


def test_a_directory_where_the_store_should_be(tmp_path, capsys):
    (tmp_path / "s" / "sweep.db").mkdir(parents=True)
    assert _sweep(_spec_file(tmp_path), tmp_path / "s") == 2
    assert "sweep.db is a directory, not a sweep store: remove or rename it" in _one_line(capsys)
    assert main(["results", str(tmp_path / "s")]) == 2
    assert "is a directory, not a sweep store" in _one_line(capsys)


def test_out_below_a_file_says_the_parent_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _sweep(_spec_file(tmp_path), tmp_path / "file" / "sub") == 2
    line = _one_line(capsys)
    assert f"--out '{tmp_path / 'file' / 'sub'}': '{tmp_path / 'file'}' is a file, not a directory" in line
    assert _sweep(_spec_file(tmp_path), tmp_path / "file") == 2
    assert "exists and is a file, not a directory" in _one_line(capsys)


@pytest.mark.parametrize("var, value", [("LORADYN_LEASE_SECONDS", "abc"), ("LORADYN_LEASE_SECONDS", "-1"),
                                        ("LORADYN_MAX_RETRIES", "x"), ("LORADYN_MAX_RETRIES", "-2"),
                                        ("LORADYN_DB_TIMEOUT", "soon")])
def test_bad_knobs_are_refused_before_the_store_is_written(tmp_path, capsys, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    assert _sweep(_spec_file(tmp_path), tmp_path / "s") == 2
    assert var in _one_line(capsys)
    assert not (tmp_path / "s").exists()


def test_a_spec_that_is_not_utf8(tmp_path, capsys):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("name: caf\u00e9\nbase: {task: {kind: toy}}\n".encode("latin-1"))
    assert _sweep(spec, tmp_path / "s") == 2
    line = _one_line(capsys)
    assert str(spec) in line and "is not UTF-8 text (byte 0xe9 on line 1): save it as UTF-8" in line
    assert not (tmp_path / "s").exists()


def test_a_write_lock_held_too_long(tmp_path, capsys, monkeypatch):
    spec = _spec_file(tmp_path)
    out = tmp_path / "s"
    assert _sweep(spec, out) == 0
    holder = subprocess.Popen(
        [sweep_toy.PYTHON, "-c", textwrap.dedent(f"""
            import sqlite3, time
            conn = sqlite3.connect({str(out / 'sweep.db')!r}, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("LORADYN_DB_TIMEOUT", "1")
        capsys.readouterr()
        t0 = time.monotonic()
        assert main(["sweep", str(spec), "--out", str(out), "--executor", "serial", "--quiet", "seeds=3"]) == 2
        assert time.monotonic() - t0 < 30
        line = _one_line(capsys)
        assert f"{out / 'sweep.db'} stayed locked by another process for 1 s" in line and "re-run the same command" in line
    finally:
        holder.kill()
        holder.wait()
    assert _sweep(spec, out) == 0  # and nothing was damaged


# ---- real read-only media and a real full disk, in a private mount namespace ------------------------
def _namespace_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not _namespace_ok(), reason="unshare -rm (mount namespaces) not allowed here")


def _in_namespace(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-rm", "bash", "-euc", script], capture_output=True, text=True, timeout=300,
                          env=sweep_toy.subprocess_env(**env))


def _cli(*args: str) -> str:
    return " ".join([sweep_toy.PYTHON, "-m", "loradyn", *map(str, args)])


@needs_namespace
def test_a_store_on_read_only_media(tmp_path):
    spec = _spec_file(tmp_path)
    out = tmp_path / "media" / "s"
    reference = run_sweep(spec, out, executor="serial", quiet=True)
    fresh = tmp_path / "media" / "new"
    proc = _in_namespace(f"""
        mount --bind {tmp_path / 'media'} {tmp_path / 'media'}
        mount -o remount,ro,bind {tmp_path / 'media'}
        set +e
        {_cli('results', out, '--format', 'csv', '--output', tmp_path / 'results.csv')}; echo "results=$?"
        {_cli('report', out, '--out', tmp_path / 'report')} >/dev/null; echo "report=$?"
        {_cli('report', out)}; echo "report-in-place=$?"
        {_cli('sweep', spec, '--out', out, '--executor', 'serial', '--quiet', 'seeds=3')}; echo "sweep=$?"
        {_cli('sweep', spec, '--out', fresh, '--executor', 'serial', '--quiet')}; echo "new=$?"
    """)
    lines = proc.stdout.split()
    assert ["results=0", "report=0", "report-in-place=2", "sweep=2", "new=2"] == [
        x for x in lines if "=" in x and x.split("=")[0] in ("results", "report", "report-in-place", "sweep", "new")
    ], proc.stdout + proc.stderr
    got = pd.read_csv(tmp_path / "results.csv")
    assert got["trial_id"].tolist() == reference["trial_id"].tolist()
    assert got["final_loss"].tolist() == pytest.approx(reference["final_loss"].tolist(), rel=1e-12)
    assert (tmp_path / "report" / "report.html").is_file()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("loradyn: error:")]
    assert len(errors) == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write the report into" in errors[0] and "--out DIR" in errors[0]
    assert f"{out} is on a read-only filesystem and loradyn sweep must write {out / 'sweep.db'}" in errors[1]
    assert f"cannot create --out '{fresh}' (read-only filesystem" in errors[2]


@needs_namespace
def test_a_full_disk_says_so_and_the_same_command_resumes_after_space_is_freed(tmp_path):
    spec = _spec_file(tmp_path, probes=True, steps=600)
    reference = run_sweep(spec, tmp_path / "ref", executor="serial", quiet=True)
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "s"
    proc = _in_namespace(f"""
        mount -t tmpfs -o size=1m tmpfs {disk}
        head -c 700000 /dev/zero > {disk}/filler
        set +e
        {_cli('sweep', spec, '--out', out, '--executor', 'serial', '--quiet')}; echo "full=$?"
        {sweep_toy.PYTHON} -c "import sqlite3; print('integrity=' + sqlite3.connect('{out}/sweep.db').execute('PRAGMA integrity_check').fetchone()[0])"
        {sweep_toy.PYTHON} -c "import sqlite3; print('finished=%d' % sqlite3.connect('{out}/sweep.db').execute(\\"SELECT count(*) FROM trials WHERE status != 'pending'\\").fetchone()[0])"
        rm {disk}/filler
        {_cli('sweep', spec, '--out', out, '--executor', 'serial', '--quiet')} >/dev/null; echo "again=$?"
        {_cli('results', out, '--format', 'csv', '--output', tmp_path / 'results.csv')}
    """)
    assert "full=2" in proc.stdout and "again=0" in proc.stdout, proc.stdout + proc.stderr
    assert "integrity=ok" in proc.stdout
    finished = int(proc.stdout.split("finished=")[1].split()[0])
    assert 0 < finished < len(reference), "the disk filled before or after the sweep: nothing was exercised"
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("wrote ")]
    assert len(errors) == 1 and "database or disk is full; free space on the disk" in errors[0], proc.stderr
    assert "cannot rollback" not in proc.stderr
    got = pd.read_csv(tmp_path / "results.csv")
    assert got["trial_id"].tolist() == reference["trial_id"].tolist() and set(got["status"]) == {"done"}
    assert got["final_loss"].tolist() == pytest.approx(reference["final_loss"].tolist(), rel=1e-12)
    conn = sqlite3.connect(tmp_path / "ref" / "sweep.db")
    n_probes = conn.execute("SELECT count(*) FROM probes").fetchone()[0]
    conn.close()
    assert len(load_results(tmp_path / "ref")) == len(reference) and n_probes > 0
