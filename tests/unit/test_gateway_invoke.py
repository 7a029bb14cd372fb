"""The invocation proxy against real aiohttp "watchdogs" on loopback, through serve() with and without the front."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd_py.gateway.invoke import split_function_name
from faasd_py.provider.contract import Endpoint
from tests.unit.gateway_support import (
    Gateway,
    Watchdog,
    header_values,
    running_gateway,
    running_watchdog,
)

FN = "/function/fn1.openfaas-fn"


@pytest.fixture
async def wd_gw(tmp_path: Path, front: bool) -> AsyncIterator[tuple[Watchdog, Gateway]]:
    async with running_watchdog() as (wd, endpoint), running_gateway(tmp_path, front=front) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        yield wd, gw


def test_split_function_name() -> None:
    assert split_function_name("fn") == ("fn", "openfaas-fn")
    assert split_function_name("fn.dev") == ("fn", "dev")
    assert split_function_name("a.b.dev") == ("a.b", "dev")  # the LAST dot splits
    assert split_function_name("fn.") == ("fn", "openfaas-fn")


async def test_faas_cli_invoke(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    resp = await gw.client.post(FN, data=b"hello", headers={
        "Content-Type": "text/plain", "User-Agent": "faas-cli/0.17.0 (openfaas; linux; amd64)"})
    assert resp.status == 200
    seen = await resp.json()
    assert seen["method"] == "POST" and seen["path"] == "/" and seen["body"] == "hello"
    assert header_values(seen, "User-Agent") == ["faas-cli/0.17.0 (openfaas; linux; amd64)"]
    assert header_values(seen, "Content-Type") == ["text/plain"]
    assert resp.headers["X-Watchdog"] == "yes"
    assert gw.provider.fake_functions.released == [("fn1", "openfaas-fn", gw.provider.fake_functions.endpoints[
        ("fn1", "openfaas-fn")])]


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/function/fn1", "/"),
        ("/function/fn1/", "/"),
        ("/function/fn1?a=1&b=%20x", "/?a=1&b=%20x"),
        ("/function/fn1.openfaas-fn/a/b%2Fc/?q=1&q=2", "/a/b%2Fc/?q=1&q=2"),
        ("/function/fn1/deep/path.txt", "/deep/path.txt"),
    ],
)
async def test_paths_and_queries_pass_through_raw(wd_gw: tuple[Watchdog, Gateway], path: str, upstream: str) -> None:
    _, gw = wd_gw
    for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS"):
        resp = await gw.client.request(method, path)
        assert resp.status == 200, method
        seen = await resp.json()
        assert (seen["method"], seen["path"]) == (method, upstream)


async def test_head_passes_through(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    size = len(await (await gw.client.get("/function/fn1/gzip", auto_decompress=False)).read())
    resp = await gw.client.head("/function/fn1/gzip")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)  # the watchdog's, not 0
    assert await resp.read() == b""


async def test_expect_100_continue_is_answered_by_the_gateway(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    resp = await gw.client.post(FN, data=b"after continue", expect100=True)
    assert resp.status == 200
    seen = await resp.json()
    assert seen["body"] == "after continue"
    assert header_values(seen, "Expect") == []


async def test_raw_watchdog_chunked_with_trailers_and_no_content_type(tmp_path: Path, front: bool) -> None:
    """A non-aiohttp upstream: chunked framing is re-done by the gateway, trailers dropped, Content-Type
    falls back to the request's (faas-provider's rule)."""

    async def watchdog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(
                    b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                             b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gateway closed its pooled connection
        finally:
            writer.close()

    srv = await asyncio.start_server(watchdog, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with running_gateway(tmp_path, front=front) as gw:
            gw.deploy("fn1", endpoint=Endpoint("127.0.0.1", port, "raw"))
            for _ in range(2):
                resp = await gw.client.post(FN, data=b"x", headers={"Content-Type": "application/json"})
                assert resp.status == 200
                assert await resp.read() == b"abc"
                assert resp.headers["Content-Type"] == "application/json"
                assert "X-Sum" not in resp.headers and "Trailer" not in resp.headers
    finally:
        srv.close()
        await srv.wait_closed()


async def test_call_id_start_time_and_forwarded_headers(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    before = time.time_ns()
    resp = await gw.client.get(FN)
    seen = await resp.json()
    call_id = resp.headers["X-Call-Id"]
    assert str(uuid.UUID(call_id)) == call_id and uuid.UUID(call_id).version == 4
    assert header_values(seen, "X-Call-Id") == [call_id]
    start = int(resp.headers["X-Start-Time"])
    assert before <= start <= time.time_ns()
    assert header_values(seen, "X-Start-Time") == [str(start)]
    assert header_values(seen, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(seen, "X-Forwarded-Host") == [f"127.0.0.1:{gw.client.port}"]
    assert header_values(seen, "Host") != header_values(seen, "X-Forwarded-Host")  # the watchdog's own address

    mine = await gw.client.get(FN, headers={"X-Call-Id": "my-id", "X-Forwarded-For": "10.0.0.9",
                                            "X-Forwarded-Host": "example.test"})
    seen = await mine.json()
    assert mine.headers["X-Call-Id"] == "my-id"
    assert header_values(seen, "X-Call-Id") == ["my-id"]
    assert header_values(seen, "X-Forwarded-For") == ["10.0.0.9"]
    assert header_values(seen, "X-Forwarded-Host") == ["example.test"]


async def test_no_headers_are_invented(wd_gw: tuple[Watchdog, Gateway]) -> None:
    """No Accept/Accept-Encoding/User-Agent of our own, and the client's Authorization reaches the function."""
    _, gw = wd_gw
    resp = await gw.client.get(FN, headers={"Authorization": "Bearer fn-token"}, skip_auto_headers=(
        "User-Agent", "Accept", "Accept-Encoding"))
    seen = await resp.json()
    names = {k.lower() for k, _ in seen["headers"]}
    assert not names & {"user-agent", "accept", "accept-encoding", "cookie"}
    assert header_values(seen, "Authorization") == ["Bearer fn-token"]


