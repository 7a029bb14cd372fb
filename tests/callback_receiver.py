"""An X-Callback-Url target for tests: an aiohttp server on loopback that records every POST."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Callback:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    received: list[Callback] = field(default_factory=list)
    attempts: list[Callback] = field(default_factory=list)  # failed ones too
    fail_next: int = 0  # answer this many of the next requests with fail_status
    fail_status: int = 500
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Callback]:
        """The first ``count`` successful callbacks, once they are there."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.received) >= count), timeout)
        return self.received[:count]


@asynccontextmanager
async def callback_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(url="")

    async def handle(request: web.Request) -> web.Response:
        cb = Callback(request.path_qs, dict(request.headers), await request.read())
        receiver.attempts.append(cb)
        if receiver.fail_next > 0:
            receiver.fail_next -= 1
            return web.Response(status=receiver.fail_status, text="not now")
        async with receiver.arrived:
            receiver.received.append(cb)
            receiver.arrived.notify_all()
        return web.Response(text="thanks")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
