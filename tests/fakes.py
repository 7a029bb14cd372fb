"""An in-memory provider implementing faasd_py.provider.contract, for gateway tests.

It behaves like the real provider at the seam (same errors for the same situations) and records
what the gateway asked of it, so tests can assert on calls such as ``release()``. Endpoints are
whatever a test points them at, typically an aiohttp server on loopback standing in for a watchdog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from faasd_py.errors import Conflict, NotFound, RuntimeFailure, Unavailable
from faasd_py.provider.contract import Endpoint, Functions, Logs, Namespaces, Secrets
from faasd_py.types import (
    DEFAULT_NAMESPACE,
    FunctionDeployment,
    FunctionNamespace,
    FunctionStatus,
    LogMessage,
    ProviderInfo,
    ScaleServiceRequest,
    Secret,
)

Key = tuple[str, str]  # (name, namespace)


class FakeFunctions:
    def __init__(self, namespaces: FakeNamespaces) -> None:
        self._namespaces = namespaces
        self.deployments: dict[Key, FunctionDeployment] = {}
        self.created_at: dict[Key, datetime] = {}
        self.endpoints: dict[Key, Endpoint] = {}
        # where newly deployed functions "listen" (None: deployed but no replica ready)
        self.default_endpoint: Endpoint | None = None
        self.unavailable: set[Key] = set()  # resolve() raises Unavailable for these
        self.resolve_delay = 0.0
        self.resolved: list[Key] = []
        self.released: list[tuple[str, str, Endpoint]] = []
        self.scaled: list[ScaleServiceRequest] = []
        self.replicas: dict[Key, int] = {}  # desired replicas after scale(); 1 until then
        self.invocations: dict[Key, float] = {}

    def add(self, deployment: FunctionDeployment, endpoint: Endpoint | None = None) -> None:
        """Test setup shortcut: a deployed function, optionally with a ready replica."""
        key = (deployment.service, deployment.namespace)
        self.deployments[key] = deployment
        self.created_at[key] = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        if endpoint is not None:
            self.endpoints[key] = endpoint

    def _status(self, key: Key) -> FunctionStatus:
        replicas = self.replicas.get(key, 1)
        ready = 1 if key in self.endpoints and key not in self.unavailable and replicas > 0 else 0
        return FunctionStatus(
            self.deployments[key],
            replicas=replicas,
            available_replicas=ready,
            invocation_count=self.invocations.get(key, 0.0),
            created_at=self.created_at.get(key),
        )

    def _require(self, name: str, namespace: str) -> Key:
        key = (name, namespace)
        if key not in self.deployments:
            raise NotFound(f"function {name}.{namespace} not found")
        return key

    async def list(self, namespace: str) -> list[FunctionStatus]:
        if not await self._namespaces.exists(namespace):
            raise NotFound(f"namespace {namespace} not found")
        return [self._status(k) for k in sorted(self.deployments) if k[1] == namespace]

    async def get(self, name: str, namespace: str, usage: bool = False) -> FunctionStatus:
        return self._status(self._require(name, namespace))

    async def deploy(self, deployment: FunctionDeployment) -> None:
        key = (deployment.service, deployment.namespace)
        if key in self.deployments:
            raise Conflict(f"function {deployment.service}.{deployment.namespace} already exists")
        if not await self._namespaces.exists(deployment.namespace):
            raise NotFound(f"namespace {deployment.namespace} not found")
        self.add(deployment, self.default_endpoint)

    async def update(self, deployment: FunctionDeployment) -> None:
        key = self._require(deployment.service, deployment.namespace)
        self.deployments[key] = deployment

    async def delete(self, name: str, namespace: str) -> None:
        key = self._require(name, namespace)
        del self.deployments[key]
        self.endpoints.pop(key, None)
        self.replicas.pop(key, None)

    async def scale(self, request: ScaleServiceRequest) -> None:
        key = self._require(request.service_name, request.namespace)
        self.scaled.append(request)
        self.replicas[key] = request.replicas

    async def resolve(self, name: str, namespace: str) -> Endpoint:
        key = self._require(name, namespace)
        self.resolved.append(key)
        if self.resolve_delay:
            await asyncio.sleep(self.resolve_delay)
        if key in self.unavailable or key not in self.endpoints:
            raise Unavailable(f"No endpoints available for: {name}.")
        return self.endpoints[key]

    def release(self, name: str, namespace: str, endpoint: Endpoint) -> None:
        self.released.append((name, namespace, endpoint))
        key = (name, namespace)
        self.invocations[key] = self.invocations.get(key, 0.0) + 1


class FakeNamespaces:
    def __init__(self) -> None:
        self.items: dict[str, FunctionNamespace] = {
            DEFAULT_NAMESPACE: FunctionNamespace(DEFAULT_NAMESPACE, labels={"openfaas": "1"})
        }

    async def list(self) -> list[str]:
        return [DEFAULT_NAMESPACE, *sorted(n for n in self.items if n != DEFAULT_NAMESPACE)]

    async def get(self, name: str) -> FunctionNamespace:
        if name not in self.items:
            raise NotFound(f"namespace {name} not found")
        return self.items[name]

    async def create(self, ns: FunctionNamespace) -> None:
        if ns.name in self.items:
            raise Conflict(f"namespace {ns.name} already exists")
        self.items[ns.name] = ns

    async def update(self, ns: FunctionNamespace) -> None:
        await self.get(ns.name)
        self.items[ns.name] = ns

    async def delete(self, name: str) -> None:
        await self.get(name)
        del self.items[name]

    async def exists(self, name: str) -> bool:
        return name in self.items


class FakeSecrets:
    def __init__(self) -> None:
        self.items: dict[Key, Secret] = {}

    async def list(self, namespace: str) -> list[Secret]:
        return [s for (_, ns), s in sorted(self.items.items()) if ns == namespace]

    async def create(self, secret: Secret) -> None:
        if (secret.name, secret.namespace) in self.items:
            raise Conflict(f"secret with the name {secret.name!r} already exists")
        self.items[(secret.name, secret.namespace)] = secret

    async def update(self, secret: Secret) -> None:
        if (secret.name, secret.namespace) not in self.items:
            raise NotFound(f"unable to find secret: {secret.name}")
        self.items[(secret.name, secret.namespace)] = secret

    async def delete(self, name: str, namespace: str) -> None:
        if self.items.pop((name, namespace), None) is None:
            raise NotFound(f"unable to find secret: {name}")


@dataclass
class LogRequest:
    name: str
    namespace: str
    instance: str
    tail: int
    since: datetime | None
    follow: bool


@dataclass
class FakeLogs:
    """History per function plus, for followers, whatever a test ``push``es later."""

    history: list[LogMessage] = field(default_factory=list)
    requests: list[LogRequest] = field(default_factory=list)
    followers: list[asyncio.Queue[LogMessage]] = field(default_factory=list)
    closed: int = 0  # streams whose generator was closed (client gone, or done)
    fail_after: int | None = None  # the reader fails (as journalctl exiting 1) after this many messages

    def push(self, message: LogMessage) -> None:
        for q in self.followers:
            q.put_nowait(message)

    def stream(
        self,
        name: str,
        namespace: str,
        *,
        instance: str = "",
        tail: int = -1,
        since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[LogMessage]:
        self.requests.append(LogRequest(name, namespace, instance, tail, since, follow))
        return self._messages(name, namespace, tail, since, follow)

    async def _messages(
        self, name: str, namespace: str, tail: int, since: datetime | None, follow: bool
    ) -> AsyncIterator[LogMessage]:
        queue: asyncio.Queue[LogMessage] = asyncio.Queue()
        if follow:
            self.followers.append(queue)
        try:
            old = [m for m in self.history if m.name == name and m.namespace == namespace]
            if since is not None:
                old = [m for m in old if m.timestamp >= since]
            if tail >= 0:
                old = old[len(old) - tail:] if tail else []
            for i, m in enumerate(old):
                if i == self.fail_after:
                    break
                yield m
            if self.fail_after is not None:
                raise RuntimeFailure("function log request failed: journalctl exited with status 1: broken")
            while follow:
                m = await queue.get()
                if m.name == name and m.namespace == namespace:
                    yield m
        finally:
            if follow:
                self.followers.remove(queue)
            self.closed += 1


class FakeProvider:
    functions: Functions
    namespaces: Namespaces
    secrets: Secrets
    logs: Logs

    def __init__(self) -> None:
        self.fake_namespaces = FakeNamespaces()
        self.fake_functions = FakeFunctions(self.fake_namespaces)
        self.fake_secrets = FakeSecrets()
        self.fake_logs = FakeLogs()
        self.functions = self.fake_functions
        self.namespaces = self.fake_namespaces
        self.secrets = self.fake_secrets
        self.logs = self.fake_logs
        self.is_ready = True

    def info(self) -> ProviderInfo:
        return ProviderInfo(provider="faasd-py", orchestration="containerd", release="0.1.0", sha="abc1234")

    def ready(self) -> bool:
        return self.is_ready