async def test_hop_by_hop_headers_are_dropped_both_ways(wd_gw: tuple[Watchdog, Gateway]) -> None:
    wd, gw = wd_gw
    resp = await gw.client.get("/function/fn1/hop", headers={
        "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "timeout=5", "TE": "trailers",
        "Proxy-Authorization": "Basic eDp5", "Upgrade": "websocket", "Trailer": "X-T", "X-Fine": "1"})
    assert resp.status == 200
    sent = {k.lower() for k, _ in wd.seen[-1]["headers"]}
    assert not sent & {"x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade", "trailer"}
    assert "x-fine" in sent
    got = {k.lower() for k in resp.headers}
    assert not got & {"keep-alive", "proxy-authenticate", "trailer", "x-private"}
    assert resp.headers["X-Kept"] == "k"


async def test_redirects_are_passed_not_followed(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    resp = await gw.client.get("/function/fn1/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/elsewhere"


async def test_content_encoding_is_untouched(wd_gw: tuple[Watchdog, Gateway]) -> None:
    import gzip

    _, gw = wd_gw
    resp = await gw.client.get("/function/fn1/gzip", auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await resp.read()) == b"hello"


async def test_large_bodies_stream_both_ways(wd_gw: tuple[Watchdog, Gateway]) -> None:
    """50 MB up and down; each side checks the other is already moving before it finishes, so nothing is buffered
    whole in the gateway."""
    wd, gw = wd_gw
    total = 50 * 1024 * 1024
    block = b"z" * (1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for i in range(total // len(block)):
            if i == 40:  # 40 MB sent: the function must already have most of it
                for _ in range(500):
                    if wd.received_bytes >= 20 * len(block):
                        break
                    await asyncio.sleep(0.01)
                assert wd.received_bytes >= 20 * len(block), wd.received_bytes
            yield block

    resp = await gw.client.post("/function/fn1/sink", data=body())
    assert resp.status == 200
    assert int(await resp.text()) == total

    down = await gw.client.get(f"/function/fn1/source/{total}")
    got = 0
    checked = False
    async for chunk in down.content.iter_chunked(1 << 16):
        got += len(chunk)
        if not checked and got >= 5 * len(block):
            assert wd.sent_bytes < total  # we read while the function is still writing
            checked = True
    assert got == total and checked


async def test_echo_stream_round_trip(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    payload = bytes(range(256)) * 4096

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i:i + 100_000]

    resp = await gw.client.post("/function/fn1/echo-stream", data=body())
    assert resp.status == 200
    assert await resp.read() == payload


async def test_invoke_body_limit_is_413(tmp_path: Path, front: bool) -> None:
    async with running_watchdog() as (_, endpoint), running_gateway(
        tmp_path, front=front, max_invoke_body=100_000
    ) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        declared = await gw.client.post(FN, data=b"a" * 100_001)
        assert declared.status == 413
        assert declared.headers["X-OpenFaaS-Internal"] == "proxy"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"b" * 10_000

        streamed = await gw.client.post("/function/fn1/sink", data=chunked())
        assert streamed.status == 413
        ok = await gw.client.post("/function/fn1/sink", data=b"c" * 100_000)
        assert ok.status == 200
        # release() ran for each call that got an endpoint (the declared one never resolved)
        assert len(gw.provider.fake_functions.released) == 2


async def test_unknown_function_404_and_unavailable_503(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    missing = await gw.client.post("/function/nope")
    assert missing.status == 404
    assert missing.headers["X-OpenFaaS-Internal"] == "proxy"
    assert "nope" in await missing.text()
    gw.provider.fake_functions.unavailable.add(("fn1", "openfaas-fn"))
    down = await gw.client.post(FN)
    assert down.status == 503
    assert down.headers["X-OpenFaaS-Internal"] == "proxy"
    assert gw.provider.fake_functions.released == []  # nothing resolved, nothing to release


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_closed_upstream_port_is_502(tmp_path: Path, front: bool) -> None:
    async with running_gateway(tmp_path, front=front) as gw:
        endpoint = Endpoint("127.0.0.1", _closed_port(), "gone")
        gw.deploy("fn1", endpoint=endpoint)
        resp = await gw.client.post(FN, data=b"x")
        assert resp.status == 502
        assert resp.headers["X-OpenFaaS-Internal"] == "proxy"
        assert gw.provider.fake_functions.released == [("fn1", "openfaas-fn", endpoint)]


async def test_upstream_reset_is_502(wd_gw: tuple[Watchdog, Gateway]) -> None:
    _, gw = wd_gw
    resp = await gw.client.post("/function/fn1/reset", data=b"x")
    assert resp.status == 502
    assert resp.headers["X-OpenFaaS-Internal"] == "proxy"
    assert len(gw.provider.fake_functions.released) == 1


async def test_reset_mid_response_truncates_instead_of_pretending(wd_gw: tuple[Watchdog, Gateway]) -> None:
    import aiohttp

    _, gw = wd_gw
    resp = await gw.client.get("/function/fn1/half")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert len(gw.provider.fake_functions.released) == 1


async def test_upstream_timeout_is_504(tmp_path: Path, front: bool) -> None:
    from faasd_py.config import Timeouts

    async with running_watchdog() as (wd, endpoint), running_gateway(
        tmp_path, front=front, timeouts=Timeouts(upstream=0.2)
    ) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        resp = await gw.client.get("/function/fn1/slow")
        assert resp.status == 504
        assert resp.headers["X-OpenFaaS-Internal"] == "proxy"
        wd.release_slow.set()
        assert len(gw.provider.fake_functions.released) == 1


async def test_release_runs_when_the_client_goes_away(wd_gw: tuple[Watchdog, Gateway]) -> None:
    wd, gw = wd_gw
    task = asyncio.ensure_future(gw.client.get("/function/fn1/slow"))
    for _ in range(200):
        if gw.provider.fake_functions.resolved:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()  # the client disconnects mid-call
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if gw.provider.fake_functions.released:
            break
        await asyncio.sleep(0.01)
    assert len(gw.provider.fake_functions.released) == 1
    wd.release_slow.set()


async def test_on_invocation_hook(tmp_path: Path, front: bool) -> None:
    calls: list[tuple[str, str, int, float]] = []
    async with running_watchdog() as (_, endpoint), running_gateway(
        tmp_path, front=front, on_invocation=lambda *a: calls.append(a)
    ) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        gw.deploy("down", endpoint=Endpoint("127.0.0.1", _closed_port(), "x"))
        await (await gw.client.get(FN)).read()
        await (await gw.client.get("/function/fn1/redirect", allow_redirects=False)).read()
        await (await gw.client.get("/function/down")).read()
    assert [(n, ns, s) for n, ns, s, _ in calls] == [
        ("fn1", "openfaas-fn", 200), ("fn1", "openfaas-fn", 302), ("down", "openfaas-fn", 502)]
    assert all(0 <= secs < 5 for *_, secs in calls)


async def test_keep_alive_pool_is_shared(wd_gw: tuple[Watchdog, Gateway]) -> None:
    """Many calls, few upstream connections: one pooled session, not one per request."""
    wd, gw = wd_gw
    for _ in range(20):
        resp = await gw.client.get(FN)
        await resp.read()
    # sequential calls all reuse the one pooled upstream connection
    assert len(wd.seen) == 20
    assert len({s["peer"] for s in wd.seen}) == 1
