"""serve(): the runner the daemon uses; shutdown waits for in-flight invocations."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faasd_py.gateway.app import build_app, serve
from faasd_py.gateway.auth import Credentials
from tests.fakes import FakeProvider
from tests.infra import free_port
from tests.unit.gateway_support import AUTH, make_settings, running_watchdog


async def test_graceful_shutdown_lets_in_flight_invocations_finish(tmp_path: Path, front: bool) -> None:
    settings = make_settings(tmp_path)
    provider = FakeProvider()
    async with running_watchdog() as (wd, endpoint):
        from faasd_py.types import FunctionDeployment

        provider.fake_functions.add(FunctionDeployment(service="fn1", image="x"), endpoint)
        port = free_port()
        runner = await serve(build_app(provider, settings, Credentials.load(settings)), "127.0.0.1", port,
                             front=front)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as client:
            assert (await client.get(f"{base}/system/info", headers=AUTH)).status == 200
            call = asyncio.ensure_future(client.post(f"{base}/function/fn1/slow", data=b"x"))
            for _ in range(300):
                if provider.fake_functions.resolved:
                    break
                await asyncio.sleep(0.01)
            assert provider.fake_functions.resolved
            stopping = asyncio.ensure_future(runner.cleanup())
            await asyncio.sleep(0.2)
            assert not stopping.done() and not call.done()
            # no longer accepting new connections
            async with aiohttp.ClientSession() as other:
                try:
                    await other.get(f"{base}/healthz")
                    refused = False
                except aiohttp.ClientConnectionError:
                    refused = True
            assert refused
            wd.release_slow.set()
            resp = await asyncio.wait_for(call, 5)
            assert resp.status == 200
            assert await resp.text() == "slow done"
            await asyncio.wait_for(stopping, 5)
        assert len(provider.fake_functions.released) == 1


async def test_request_bodies_are_forwarded_as_sent_not_inflated(tmp_path: Path) -> None:
    """A gzip body reached the function inflated, cut at the compressed Content-Length and still labelled
    gzip (aiohttp's default auto_decompress); and a body that was not gzip at all was a 500."""
    import gzip

    settings = make_settings(tmp_path)
    provider = FakeProvider()
    seen: list[tuple[str | None, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Content-Encoding"), await request.read()))
        return web.Response(text="ok")

    watchdog = web.Application()
    watchdog.router.add_route("*", "/{tail:.*}", record)
    # the watchdog must not inflate either, or it would hide what the gateway sent
    server = TestServer(watchdog, host="127.0.0.1")
    await server.start_server(auto_decompress=False)
    from faasd_py.provider.contract import Endpoint
    from faasd_py.types import FunctionDeployment

    assert server.port is not None
    provider.fake_functions.add(FunctionDeployment(service="fn1", image="x"),
                                Endpoint(host="127.0.0.1", port=server.port, instance="i"))
    port = free_port()
    runner = await serve(build_app(provider, settings, Credentials.load(settings)), "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as client:
            for payload in (gzip.compress(b"hello world " * 10), b"not gzip at all"):
                async with client.post(f"{base}/function/fn1", data=payload,
                                       headers={"Content-Encoding": "gzip"}) as resp:
                    assert resp.status == 200
                assert seen[-1] == ("gzip", payload)
            async with client.post(f"{base}/system/functions", data=b"not gzip",
                                   headers={**AUTH, "Content-Encoding": "gzip"}) as resp:
                assert resp.status == 400
    finally:
        await runner.cleanup()
        await server.close()


async def test_a_malformed_request_is_a_400_and_one_debug_line_not_a_logged_traceback(
    tmp_path: Path, front: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    port = free_port()
    runner = await serve(build_app(FakeProvider(), settings, Credentials.load(settings)), "127.0.0.1", port,
                         front=front)
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            for bad in (b"GET /function/fn1 HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
                        b"GET /system/info\x00 HTTP/1.1\r\nHost: x\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(bad)
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                assert answer.split(b" ", 2)[1] == b"400", answer
    finally:
        await runner.cleanup()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 2
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in records)
    assert all(r.getMessage().startswith("Error handling request from 127.0.0.1: ") for r in records)
