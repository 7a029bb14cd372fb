"""Resolve an image's ``User`` to numeric ids by reading its /etc/passwd and /etc/group.

The files are read straight from the snapshot's layer directories (the overlay ``upperdir``
and ``lowerdir`` list), so nothing is mounted and no container process is needed. The lookup
follows overlay semantics: the topmost layer holding a path wins, a whiteout or an opaque
directory hides the layers below, and symlinks are resolved inside the image, never on the
host. Blocking file I/O: call it through ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import os
import posixpath
import stat

from faasd_py.errors import InvalidRequest
from faasd_py.runtime.model import Mount
from faasd_py.runtime.spec import User

_MAX_SYMLINKS = 8
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def resolve_user(user: str, rootfs: list[Mount]) -> User:
    """``""``, ``name``, ``uid``, ``uid:gid``, ``name:group`` (any mix) -> numeric ids.

    Like runc: a user found in /etc/passwd brings its primary group and, unless a group is
    given explicitly, the supplementary groups that list it as a member; a numeric uid absent
    from /etc/passwd runs with gid 0. Unknown names are an InvalidRequest.
    """
    user = user.strip()
    if not user:
        return User(0, 0)
    name_part, _, group_part = user.partition(":")
    if name_part.isdigit() and group_part.isdigit():
        return User(int(name_part), int(group_part))  # nothing to look up
    image = _ImageFiles(rootfs)

    uid: int
    gid = 0
    username = ""
    if name_part.isdigit():
        uid = int(name_part)
        entry = _passwd_by_uid(image, uid)
        if entry is not None:
            username, gid = entry[0], entry[2]
    else:
        entry = _passwd_by_name(image, name_part)
        if entry is None:
            raise InvalidRequest(f"image user {name_part!r} is not in the image's /etc/passwd")
        username, uid, gid = entry

    if group_part:
        if group_part.isdigit():
            return User(uid, int(group_part))
        for group_name, group_id, _members in _groups(image):
            if group_name == group_part:
                return User(uid, group_id)
        raise InvalidRequest(f"image group {group_part!r} is not in the image's /etc/group")

    extra: list[int] = []
    if username:
        extra = [g for _n, g, members in _groups(image) if username in members and g != gid]
    return User(uid, gid, tuple(dict.fromkeys(extra)))


def _passwd(image: _ImageFiles) -> list[tuple[str, int, int]]:
    entries = []
    for fields in _records(image.read("etc/passwd")):
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            entries.append((fields[0], int(fields[2]), int(fields[3])))
    return entries


def _passwd_by_name(image: _ImageFiles, name: str) -> tuple[str, int, int] | None:
    return next((e for e in _passwd(image) if e[0] == name), None)


def _passwd_by_uid(image: _ImageFiles, uid: int) -> tuple[str, int, int] | None:
    return next((e for e in _passwd(image) if e[1] == uid), None)


def _groups(image: _ImageFiles) -> list[tuple[str, int, list[str]]]:
    groups = []
    for fields in _records(image.read("etc/group")):
        if len(fields) >= 3 and fields[2].isdigit():
            members = [m.strip() for m in fields[3].split(",")] if len(fields) > 3 and fields[3] else []
            groups.append((fields[0], int(fields[2]), members))
    return groups


def _records(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#")]


class _ImageFiles:
    """Read-only view of the image's files through its layer directories, topmost first."""

    def __init__(self, rootfs: list[Mount]) -> None:
        self.layers: list[str] = []
        for m in reversed(rootfs):  # a later mount is stacked on top of the earlier ones
            if m.type == "overlay":
                opts = {k: v for k, _, v in (o.partition("=") for o in m.options)}
                if opts.get("upperdir"):
                    self.layers.append(opts["upperdir"])
                self.layers.extend(d for d in opts.get("lowerdir", "").split(":") if d)
            else:
                self.layers.append(m.source)

    def read(self, path: str) -> str | None:
        """The text of ``path`` (relative to the image root), or None when the image has no such file."""
        for _ in range(_MAX_SYMLINKS):
            found = self._lookup(path)
            if found is None:
                return None
            host_path, st = found
            if stat.S_ISREG(st.st_mode):
                with open(host_path, encoding="utf-8", errors="replace") as f:
                    return f.read()
            if not stat.S_ISLNK(st.st_mode):
                return None
            target = os.readlink(host_path)
            path = posixpath.normpath(posixpath.join("/", posixpath.dirname(path), target)).lstrip("/")
        raise InvalidRequest(f"too many levels of symbolic links resolving /{path} in the image")

    def _lookup(self, path: str, depth: int = 0) -> tuple[str, os.stat_result] | None:
        if depth > _MAX_SYMLINKS:
            raise InvalidRequest(f"too many levels of symbolic links resolving /{path} in the image")
        parts = [p for p in path.split("/") if p]
        for layer in self.layers:
            hidden = False
            cursor = layer
            for i, part in enumerate(parts):
                cursor = os.path.join(cursor, part)
                try:
                    st = os.lstat(cursor)
                except (FileNotFoundError, NotADirectoryError):
                    break
                if _is_whiteout(st):
                    return None  # deleted in this layer: lower layers do not show through
                if i == len(parts) - 1:
                    return cursor, st
                if stat.S_ISLNK(st.st_mode):
                    # a directory symlink: resolve it inside the image rather than on the host
                    target = os.readlink(cursor)
                    rest = "/".join(parts[i + 1 :])
                    base = posixpath.dirname("/".join(parts[: i + 1]))
                    resolved = posixpath.normpath(posixpath.join("/", base, target, rest)).lstrip("/")
                    return self._lookup(resolved, depth + 1)
                if not stat.S_ISDIR(st.st_mode):
                    return None
                if _is_opaque(cursor):
                    hidden = True
            if hidden:
                return None  # an opaque directory on the path hides every lower layer
        return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(directory: str) -> bool:
    for attr in _OPAQUE_XATTRS:
        try:
            if os.getxattr(directory, attr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False
