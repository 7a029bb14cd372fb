"""Shared set-up for the gateway tests: a gateway on loopback over the fake provider, and watchdogs.

Everything is real HTTP on 127.0.0.1 (aiohttp test servers, or the daemon's serve()); only the
provider is a fake.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from faasd_py.config import Settings
from faasd_py.gateway.app import build_app, serve
from faasd_py.gateway.auth import Credentials
from faasd_py.gateway.front import Front
from faasd_py.gateway.keys import InvocationHook
from faasd_py.provider.contract import Endpoint
from faasd_py.types import FunctionDeployment
from tests.fakes import FakeProvider
from tests.infra import free_port

USER = "admin"
PASSWORD = "correct horse battery staple"


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = basic()


def make_settings(state_dir: Path, **overrides: Any) -> Settings:
    settings = Settings(state_dir=state_dir, run_dir=state_dir / "run")
    for key, value in overrides.items():
        setattr(settings, key, value)
    settings.secrets_dir.mkdir(parents=True, exist_ok=True)
    settings.user_file.write_text(USER + "\n")
    settings.password_file.write_text(PASSWORD + "\n")
    return settings


@dataclass
class Gateway:
    provider: FakeProvider
    settings: Settings
    client: TestClient[web.Request, web.Application] | LiveClient
    front: Front | None = None  # the gateway's front protocol, when serve() started it with one

    def deploy(self, name: str, namespace: str = "openfaas-fn", endpoint: Endpoint | None = None) -> None:
        self.provider.fake_functions.add(
            FunctionDeployment(service=name, image="ghcr.io/openfaas/alpine:latest", namespace=namespace), endpoint
        )


class LiveClient:
    """The part of aiohttp's TestClient the gateway tests use, against a gateway started by serve()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._session.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        return self.request("HEAD", path, **kwargs)

    async def close(self) -> None:
        await self._session.close()


@asynccontextmanager
async def running_gateway(
    state_dir: Path, *, on_invocation: InvocationHook | None = None, front: bool | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """``front`` None: aiohttp's test server; True/False: the daemon's serve(), with or without the front."""
    settings = make_settings(state_dir, **overrides)
    provider = FakeProvider()
    app = build_app(provider, settings, Credentials.load(settings), on_invocation=on_invocation)
    if front is None:
        client: Any = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            yield Gateway(provider, settings, client)
        finally:
            await client.close()
        return
    port = free_port()
    runner = await serve(app, "127.0.0.1", port, front=front)
    live = LiveClient(port)
    try:
        yield Gateway(provider, settings, live, getattr(runner, "front", None))
    finally:
        await live.close()
        await runner.cleanup()


@dataclass
class Watchdog:
    """A stand-in for a function's watchdog: records what arrived, answers per path."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    received_bytes: int = 0
    sent_bytes: int = 0
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/redirect", self.redirect)
        app.router.add_route("*", "/gzip", self.gzip)
        app.router.add_route("*", "/hop", self.hop_by_hop)
        app.router.add_route("*", "/sink", self.sink)
        app.router.add_route("*", "/source/{size}", self.source)
        app.router.add_route("*", "/echo-stream", self.echo_stream)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_route("*", "/reset", self.reset)
        app.router.add_route("*", "/half", self.half)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        info = {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode(errors="replace"),
            "peer": request.transport.get_extra_info("peername")[1] if request.transport else None,
        }
        self.seen.append(info)
        return web.json_response(info, headers={"X-Watchdog": "yes"})

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def gzip(self, request: web.Request) -> web.Response:
        import gzip

        return web.Response(body=gzip.compress(b"hello"), headers={"Content-Encoding": "gzip"})

    async def hop_by_hop(self, request: web.Request) -> web.Response:
        self.seen.append({"headers": [[k, v] for k, v in request.headers.items()]})
        return web.Response(
            text="hop",
            headers={"Keep-Alive": "timeout=5", "Proxy-Authenticate": "Basic", "Trailer": "X-T", "X-Private": "p",
                     "Connection": "X-Private", "X-Kept": "k"},
        )

    async def sink(self, request: web.Request) -> web.Response:
        async for chunk in request.content.iter_any():
            self.received_bytes += len(chunk)
        return web.Response(text=str(self.received_bytes))

    async def source(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = b"x" * 65536
        while self.sent_bytes < size:
            n = min(len(block), size - self.sent_bytes)
            await response.write(block[:n])
            self.sent_bytes += n
        await response.write_eof()
        return response

    async def echo_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            self.received_bytes += len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        await self.release_slow.wait()
        return web.Response(text="slow done")

    async def reset(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.05)
        return web.Response(text="never sent")

    async def half(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(b"y" * 1000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response


@asynccontextmanager
async def running_watchdog(watchdog: Watchdog | None = None) -> AsyncIterator[tuple[Watchdog, Endpoint]]:
    wd = watchdog or Watchdog()
    server = TestServer(wd.app(), host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield wd, Endpoint(host="127.0.0.1", port=server.port, instance="fake-instance")
    finally:
        await server.close()


def header_values(info: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]
