"""clear_stale_lock: the watchdog's lock file left in an instance's writable layer by a task that
was killed goes before the restart, and a symlink the function planted is never followed."""

from __future__ import annotations

import os
from pathlib import Path

from faasd_py.provider.instances import clear_stale_lock
from faasd_py.runtime.model import Mount


def overlay(upper: Path) -> list[Mount]:
    return [Mount("overlay", "overlay", options=("index=off", f"workdir={upper.parent}/work", f"upperdir={upper}",
                                                 "lowerdir=/nonexistent"))]


def test_the_lock_in_the_writable_layer_is_removed(tmp_path: Path) -> None:
    upper = tmp_path / "fs"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / ".lock").write_text("")
    (upper / "tmp" / "keep").write_text("x")
    assert clear_stale_lock(overlay(upper), "/tmp")
    assert not (upper / "tmp" / ".lock").exists()
    assert (upper / "tmp" / "keep").exists()
    assert not clear_stale_lock(overlay(upper), "/tmp")  # nothing left to remove


def test_tmpdir_and_bind_snapshots(tmp_path: Path) -> None:
    (tmp_path / "var" / "scratch").mkdir(parents=True)
    (tmp_path / "var" / "scratch" / ".lock").write_text("")
    assert clear_stale_lock([Mount("bind", str(tmp_path), options=("rbind", "rw"))], "/var/scratch/")
    assert not (tmp_path / "var" / "scratch" / ".lock").exists()


def test_no_symlink_is_followed_out_of_the_layer(tmp_path: Path) -> None:
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / ".lock").write_text("the host's")
    upper = tmp_path / "fs"
    upper.mkdir()
    os.symlink(outside, upper / "tmp")  # what a function could do to its own /tmp
    assert not clear_stale_lock(overlay(upper), "/tmp")
    assert (outside / ".lock").read_text() == "the host's"
    assert not clear_stale_lock(overlay(upper), "/../host")
    assert (outside / ".lock").exists()


def test_nothing_to_do_without_a_writable_layer(tmp_path: Path) -> None:
    assert not clear_stale_lock([], "/tmp")
    assert not clear_stale_lock(overlay(tmp_path / "missing"), "/tmp")
