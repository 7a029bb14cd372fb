"""The front protocol: which requests it serves itself, and that it gives every other one to aiohttp intact.

The proxy behaviour both paths share is tested in test_gateway_invoke.py (each test runs with and
without the front); here: the parser's boundaries, the hand-over on a live connection, pipelining,
framing of streamed responses, and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd_py.gateway.front import Call, parse_head
from faasd_py.gateway.invoke import SMALL_BODY
from faasd_py.provider.contract import Endpoint
from tests.unit.gateway_support import AUTH, Gateway, Watchdog, running_gateway, running_watchdog

MAX_BODY = 1 << 20


def head(*lines: str, request: str = "POST /function/fn1 HTTP/1.1") -> str:
    return "\r\n".join([request, *lines])


@pytest.mark.parametrize(
    ("request_line", "target"),
    [
        ("GET /function/fn1 HTTP/1.1", "/"),
        ("GET /function/fn1/ HTTP/1.1", "/"),
        ("GET /function/fn1? HTTP/1.1", "/"),
        ("GET /function/fn1?a=1&b=%20x HTTP/1.1", "/?a=1&b=%20x"),
        ("DELETE /function/fn1.dev/a/b%2Fc/?q=1 HTTP/1.1", "/a/b%2Fc/?q=1"),
        ("OPTIONS /function/fn1/deep/path.txt HTTP/1.1", "/deep/path.txt"),
    ],
)
def test_targets_the_front_serves(request_line: str, target: str) -> None:
    call = parse_head(head("Host: gw", request=request_line), MAX_BODY)
    assert call is not None
    assert call.target == target
    assert call.method == request_line.split()[0]


def test_a_parsed_head_keeps_every_header_as_sent() -> None:
    call = parse_head(head("Host: gw:8080", "Content-Type: text/plain", "X-Custom:  spaced value\t",
                           "Content-Length: 5", "Connection: keep-alive, Close", "X-Dup: 1", "X-Dup: 2"), MAX_BODY)
    assert isinstance(call, Call)
    assert (call.name, call.host, call.length, call.close, call.content_type) == (
        "fn1", "gw:8080", 5, True, "text/plain")
    assert call.headers == [("Host", "gw:8080"), ("Content-Type", "text/plain"), ("X-Custom", "spaced value"),
                            ("Content-Length", "5"), ("Connection", "keep-alive, Close"), ("X-Dup", "1"),
                            ("X-Dup", "2")]


@pytest.mark.parametrize(
    "raw",
    [
        head("Host: gw", request="GET /system/functions HTTP/1.1"),  # another route
        head("Host: gw", request="GET /function/ HTTP/1.1"),  # no name
        head("Host: gw", request="GET /function/f%6e1 HTTP/1.1"),  # an encoded name
        head("Host: gw", request="GET /function/fn1 HTTP/1.0"),
        head("Host: gw", request="get /function/fn1 HTTP/1.1"),
        head("Host: gw", request="CONNECT /function/fn1 HTTP/1.1"),
        head("Host: gw", request="TRACE /function/fn1 HTTP/1.1"),
        head("Host: gw", request="GET http://gw/function/fn1 HTTP/1.1"),  # absolute form
        head("Host: gw", request="GET /function/fn1/a#frag HTTP/1.1"),
        head("Host: gw", request="GET /function/fn1/../../system/info HTTP/1.1"),
        head("Host: gw", request="GET /function/fn1/./x HTTP/1.1"),
        head("Host: gw", request="GET  /function/fn1 HTTP/1.1"),
        head("Host: gw", "Transfer-Encoding: chunked"),
        head("Host: gw", "Content-Length: 3", "Transfer-Encoding: chunked"),  # the classic smuggling pair
        head("Host: gw", "Content-Length: 3", "Content-Length: 3"),
        head("Host: gw", "Content-Length: +3"),
        head("Host: gw", "Content-Length: 0x3"),
        head("Host: gw", "Content-Length: \uff13"),  # a non-ASCII digit (fullwidth 3)
        head("Host: gw", f"Content-Length: {SMALL_BODY + 1}"),  # streamed by aiohttp
        head("Host: gw", "Expect: 100-continue", "Content-Length: 3"),
        head("Host: gw", "Upgrade: websocket", "Connection: Upgrade"),
        head("Host: gw", "Connection: upgrade"),
        head("Host: gw", "HTTP2-Settings: AAMAAABkAAQAAP__"),
        head(),  # no Host
        head("Host: a", "Host: b"),
        head("Host: gw", "X-Bad : space before the colon"),
        head("Host: gw", "X-Folded: one", " two"),  # obsolete line folding
        head("Host: gw", "NoColon"),
        head("Host: gw", "X-Bare: a\nX-Injected: b"),  # bare LF
        head("Host: gw", "X-Bare: a\rb"),  # bare CR
        head("Host: gw", "X-Nul: a\x00b"),
        head("Host: gw", *[f"X-{i}: v" for i in range(101)]),
        "",
    ],
)
def test_everything_else_goes_to_aiohttp(raw: str) -> None:
    assert parse_head(raw, MAX_BODY) is None


def test_the_invoke_body_limit_below_the_small_body_size_is_left_to_aiohttp() -> None:
    assert parse_head(head("Host: gw", "Content-Length: 100"), max_body=100) is not None
    assert parse_head(head("Host: gw", "Content-Length: 101"), max_body=100) is None  # aiohttp answers 413


# --- on a live connection ----------------------------------------------------------------------


@pytest.fixture
async def wd_gw(tmp_path: Path) -> AsyncIterator[tuple[Watchdog, Gateway]]:
    async with running_watchdog() as (wd, endpoint), running_gateway(tmp_path, front=True) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        yield wd, gw


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off a raw connection: status, headers (lower-case names), body."""
    raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = raw_head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        body = b""
    return status, headers, body


