"""The provider the gateway talks to: one object that bundles the per-resource services."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from faasd_py import __version__
from faasd_py.provider.functions import FunctionManager
from faasd_py.provider.logs import JournalLogs
from faasd_py.provider.namespaces import NamespaceService
from faasd_py.provider.secrets import SecretStore
from faasd_py.types import ProviderInfo, Secret


@cache
def commit_sha() -> str:
    """The git commit this build came from: a COMMIT file written at install, else the checkout."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "COMMIT", here.parent / "COMMIT"):
        if candidate.is_file():
            return candidate.read_text().strip()
    try:
        out = subprocess.run(["git", "-C", str(here.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


class NamespacedSecrets:
    """Secrets API: the store, behind the same namespace check as functions (unknown → 400)."""

    def __init__(self, store: SecretStore, namespaces: NamespaceService) -> None:
        self._store = store
        self._namespaces = namespaces

    async def list(self, namespace: str) -> list[Secret]:
        await self._namespaces.require(namespace)
        return await self._store.list(namespace)

    async def create(self, secret: Secret) -> None:
        await self._namespaces.require(secret.namespace)
        await self._store.create(secret)

    async def update(self, secret: Secret) -> None:
        await self._namespaces.require(secret.namespace)
        await self._store.update(secret)

    async def delete(self, name: str, namespace: str) -> None:
        await self._namespaces.require(namespace)
        await self._store.delete(name, namespace)


class ContainerdProvider:
    def __init__(
        self,
        functions: FunctionManager,
        namespaces: NamespaceService,
        secrets: SecretStore,
        logs: JournalLogs,
    ) -> None:
        self.functions = functions
        self.namespaces = namespaces
        self.secrets = NamespacedSecrets(secrets, namespaces)
        self.logs = logs

    def info(self) -> ProviderInfo:
        return ProviderInfo(provider="faasd-py", orchestration="containerd", release=__version__, sha=commit_sha())

    def ready(self) -> bool:
        return self.functions.ready()
