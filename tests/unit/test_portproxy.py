"""The daemon's TCP proxy for published core-service ports, on loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from faasd_py.network.portproxy import PortProxy
from tests.infra import free_port


class Backend:
    """An upstream that answers every connection with its tag + what it read until EOF."""

    def __init__(self, tag: bytes, host: str = "127.0.0.1", port: int = 0) -> None:
        self.tag = tag
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Backend:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client half-closes
        writer.write(self.tag + data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()


async def exchange(port: int, payload: bytes) -> bytes:
    """What comes back for ``payload``; b"" when the proxy closed (or reset) the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    async with Backend(b"A:") as a, Backend(b"B:") as b:
        yield a, b


async def test_splices_both_ways_with_half_close(backends: tuple[Backend, Backend]) -> None:
    a, _ = backends
    proxy = PortProxy("svc", "127.0.0.1", free_port(), lambda: "127.0.0.1", a.port)
    await proxy.start()
    try:
        assert bool(proxy.listening)
        big = b"x" * 1_000_000  # more than a socket buffer: exercises drain
        assert await exchange(proxy.port, big) == b"A:" + big
    finally:
        await proxy.close()
    assert not proxy.listening
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_target_is_resolved_on_every_connection() -> None:
    """A restarted service may come back on another IP: the next connection must follow it."""
    port = free_port()
    async with Backend(b"A:", "127.0.0.1", port), Backend(b"B:", "127.0.0.2", port):
        current = ["127.0.0.1"]
        calls: list[str] = []

        def target() -> str:
            calls.append(current[0])
            return current[0]

        proxy = PortProxy("svc", "127.0.0.1", free_port(), target, port)
        await proxy.start()
        try:
            assert await exchange(proxy.port, b"1") == b"A:1"
            current[0] = "127.0.0.2"
            assert await exchange(proxy.port, b"2") == b"B:2"
            assert await exchange(proxy.port, b"3") == b"B:3"
        finally:
            await proxy.close()
    assert calls == ["127.0.0.1", "127.0.0.2", "127.0.0.2"]


async def test_no_address_or_unreachable_target_closes_the_client(backends: tuple[Backend, Backend]) -> None:
    proxy = PortProxy("svc", "127.0.0.1", free_port(), lambda: None, backends[0].port)
    await proxy.start()
    try:
        assert await exchange(proxy.port, b"hello") == b""
    finally:
        await proxy.close()
    dead = free_port()  # nothing listens there
    proxy = PortProxy("svc", "127.0.0.1", free_port(), lambda: "127.0.0.1", dead)
    await proxy.start()
    try:
        assert await exchange(proxy.port, b"hello") == b""
    finally:
        await proxy.close()


async def test_close_ends_open_connections() -> None:
    hold = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = PortProxy("svc", "127.0.0.1", free_port(), lambda: "127.0.0.1", port)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    await writer.drain()
    await asyncio.sleep(0.1)
    await asyncio.wait_for(proxy.close(), 5)  # does not wait for the upstream to answer
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    hold.set()
    server.close()
    await server.wait_closed()
