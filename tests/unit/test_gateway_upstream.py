"""The hot-path HTTP/1.1 client against scripted servers: framing, pooling, failures, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from faasd_py.gateway.upstream import ConnectError, Pool, ProtocolError, Response, UpstreamTimeout

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[tuple[int, list[int]]]:
    """A raw TCP server running ``script`` per connection; yields its port and a list of connection ids."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield port, connections
    finally:
        srv.close()
        await srv.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return head + await reader.readexactly(int(line.split(b":")[1]))
    return head


async def body_of(resp: Response) -> bytes:
    complete = resp.body_if_complete()
    if complete is not None:
        return complete
    out = b""
    while chunk := await resp.read():
        out += chunk
    return out


def replies(*responses: bytes, trickle: bool = False, close: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_request(reader)
            if trickle:  # one byte per write: every parser state sees a split
                for i in range(len(response)):
                    writer.write(response[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(response)
                await writer.drain()
        if close:
            return
        await reader.read()  # keep the connection open until the client closes

    return script


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize("trickle", [False, True])
async def test_chunked_body_with_extensions_and_trailers(trickle: bool) -> None:
    async with server(replies(CHUNKED, CHUNKED, trickle=trickle)) as (port, conns):
        pool = Pool()
        for _ in range(2):
            conn, resp = await pool.request("127.0.0.1", port, GET, None)
            assert resp.status == 200
            assert ("X-A", "1") in resp.headers
            assert not any(k.lower() == "transfer-encoding" for k, _ in resp.headers)
            assert await body_of(resp) == b"hello 0123456789"
            pool.release(conn)
        assert len(conns) == 1  # the connection was reused
        pool.close()


async def test_content_length_body_split_across_writes_is_streamed() -> None:
    big = b"x" * 300_000
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(big), big)
    async with server(replies(response)) as (port, _):
        pool = Pool()
        conn, resp = await pool.request("127.0.0.1", port, GET, None)
        got = b""
        while chunk := await resp.read():
            got += chunk
        assert got == big
        pool.release(conn)
        pool.close()


async def test_informational_responses_are_skipped() -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" \
               b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    async with server(replies(response)) as (port, _):
        pool = Pool()
        conn, resp = await pool.request("127.0.0.1", port, GET, None)
        assert (resp.status, resp.reason) == (201, "Created")
        assert await body_of(resp) == b"ok"
        pool.release(conn)
        pool.close()


async def test_connection_close_and_eof_framing_are_not_reused() -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"
    until_eof = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    async with server(replies(close, close=True)) as (port, conns), server(replies(until_eof, close=True)) as (
        port2, _
    ):
        pool = Pool()
        for _ in range(2):
            conn, resp = await pool.request("127.0.0.1", port, GET, None)
            assert await body_of(resp) == b"a"
            pool.release(conn)
        assert len(conns) == 2
        conn, resp = await pool.request("127.0.0.1", port2, GET, None)
        assert await body_of(resp) == b"until the end"
        assert not conn.reusable
        pool.release(conn)
        pool.close()


async def test_head_204_and_304_have_no_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with server(replies(head, no_content)) as (port, conns):
        pool = Pool()
        conn, resp = await pool.request("127.0.0.1", port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", None, head_only=True)
        assert ("Content-Length", "1234") in resp.headers
        assert await body_of(resp) == b""
        pool.release(conn)
        conn, resp = await pool.request("127.0.0.1", port, GET, None)
        assert resp.status == 204 and await body_of(resp) == b""
        pool.release(conn)
        assert len(conns) == 1
        pool.close()


@pytest.mark.parametrize(
    "bad",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    ],
)
async def test_malformed_responses_are_protocol_errors(bad: bytes) -> None:
    async with server(replies(bad)) as (port, _):
        pool = Pool()
        async def exchange() -> None:
            _, resp = await pool.request("127.0.0.1", port, GET, None)
            await body_of(resp)

        with pytest.raises(ProtocolError):
            await asyncio.wait_for(exchange(), 5)
        pool.close()


async def test_truncated_body_is_an_error() -> None:
    async with server(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)) as (port, _):
        pool = Pool()
        conn, resp = await pool.request("127.0.0.1", port, GET, None)
        with pytest.raises(ProtocolError):
            await body_of(resp)
        pool.release(conn)
        pool.close()


async def test_connect_error() -> None:
    async with server(replies()) as (port, _):
        pass  # closed again: nothing listens on that port now
    pool = Pool()
    with pytest.raises(ConnectError):
        await pool.request("127.0.0.1", port, GET, None)
    pool.close()


async def test_stale_pooled_connection_is_retried_for_idempotent_requests_only() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def answer_once_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok)
        await writer.drain()
        await reader.read(1)  # the next request arrives: close without answering (the keep-alive race)

    async with server(answer_once_then_drop) as (port, conns):
        pool = Pool()
        conn, resp = await pool.request("127.0.0.1", port, GET, None)
        assert await body_of(resp) == b"ok"
        pool.release(conn)
        conn, resp = await pool.request("127.0.0.1", port, GET, None)  # stale, retried on a new connection
        assert await body_of(resp) == b"ok"
        pool.release(conn)
        assert len(conns) == 2
        post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"
        with pytest.raises(ProtocolError):
            await pool.request("127.0.0.1", port, post, b"a", retry_stale=False)
        pool.close()


async def test_deadline_fails_a_silent_upstream() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with server(silent) as (port, _):
        pool = Pool(tick=0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await pool.request("127.0.0.1", port, GET, None, deadline=loop.time() + 0.1)
        assert 0.09 <= loop.time() - started < 1.0
        pool.close()


async def test_streamed_request_body_chunked_and_sized() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"chunked" in head:
                body = await reader.readuntil(b"0\r\n\r\n")
            else:
                body = await reader.readexactly(6)
            seen.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"def"

    async with server(record) as (port, _):
        pool = Pool()
        conn, resp = await pool.request(
            "127.0.0.1", port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", parts(),
            chunked=True)
        assert resp.status == 200
        await body_of(resp)
        await asyncio.sleep(0)
        pool.release(conn)
        conn, resp = await pool.request(
            "127.0.0.1", port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n", parts())
        await body_of(resp)
        await asyncio.sleep(0)
        pool.release(conn)
        pool.close()
    assert seen[0].endswith(b"\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert seen[1].endswith(b"\r\n\r\nabcdef")


async def test_idle_connections_expire_and_drop() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with server(replies(ok, ok, ok)) as (port, conns):
        pool = Pool(idle_timeout=0.05)
        conn, _ = await pool.request("127.0.0.1", port, GET, None)
        pool.release(conn)
        await asyncio.sleep(0.1)
        conn, _ = await pool.request("127.0.0.1", port, GET, None)  # the idle one expired: a new connection
        pool.release(conn)
        assert len(conns) == 2
        pool.drop("127.0.0.1", port)
        assert conn.closed or conn.transport is None or conn.transport.is_closing()
        pool.close()
