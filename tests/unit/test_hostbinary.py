"""Images of one host binary (faasd_py.build.hostbinary) and the core image definitions."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from faasd_py.build.coreimages import CORE_IMAGES, image_refs, select, version_tag
from faasd_py.build.hostbinary import HostBinarySpec, build_host_binary_image, layer_entries
from faasd_py.build.layout import find_manifest, read_index, unpack, verify_layout
from faasd_py.errors import ImageError, InvalidRequest

TRUE = Path(shutil.which("true") or "/usr/bin/true")


def spec(tmp: Path, **kw: object) -> HostBinarySpec:
    return HostBinarySpec(name="true", binary=TRUE, **kw)  # type: ignore[arg-type]


def test_image_holds_binary_libraries_and_a_minimal_etc(tmp_path: Path) -> None:
    built = build_host_binary_image(
        spec(tmp_path, cmd=("--help",), dirs={"/data": (0o750, 65534, 65534)}, files={"/etc/app.conf": "x=1\n"}),
        tmp_path / "layout", ["localhost/t/true:1", "localhost/t/true:latest"], cache_dir=tmp_path / "cache")
    verify_layout(tmp_path / "layout")
    assert {m["annotations"]["org.opencontainers.image.ref.name"] for m in read_index(tmp_path / "layout")} == {
        "localhost/t/true:1", "localhost/t/true:latest"}
    assert find_manifest(tmp_path / "layout", "localhost/t/true:1")["digest"] == built.digest
    root = tmp_path / "root"
    config = unpack(tmp_path / "layout", root, "localhost/t/true:latest")["config"]
    assert config["Entrypoint"] == [str(TRUE)] and config["Cmd"] == ["--help"]
    assert config["User"] == "65534:65534"
    assert (root / str(TRUE).lstrip("/")).exists()
    assert any(p.name.startswith("libc.so") for p in root.rglob("libc.so*"))
    assert "nobody:x:65534:65534" in (root / "etc/passwd").read_text()
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert (root / "etc/app.conf").read_text() == "x=1\n"
    if os.geteuid() == 0:
        assert (root / "data").stat().st_uid == 65534
        # the strongest check that ldd found everything: the binary runs in its rootfs alone
        assert subprocess.run(["chroot", str(root), str(TRUE)], timeout=30).returncode == 0


def test_builds_are_reproducible_and_cached(tmp_path: Path) -> None:
    a = build_host_binary_image(spec(tmp_path), tmp_path / "a", ["localhost/t:1"], cache_dir=tmp_path / "c1")
    b = build_host_binary_image(spec(tmp_path), tmp_path / "b", ["localhost/t:1"], cache_dir=tmp_path / "c2")
    assert a.digest == b.digest and a.layers[0].digest == b.layers[0].digest
    cached = list((tmp_path / "c1").glob("hostbinary-*.json"))
    assert len(cached) == 1
    again = build_host_binary_image(spec(tmp_path), tmp_path / "c", ["localhost/t:1"], cache_dir=tmp_path / "c1")
    assert again.digest == a.digest


def test_extra_paths_follow_symlinks_skip_dangling_ones_and_honour_exclude(tmp_path: Path) -> None:
    tree = tmp_path / "share"
    (tree / "web").mkdir(parents=True)
    (tree / "web" / "index.html").write_text("hi")
    (tmp_path / "lib" / "big" / "data").mkdir(parents=True)
    (tmp_path / "lib" / "big" / "data" / "huge.bin").write_bytes(b"0" * 10)
    (tmp_path / "lib" / "big" / "small.js").write_text("js")
    (tree / "web" / "big").symlink_to("../../lib/big")
    (tree / "web" / "gone").symlink_to("../../nowhere")
    entries = {e.path: e for e in layer_entries(spec(
        tmp_path, extra_paths=(str(tree / "web"),), exclude=(str(tmp_path / "lib" / "big" / "data"),)))}
    assert entries[str(tree / "web" / "index.html")].kind == "file"
    assert entries[str(tree / "web" / "big")].kind == "symlink"
    assert entries[str(tmp_path / "lib" / "big" / "small.js")].kind == "file"
    assert str(tmp_path / "lib" / "big" / "data" / "huge.bin") not in entries
    assert str(tree / "web" / "gone") in entries  # the link itself is kept, its target is not there
    assert all(e.mtime == 0 for e in entries.values())


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not an executable"):
        build_host_binary_image(HostBinarySpec("x", tmp_path / "missing"), tmp_path / "l", ["localhost/x:1"])
    with pytest.raises(InvalidRequest, match="at least one reference"):
        build_host_binary_image(spec(tmp_path), tmp_path / "l", [])
    with pytest.raises(InvalidRequest, match="unknown core image"):
        select(["nats", "mysql"])


def test_core_image_names_and_tags() -> None:
    assert version_tag("2.9.10-1+b3") == "2.9.10-1_b3"
    assert version_tag("1:2.42.0+ds-5+deb12u1") == "2.42.0_ds-5_deb12u1"
    assert image_refs("nats", "2.9.10-1+b3") == (
        "localhost/faasd-py/nats:2.9.10-1_b3", "localhost/faasd-py/nats:latest")
    assert image_refs("nats", "") == ("localhost/faasd-py/nats:latest",)
    assert set(CORE_IMAGES) == {"nats", "prometheus"}
    nats = CORE_IMAGES["nats"].spec()
    assert "-js" in nats.cmd and nats.user == "65534:65534"
