"""Clients that stop sending: timeouts.read cuts them, as the Go gateway's read_timeout does.

Raw sockets against the runner the daemon uses (serve()), so the server's own connection handling
(keep-alive, a request head that never completes) is what is tested, not a test client's. Each test
runs twice: with the front protocol (serve()'s default) and with aiohttp alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from faasd_py.config import Timeouts
from tests.fakes import FakeProvider
from tests.unit.gateway_support import AUTH, Watchdog, running_gateway, running_watchdog

READ_TIMEOUT = 0.5
AUTH_LINE = f"Authorization: {AUTH['Authorization']}\r\n"


@dataclass
class Setup:
    port: int
    watchdog: Watchdog
    provider: FakeProvider


@asynccontextmanager
async def gateway(tmp_path: Path, front: bool) -> AsyncIterator[Setup]:
    async with running_watchdog() as (wd, endpoint), running_gateway(
        tmp_path, front=front, timeouts=Timeouts(read=READ_TIMEOUT)
    ) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        yield Setup(gw.client.port, wd, gw.provider)


async def exchange(port: int, *parts: bytes, pause: float = 0.0) -> tuple[bytes, float]:
    """Send ``parts`` with ``pause`` between them, then read until the server closes: (all bytes, seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 10)  # EOF: the server closed the connection
        return data, time.monotonic() - started
    finally:
        writer.close()


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


async def test_an_invocation_whose_small_body_stalls_is_a_408_and_the_connection_closes(
    tmp_path: Path, front: bool
) -> None:
    async with gateway(tmp_path, front) as gw:
        head = b"POST /function/fn1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
        data, took = await exchange(gw.port, head + b"abc")
        assert status_of(data) == 408, data
        assert b"X-OpenFaaS-Internal: proxy" in data
        assert b"the request body stopped arriving" in data
        assert READ_TIMEOUT <= took < 5
        assert gw.watchdog.seen == []  # never sent on
        # aiohttp's route resolves the function before reading the body; the front waits for the
        # whole small body first, so a stalled client never resumes a paused function
        assert len(gw.provider.fake_functions.released) == (0 if front else 1)


async def test_an_invocation_whose_streamed_body_stalls_is_a_408(tmp_path: Path, front: bool) -> None:
    async with gateway(tmp_path, front) as gw:
        head = b"POST /function/fn1/sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        data, took = await exchange(gw.port, head + b"5\r\nhello\r\n")
        assert status_of(data) == 408, data
        assert b"X-OpenFaaS-Internal: proxy" in data
        assert READ_TIMEOUT <= took < 5
        assert len(gw.provider.fake_functions.released) == 1


async def test_a_body_sent_in_pieces_with_short_pauses_goes_through(tmp_path: Path, front: bool) -> None:
    """The timeout is for a pause, not for the whole body: each piece restarts it."""
    async with gateway(tmp_path, front) as gw:
        head = b"POST /function/fn1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 9\r\n\r\n"
        data, took = await exchange(gw.port, head + b"abc", b"def", b"ghi", pause=READ_TIMEOUT * 0.6)
        assert status_of(data) == 200, data
        assert took > READ_TIMEOUT  # longer in all than one timeout
        assert gw.watchdog.seen[0]["body"] == "abcdefghi"


async def test_a_system_request_whose_json_body_stalls_is_a_408(tmp_path: Path, front: bool) -> None:
    async with gateway(tmp_path, front) as gw:
        head = f"POST /system/functions HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Length: 100\r\n\r\n".encode()
        data, took = await exchange(gw.port, head + b'{"service": ')
        assert status_of(data) == 408, data
        assert b"the request body stopped arriving" in data
        assert READ_TIMEOUT <= took < 5
        assert list(gw.provider.fake_functions.deployments) == [("fn1", "openfaas-fn")]  # nothing new


async def test_a_request_head_that_never_completes_is_cut(tmp_path: Path, front: bool) -> None:
    async with gateway(tmp_path, front) as gw:
        data, took = await exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert data == b""  # no request, so no answer: the connection is just closed
        assert READ_TIMEOUT <= took < 5


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(tmp_path: Path, front: bool) -> None:
    async with gateway(tmp_path, front) as gw:
        data, took = await exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(data) == 200, data
        assert READ_TIMEOUT <= took < 5


async def test_an_invocation_head_that_never_completes_is_cut(tmp_path: Path, front: bool) -> None:
    async with gateway(tmp_path, front) as gw:
        data, took = await exchange(gw.port, b"POST /function/fn1 HTTP/1.1\r\nHost: x\r\n")
        assert data == b""
        assert READ_TIMEOUT <= took < 5
        assert gw.watchdog.seen == []


async def test_an_idle_connection_after_an_invocation_is_closed_after_the_timeout(tmp_path: Path, front: bool) -> None:
    async with gateway(tmp_path, front) as gw:
        data, took = await exchange(gw.port, b"GET /function/fn1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(data) == 200, data
        assert data.count(b"HTTP/1.1 ") == 1
        assert READ_TIMEOUT <= took < 5
