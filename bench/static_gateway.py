"""The pieces the gateway-only benches share: an echo upstream and a provider with one fixed endpoint.

They measure the HTTP layer alone (no containerd), so the provider answers every function from
memory with the same upstream.
"""

from __future__ import annotations

from typing import Any

from faasd_py.provider.contract import Endpoint
from faasd_py.types import FunctionDeployment, FunctionStatus, ProviderInfo


def run_echo_upstream(port: int) -> None:
    """A child process: answers every request with its body (or "hello")."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=await request.read() or b"hello", content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class StaticFunctions:
    def __init__(self, endpoint: Endpoint, function: str) -> None:
        self._endpoint = endpoint
        self._status = FunctionStatus(FunctionDeployment(service=function, image="bench"), replicas=1,
                                      available_replicas=1)

    async def get(self, name: str, namespace: str, usage: bool = False) -> FunctionStatus:
        return self._status

    async def resolve(self, name: str, namespace: str) -> Endpoint:
        return self._endpoint

    def release(self, name: str, namespace: str, ep: Endpoint) -> None:
        pass


class StaticProvider:
    """Only what the invoke paths use; the other services are absent (None)."""

    namespaces: Any = None
    secrets: Any = None
    logs: Any = None

    def __init__(self, upstream_port: int, function: str = "bench") -> None:
        self.functions = StaticFunctions(Endpoint("127.0.0.1", upstream_port, "bench"), function)

    def info(self) -> ProviderInfo:
        return ProviderInfo("faasd-py", "containerd", "bench", "")

    def ready(self) -> bool:
        return True
