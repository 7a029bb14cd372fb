"""Secrets per namespace, stored under the state dir and mounted read-only into functions.

The store is root-only (directories 0700, files 0600). A function does not mount the stored file
itself: each instance gets its own copy, owned by the uid the function runs as and mode 0400, so
a non-root function can read its secret while no other tenant's uid can. Updating a secret
rewrites those copies in place (a bind mount pins the inode, so a rename would not be seen):
running functions see the new value on their next read.
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


@dataclass(frozen=True, slots=True)
class SecretMount:
    source: str
    destination: str


def _write_in_place(path: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, data)
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
        tmp = path.with_name(f".{path.name}.tmp")
        _write_in_place(tmp, value, 0o600)
        os.replace(tmp, path)

    # --- per-instance copies ------------------------------------------------------------------

    def check(self, namespace: str, names: builtins.list[str]) -> None:
        missing = [n for n in names if not self._path(n, namespace).is_file()]
        if missing:
            raise InvalidRequest(f"unable to find secret(s): {', '.join(missing)} in namespace {namespace}")

    def materialize(
        self, namespace: str, instance: str, names: builtins.list[str], uid: int, gid: int
    ) -> builtins.list[SecretMount]:
        """Copy the secrets an instance needs, owned by its uid; returns the bind mounts."""
        self.check(namespace, names)
        target = self._copies / namespace / instance
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        mounts = []
        for name in names:
            copy = target / name
            _write_in_place(copy, self._path(name, namespace).read_bytes(), 0o400, uid, gid)
            mounts.append(SecretMount(str(copy), f"{MOUNT_DIR}/{name}"))
        return mounts

    def release(self, namespace: str, instance: str) -> None:
        shutil.rmtree(self._copies / namespace / instance, ignore_errors=True)

    def gc(self, keep: set[tuple[str, str]]) -> None:
        if not self._copies.is_dir():
            return
        for ns_dir in self._copies.iterdir():
            for inst in ns_dir.iterdir():
                if (ns_dir.name, inst.name) not in keep:
                    shutil.rmtree(inst, ignore_errors=True)

    def _refresh_copies(self, namespace: str, name: str, value: bytes) -> None:
        ns_dir = self._copies / namespace
        if not ns_dir.is_dir():
            return
        for inst in ns_dir.iterdir():
            copy = inst / name
            with contextlib.suppress(FileNotFoundError):
                st = copy.stat()
                _write_in_place(copy, value, 0o400, st.st_uid, st.st_gid)
