"""What the HTTP layer may ask of the provider: the seam between gateway/ and provider/.

The gateway only sees these protocols, so its tests can run against an in-memory double while
the daemon wires in the containerd-backed implementation. Every method raises
:mod:`faasd_py.errors` exceptions (NotFound, Conflict, InvalidRequest ...) for client-visible
failures; the gateway turns them into status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from faasd_py.types import (
    FunctionDeployment,
    FunctionNamespace,
    FunctionStatus,
    LogMessage,
    ProviderInfo,
    ScaleServiceRequest,
    Secret,
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one ready replica of a function listens (the watchdog)."""

    host: str
    port: int
    instance: str  # containerd container id, for logs and metrics


class Functions(Protocol):
    async def list(self, namespace: str) -> list[FunctionStatus]: ...

    async def get(self, name: str, namespace: str, usage: bool = False) -> FunctionStatus: ...

    async def deploy(self, deployment: FunctionDeployment) -> None:
        """Create a function (Conflict if it exists); returns once a replica is ready."""

    async def update(self, deployment: FunctionDeployment) -> None:
        """Replace a function without downtime (NotFound if it does not exist)."""

    async def delete(self, name: str, namespace: str) -> None: ...

    async def scale(self, request: ScaleServiceRequest) -> None: ...

    async def resolve(self, name: str, namespace: str) -> Endpoint:
        """The hot path: an endpoint for one invocation, waiting (bounded) while a replica starts.

        Raises NotFound for an unknown function and Unavailable when no replica became ready.
        No containerd round trip when a replica is warm.
        """

    def release(self, name: str, namespace: str, endpoint: Endpoint) -> None:
        """Called when an invocation ends (idle tracking, in-flight counts)."""


class Namespaces(Protocol):
    async def list(self) -> list[str]: ...

    async def get(self, name: str) -> FunctionNamespace: ...

    async def create(self, ns: FunctionNamespace) -> None: ...

    async def update(self, ns: FunctionNamespace) -> None: ...

    async def delete(self, name: str) -> None: ...

    async def exists(self, name: str) -> bool: ...


class Secrets(Protocol):
    async def list(self, namespace: str) -> list[Secret]: ...

    async def create(self, secret: Secret) -> None: ...

    async def update(self, secret: Secret) -> None: ...

    async def delete(self, name: str, namespace: str) -> None: ...


class Logs(Protocol):
    def stream(
        self,
        name: str,
        namespace: str,
        *,
        instance: str = "",
        tail: int = -1,
        since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[LogMessage]: ...


class Provider(Protocol):
    @property
    def functions(self) -> Functions: ...

    @property
    def namespaces(self) -> Namespaces: ...

    @property
    def secrets(self) -> Secrets: ...

    @property
    def logs(self) -> Logs: ...

    def info(self) -> ProviderInfo: ...

    def ready(self) -> bool:
        """True once every function has been restored (for /healthz and systemd READY=1)."""
