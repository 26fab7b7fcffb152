"""A store on a filesystem without working locks: one driver at a time, the second stops with one line."""

from __future__ import annotations

import os
import socket
import time

import pytest

import sweep_toy
from loradyn.errors import LoradynError
from loradyn.sweep import fslocks, run_sweep
from loradyn.sweep.fslocks import MARK, filesystem_type, guard_store, locks_work
from loradyn.sweep.leases import new_owner

MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:38 / /mnt/shared rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 22 0:39 / /mnt/with\\040space rw - cifs //srv/x rw
42 40 0:40 / /mnt/shared/local rw - tmpfs tmpfs rw
"""


def test_the_filesystem_type_is_read_from_mountinfo(tmp_path):
    assert filesystem_type("/mnt/shared/x/y", MOUNTINFO) == "nfs4"
    assert filesystem_type("/mnt/shared", MOUNTINFO) == "nfs4"
    assert filesystem_type("/mnt/sharedness", MOUNTINFO) == "ext4"  # a prefix of the name is not a mount
    assert filesystem_type("/mnt/shared/local/z", MOUNTINFO) == "tmpfs"  # the deepest mount wins
    assert filesystem_type("/mnt/with space/a", MOUNTINFO) == "cifs"
    assert filesystem_type(tmp_path) is not None  # this machine's own table


def test_locks_work_on_a_local_disk(tmp_path):
    assert locks_work(tmp_path) is True
    assert os.listdir(tmp_path) == []  # the probe file is gone


def test_on_local_disks_no_mark_is_taken(tmp_path):
    assert guard_store(tmp_path, new_owner(), 60) is None
    assert not (tmp_path / MARK).exists()


@pytest.fixture
def nfs(monkeypatch):
    monkeypatch.setattr(fslocks, "filesystem_type", lambda directory, mountinfo=None: "nfs4")


def test_on_nfs_one_driver_holds_the_store_and_a_second_stops(tmp_path, nfs):
    first = new_owner()
    mark = guard_store(tmp_path, first, 60)
    assert mark is not None and (tmp_path / MARK).read_text().startswith(first + "\n")
    with pytest.raises(LoradynError, match=r"is on a nfs4 filesystem, where SQLite's file locks do not work across "
                                           r"machines, and another loradyn driver \(.*\) is using this store") as err:
        guard_store(tmp_path, new_owner(), 60)
    assert "\n" not in str(err.value)
    mark.remove()
    assert not (tmp_path / MARK).exists()
    assert guard_store(tmp_path, new_owner(), 60) is not None  # free again


def test_a_stale_mark_is_taken_over(tmp_path, nfs):
    (tmp_path / MARK).write_text("other-host:1:abcd\n0\n")  # a driver elsewhere, silent for longer than a lease
    old = time.time() - 120
    os.utime(tmp_path / MARK, (old, old))
    owner = new_owner()
    assert guard_store(tmp_path, owner, 60).owner == owner
    dead = f"{socket.gethostname()}:999999999:dead\n0\n"  # a dead process of this host, fresh mark
    (tmp_path / MARK).write_text(dead)
    assert guard_store(tmp_path, new_owner(), 60) is not None


def test_a_filesystem_ignoring_locks_is_detected_as_well(tmp_path, monkeypatch):
    monkeypatch.setattr(fslocks, "locks_work", lambda directory: False)
    guard_store(tmp_path, new_owner(), 60)
    with pytest.raises(LoradynError, match=r"whose file locks do not work"):
        guard_store(tmp_path, new_owner(), 60)


def test_a_second_sweep_driver_on_nfs_stops_before_touching_the_store(tmp_path, nfs):
    out = tmp_path / "s"
    out.mkdir()
    (out / MARK).write_text("other-host:1:abcd\n0\n")  # another machine's driver, refreshed just now
    with pytest.raises(LoradynError, match="another loradyn driver \\(other-host:1:abcd\\) is using this store"):
        run_sweep(sweep_toy.toy_sweep(), out, executor="serial", quiet=True)
    assert sorted(os.listdir(out)) == [MARK]  # nothing written, nothing damaged
    (out / MARK).unlink()
    df = run_sweep(sweep_toy.toy_sweep(), out, executor="serial", quiet=True)
    assert set(df["status"]) == {"done"} and not (out / MARK).exists()  # a lone driver works, and cleans up
