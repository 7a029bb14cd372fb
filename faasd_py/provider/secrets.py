"""Secrets per namespace, stored under the state dir and mounted read-only into functions.

The store is root-only (directories 0700, files 0600). A function does not mount the store:
each instance gets a directory of its own with a copy of each secret it lists, owned by the uid
the function runs as (directory 0500, files 0400), bound read-only at /var/openfaas/secrets. So
a non-root function can read its secrets, and no other tenant's uid can.

Updating a secret replaces the copies by an atomic rename inside those directories: a running
function sees the new value the next time it opens the file, and never a half-written one (a
file bind mount would pin the old inode; rewriting it in place could be read half-way). The new
file is written in a staging directory on the same filesystem, so no temporary file ever shows
up in a function's view. Deleting a secret leaves the copies of running instances alone; new
instances of a function that lists it fail with 400 until it exists again.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from faasd_py.errors import Conflict, InvalidRequest, NotFound
from faasd_py.types import Secret, validate_namespace, validate_secret_name

MOUNT_DIR = "/var/openfaas/secrets"
STAGING = ".staging"  # under the copies dir: same filesystem, so a rename into place is atomic


@dataclass(frozen=True, slots=True)
class SecretMount:
    source: str
    destination: str


def _write_file(path: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    """A new file (never follows a link), owned and moded before any byte is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class SecretStore:
    def __init__(self, store_dir: Path, copies_dir: Path) -> None:
        self._store = store_dir
        self._copies = copies_dir

    def _ns_dir(self, namespace: str) -> Path:
        return self._store / validate_namespace(namespace)

    def _path(self, name: str, namespace: str) -> Path:
        return self._ns_dir(namespace) / validate_secret_name(name)

    def names(self, namespace: str) -> builtins.list[str]:
        d = self._ns_dir(namespace)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))

    async def list(self, namespace: str) -> builtins.list[Secret]:
        return [Secret(name=n, namespace=namespace) for n in self.names(namespace)]

    async def create(self, secret: Secret) -> None:
        path = self._path(secret.name, secret.namespace)
        if path.exists():
            raise Conflict(f'secret with the name "{secret.name}" already exists')
        self._store_value(path, secret.value)

    async def update(self, secret: Secret) -> None:
        path = self._path(secret.name, secret.namespace)
        if not path.exists():
            raise NotFound(f"unable to find secret: {secret.name}")
        self._store_value(path, secret.value)
        self._refresh_copies(secret.namespace, secret.name, secret.value)

    async def delete(self, name: str, namespace: str) -> None:
        path = self._path(name, namespace)
        try:
            path.unlink()
        except FileNotFoundError as exc:
            raise NotFound(f"unable to find secret: {name}") from exc
        with contextlib.suppress(OSError):  # the namespace's last secret: leave no empty directory
            path.parent.rmdir()

    def _store_value(self, path: Path, value: bytes) -> None:
        for d in (self._store, path.parent):  # also tightens a directory made by hand or by an older version
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        tmp = path.with_name(f".{path.name}.tmp")  # names never start with a dot: no clash, not listed
        _write_file(tmp, value, 0o600)
        os.replace(tmp, path)

    # --- per-instance copies ------------------------------------------------------------------

    def check(self, namespace: str, names: builtins.list[str]) -> None:
        missing = [n for n in names if not self._path(n, namespace).is_file()]
        if missing:
            raise InvalidRequest(f"unable to find secret(s): {', '.join(missing)} in namespace {namespace}")

    def materialize(
        self, namespace: str, instance: str, names: builtins.list[str], uid: int, gid: int
    ) -> builtins.list[SecretMount]:
        """Copy the secrets an instance needs into its own directory, owned by its uid; returns
        the bind mount (none when it lists no secret)."""
        self.check(namespace, names)
        if not names:
            return []
        self._copies.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._copies, 0o700)  # on the host, nobody but root walks into the copies
        target = self._copies / namespace / instance
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            self._replace(target / name, self._path(name, namespace).read_bytes(), uid, gid)
        os.chown(target, uid, gid)
        os.chmod(target, 0o500)
        return [SecretMount(str(target), MOUNT_DIR)]

    def release(self, namespace: str, instance: str) -> None:
        shutil.rmtree(self._copies / namespace / instance, ignore_errors=True)

    def gc(self, keep: set[tuple[str, str]]) -> None:
        """Remove the copies of instances that no longer exist (e.g. after a crash of the daemon)."""
        for ns_dir in self._instance_parents():
            for inst in ns_dir.iterdir():
                if (ns_dir.name, inst.name) not in keep:
                    shutil.rmtree(inst, ignore_errors=True)

    def _instance_parents(self) -> builtins.list[Path]:
        if not self._copies.is_dir():
            return []
        return [d for d in self._copies.iterdir() if d.is_dir() and not d.name.startswith(".")]

    def _replace(self, copy: Path, value: bytes, uid: int, gid: int) -> None:
        staging = self._copies / STAGING
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = staging / f"{copy.parent.parent.name}.{copy.parent.name}.{copy.name}"
        _write_file(tmp, value, 0o400, uid, gid)
        os.replace(tmp, copy)

    def _refresh_copies(self, namespace: str, name: str, value: bytes) -> None:
        ns_dir = self._copies / namespace
        if not ns_dir.is_dir():
            return
        for inst in ns_dir.iterdir():
            copy = inst / name
            with contextlib.suppress(FileNotFoundError):
                st = copy.stat()
                self._replace(copy, value, st.st_uid, st.st_gid)
