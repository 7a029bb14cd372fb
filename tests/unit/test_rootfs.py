"""resolve_user against temp directories laid out like overlay snapshot layers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faasd_py.errors import InvalidRequest
from faasd_py.runtime.model import Mount
from faasd_py.runtime.rootfs import resolve_user
from faasd_py.runtime.spec import User

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:12000:12001::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = "root:x:0:\napp:x:12001:\ndocker:x:999:app,other\nstaff:x:50:other\n"


def layer(root: Path, name: str, files: dict[str, str]) -> str:
    d = root / name
    d.mkdir()
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return str(d)


def overlay(upper: str, *lowers: str) -> list[Mount]:
    return [Mount("overlay", "overlay", options=("index=off", "workdir=/x/work", f"upperdir={upper}",
                                                 "lowerdir=" + ":".join(lowers)))]  # fmt: skip


@pytest.fixture
def image(tmp_path: Path) -> list[Mount]:
    base = layer(tmp_path, "l1", {"etc/passwd": PASSWD, "etc/group": GROUP})
    upper = layer(tmp_path, "upper", {})
    return overlay(upper, base)


def test_empty_user_is_root(tmp_path: Path) -> None:
    assert resolve_user("", []) == User(0, 0)


def test_name_resolves_uid_primary_and_supplementary_groups(image: list[Mount]) -> None:
    assert resolve_user("app", image) == User(12000, 12001, (999,))


def test_numeric_uid_found_in_passwd_takes_its_group(image: list[Mount]) -> None:
    assert resolve_user("12000", image) == User(12000, 12001, (999,))


def test_numeric_uid_not_in_passwd_runs_with_gid_0(image: list[Mount]) -> None:
    assert resolve_user("4242", image) == User(4242, 0)


def test_numeric_pair_needs_no_files() -> None:
    assert resolve_user("12000:12000", []) == User(12000, 12000)


def test_name_and_group_names(image: list[Mount]) -> None:
    assert resolve_user("app:staff", image) == User(12000, 50)
    assert resolve_user("app:7", image) == User(12000, 7)


@pytest.mark.parametrize(("user", "what"), [("ghost", "user 'ghost'"), ("app:ghosts", "group 'ghosts'")])
def test_unknown_names_are_invalid_requests(image: list[Mount], user: str, what: str) -> None:
    with pytest.raises(InvalidRequest, match=what):
        resolve_user(user, image)


def test_image_without_passwd(tmp_path: Path) -> None:
    empty = overlay(layer(tmp_path, "upper", {}), layer(tmp_path, "l1", {"bin/sh": ""}))
    with pytest.raises(InvalidRequest, match="not in the image's /etc/passwd"):
        resolve_user("app", empty)
    assert resolve_user("1000", empty) == User(1000, 0)


def test_topmost_layer_wins(tmp_path: Path) -> None:
    bottom = layer(tmp_path, "l1", {"etc/passwd": "app:x:1:1::/:/bin/sh\n"})
    middle = layer(tmp_path, "l2", {"etc/passwd": "app:x:2:2::/:/bin/sh\n"})
    upper = layer(tmp_path, "upper", {})
    assert resolve_user("app", overlay(upper, middle, bottom)) == User(2, 2)  # lowerdir lists the top first
    Path(upper, "etc").mkdir()
    Path(upper, "etc/passwd").write_text("app:x:3:3::/:/bin/sh\n")
    assert resolve_user("app", overlay(upper, middle, bottom)) == User(3, 3)


def test_whiteout_hides_lower_layers(tmp_path: Path) -> None:
    bottom = layer(tmp_path, "l1", {"etc/passwd": PASSWD})
    top = layer(tmp_path, "l2", {"etc/.keep": ""})
    os.mknod(Path(top, "etc/passwd"), 0o600 | 0o020000, os.makedev(0, 0))  # overlay whiteout
    with pytest.raises(InvalidRequest):
        resolve_user("app", overlay(layer(tmp_path, "upper", {}), top, bottom))


def test_opaque_directory_hides_lower_layers(tmp_path: Path) -> None:
    bottom = layer(tmp_path, "l1", {"etc/passwd": PASSWD})
    top = layer(tmp_path, "l2", {"etc/hostname": "x"})
    try:
        os.setxattr(Path(top, "etc"), "trusted.overlay.opaque", b"y")
    except OSError as e:
        pytest.skip(f"cannot set trusted xattrs here: {e}")
    with pytest.raises(InvalidRequest):
        resolve_user("app", overlay(layer(tmp_path, "upper", {}), top, bottom))


def test_symlinks_resolve_inside_the_image_not_on_the_host(tmp_path: Path) -> None:
    bottom = layer(tmp_path, "l1", {"usr/etc/passwd": "app:x:7:8::/:/bin/sh\n"})
    top = layer(tmp_path, "l2", {})
    Path(top, "etc").symlink_to("/usr/etc")  # absolute: on the host this would be /usr/etc
    assert resolve_user("app", overlay(layer(tmp_path, "upper", {}), top, bottom)) == User(7, 8)
    flat = layer(tmp_path, "flat", {"srv/passwd": "app:x:9:9::/:/bin/sh\n"})
    Path(flat, "etc").mkdir()
    Path(flat, "etc/passwd").symlink_to("../srv/passwd")
    assert resolve_user("app", [Mount("bind", flat, options=("rbind", "ro"))]) == User(9, 9)


def test_symlink_loop_is_an_error(tmp_path: Path) -> None:
    flat = layer(tmp_path, "flat", {})
    Path(flat, "etc").symlink_to("/etc2")
    Path(flat, "etc2").symlink_to("/etc")
    with pytest.raises(InvalidRequest, match="symbolic links"):
        resolve_user("app", [Mount("bind", flat)])


def test_bind_mount_rootfs_reads_from_source(tmp_path: Path) -> None:
    flat = layer(tmp_path, "flat", {"etc/passwd": PASSWD, "etc/group": GROUP})
    assert resolve_user("nobody", [Mount("bind", flat, options=("rbind", "rw"))]) == User(65534, 65534)