async def test_plain_calls_are_served_without_aiohttp(wd_gw: tuple[Watchdog, Gateway]) -> None:
    wd, gw = wd_gw
    assert gw.front is not None
    for method in ("GET", "POST", "PUT", "DELETE"):
        resp = await gw.client.request(method, "/function/fn1/x?y=1", data=b"abc" if method != "GET" else None)
        assert resp.status == 200
        assert (await resp.json())["path"] == "/x?y=1"
        assert resp.headers["Date"]
    assert (gw.front.served, gw.front.handed_over) == (4, 0)
    assert [s["body"] for s in wd.seen] == ["", "abc", "abc", "abc"]


async def test_one_connection_moves_to_aiohttp_at_its_first_other_request(wd_gw: tuple[Watchdog, Gateway]) -> None:
    """A call, then a /system request and a call on the same keep-alive connection: all answered, in order."""
    wd, gw = wd_gw
    assert gw.front is not None
    port = gw.client.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /function/fn1/one HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc")
        status, _, body = await read_response(reader)
        assert status == 200 and b'"/one"' in body
        assert (gw.front.served, gw.front.handed_over) == (1, 0)

        auth = AUTH["Authorization"]
        writer.write(f"GET /system/info HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n\r\n".encode())
        status, _, body = await read_response(reader)
        assert status == 200 and b"provider" in body
        assert gw.front.handed_over == 1

        writer.write(b"POST /function/fn1/two HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\ndef")
        status, _, body = await read_response(reader)
        assert status == 200 and b'"/two"' in body
        assert gw.front.served == 1  # aiohttp owns the connection now
    finally:
        writer.close()
    assert [s["path"] for s in wd.seen] == ["/one", "/two"]


