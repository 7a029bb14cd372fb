"""serve(): the runner the daemon uses; shutdown waits for in-flight invocations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from faasd_py.gateway.app import build_app, serve
from faasd_py.gateway.auth import Credentials
from tests.fakes import FakeProvider
from tests.infra import free_port
from tests.unit.gateway_support import AUTH, make_settings, running_watchdog


async def test_graceful_shutdown_lets_in_flight_invocations_finish(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    provider = FakeProvider()
    async with running_watchdog() as (wd, endpoint):
        from faasd_py.types import FunctionDeployment

        provider.fake_functions.add(FunctionDeployment(service="fn1", image="x"), endpoint)
        port = free_port()
        runner = await serve(build_app(provider, settings, Credentials.load(settings)), "127.0.0.1", port)
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