async def test_a_smuggling_attempt_is_aiohttps_to_refuse(wd_gw: tuple[Watchdog, Gateway]) -> None:
    wd, gw = wd_gw
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(b"POST /function/fn1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /function/fn1/smuggled HTTP/1.1\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 400
    finally:
        writer.close()
    assert gw.front is not None and gw.front.handed_over == 1
    assert all(s["path"] != "/smuggled" for s in wd.seen)


async def test_pipelined_calls_are_answered_in_order(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(b"".join(
            f"POST /function/fn1/{i} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\n{i}".encode() for i in range(5)))
        for i in range(5):
            status, _, body = await read_response(reader)
            assert status == 200 and f'"/{i}"'.encode() in body
    finally:
        writer.close()
    assert gw.front is not None and (gw.front.served, gw.front.handed_over) == (5, 0)


async def test_a_body_split_from_its_head_is_waited_for(wd_gw: tuple[Watchdog, Gateway]) -> None:
    wd, gw = wd_gw
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(b"POST /function/fn1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"abc")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"def")
        status, _, _ = await read_response(reader)
        assert status == 200
    finally:
        writer.close()
    assert wd.seen[0]["body"] == "abcdef"
    assert gw.front is not None and gw.front.served == 1


async def test_connection_close_is_honoured(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(b"GET /function/fn1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the server closed it
    finally:
        writer.close()


async def test_a_streamed_response_is_relayed_chunked_while_it_arrives(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    total = 8 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port, limit=1 << 20)
    try:
        writer.write(f"GET /function/fn1/source/{total} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        assert len(body) == total and body.count(b"x") == total
        # the connection is still good for the next call
        writer.write(b"GET /function/fn1/after HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200 and b'"/after"' in body
    finally:
        writer.close()
    assert gw.front is not None and (gw.front.served, gw.front.handed_over) == (2, 0)


async def test_shutdown_lets_a_call_in_progress_finish_and_closes_idle_connections(tmp_path: Path) -> None:
    async with running_watchdog() as (wd, endpoint), running_gateway(tmp_path, front=True) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        assert gw.front is not None
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
        idle_writer.write(b"GET /function/fn1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await read_response(idle_reader))[0] == 200
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
        busy_writer.write(b"GET /function/fn1/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
        for _ in range(200):
            if len(gw.provider.fake_functions.resolved) == 2:  # the idle connection's call, then the slow one
                break
            await asyncio.sleep(0.01)
        shutdown = asyncio.ensure_future(gw.front.shutdown(5.0))
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed at once
        assert not shutdown.done()
        wd.release_slow.set()
        status, headers, _ = await read_response(busy_reader)
        assert status == 200 and headers["connection"] == "close"
        await asyncio.wait_for(shutdown, 5)
        assert await asyncio.wait_for(busy_reader.read(), 5) == b""
        idle_writer.close()
        busy_writer.close()


async def test_a_client_that_does_not_read_stops_getting_answers(tmp_path: Path, front: bool) -> None:
    """Pipelined calls whose answers pile up unread: the gateway stops calling the function (flow control),
    and every answer still arrives, in order, once the client reads. As aiohttp does, so both run."""
    calls, size = 1000, 32 * 1024  # answers small enough to arrive whole: one write each, no streaming
    answered = 0

    async def watchdog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                answered += 1
                body = b"%08d" % answered * (size // 8)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (size, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(watchdog, "127.0.0.1", 0)
    try:
        async with running_gateway(tmp_path, front=front) as gw:
            gw.deploy("fn1", endpoint=Endpoint("127.0.0.1", srv.sockets[0].getsockname()[1], "raw"))
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port, limit=1 << 20)
            try:
                writer.write(b"GET /function/fn1 HTTP/1.1\r\nHost: gw\r\n\r\n" * calls)
                await asyncio.sleep(1.0)
                assert answered < calls / 2, answered  # not all 32 MiB produced for nobody
                for i in range(1, calls + 1):
                    status, _, body = await read_response(reader)
                    assert status == 200 and body == b"%08d" % i * (size // 8)
            finally:
                writer.close()
            assert answered == calls
    finally:
        srv.close()
        await srv.wait_closed()


_SEEDS = [
    b"POST /function/fn1/a?b=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc",
    b"GET /function/fn1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    b"PUT /function/fn1.openfaas-fn/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]
_PIECES = [b"\r", b"\n", b"\r\n", b":", b" ", b"\t", b"\x00", b"\xff", b"0", b"-", b"/", b".", b"?", b"#", b"%",
           b"\x7f", b"Content-Length: 1\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n"]


def _mutant(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(_SEEDS))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        op = rng.random()
        if op < 0.4:
            data[i:i] = rng.choice(_PIECES)
        elif op < 0.7:
            del data[i:i + rng.randint(1, 4)]
        else:
            data[i] = rng.randrange(256)
    return bytes(data)


async def test_mangled_requests_get_an_answer_or_a_close_and_break_nothing(
    wd_gw: tuple[Watchdog, Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    """300 seeded mutations of valid requests: each gets a well-formed answer or a closed connection, the loop
    sees no unhandled error, nothing is logged above INFO, and the gateway serves normally afterwards."""
    _, gw = wd_gw
    loop_errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    rng = random.Random(20261122)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(300):
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
                writer.write(_mutant(rng))
                writer.write_eof()
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                assert answer == b"" or re.match(rb"HTTP/1\.[01] [1-5][0-9]{2} ", answer), answer[:80]
    finally:
        loop.set_exception_handler(None)
    assert loop_errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.INFO] == []
    assert gw.front is not None and gw.front.served > 0 and gw.front.handed_over > 0  # both paths were taken
    resp = await gw.client.post("/function/fn1", data=b"still fine")
    assert resp.status == 200 and (await resp.json())["body"] == "still fine"
