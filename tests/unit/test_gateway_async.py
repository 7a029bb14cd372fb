"""/async-function/* (gateway/async_invoke.py) over a fake queue, and InvokeProxy.invoke_queued,
the worker's way into the /function path, against a fake watchdog."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from faasd_py.errors import Unavailable
from faasd_py.gateway.app import INVOKE, build_app
from faasd_py.gateway.async_invoke import parse_callback_url
from faasd_py.gateway.auth import Credentials
from faasd_py.provider.contract import Endpoint
from faasd_py.provider.queue import QueuedCall, decode, encode
from faasd_py.types import FunctionDeployment
from tests.fakes import FakeProvider
from tests.unit.gateway_support import make_settings, running_watchdog


class FakeQueue:
    def __init__(self) -> None:
        self.calls: list[QueuedCall] = []
        self.down = False

    async def enqueue(self, call: QueuedCall) -> None:
        if self.down:
            raise Unavailable("async invocations are unavailable: not connected to NATS at nats://x")
        self.calls.append(call)


@asynccontextmanager
async def gateway(tmp_path: Path, queue: FakeQueue | None, **hooks: object) -> AsyncIterator[
        tuple[TestClient[web.Request, web.Application], FakeProvider]]:
    settings = make_settings(tmp_path)
    settings.queue.max_body = 1000
    provider = FakeProvider()
    provider.fake_functions.add(FunctionDeployment(service="fn", image="img", namespace="openfaas-fn"))
    app = build_app(provider, settings, Credentials.load(settings), queue=queue, **hooks)  # type: ignore[arg-type]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, provider
    finally:
        await client.close()


async def test_202_with_call_id_and_everything_stored(tmp_path: Path) -> None:
    queue = FakeQueue()
    async with gateway(tmp_path, queue) as (client, _):
        target = URL("/async-function/fn.openfaas-fn/a/b%20c?x=1&y=%2F", encoded=True)  # sent as written
        resp = await client.put(target, data=b"payload",
                                headers={"X-Callback-Url": "http://127.0.0.1:9999/cb?k=v", "X-Custom": "yes",
                                         "Content-Type": "text/plain"})
        assert resp.status == 202, await resp.text()
        assert await resp.read() == b""
        call_id = resp.headers["X-Call-Id"]
        assert len(call_id) == 36 and resp.headers["X-Start-Time"].isdigit()
    [call] = queue.calls
    assert (call.function, call.name, call.namespace) == ("fn.openfaas-fn", "fn", "openfaas-fn")
    assert (call.method, call.path, call.query) == ("PUT", "/a/b%20c", "x=1&y=%2F")
    assert call.body == b"payload"
    assert call.callback_url == "http://127.0.0.1:9999/cb?k=v"
    assert call.call_id == call_id
    headers = dict(call.headers)
    assert headers["X-Custom"] == "yes" and headers["X-Call-Id"] == call_id
    assert call.remote == "127.0.0.1"


async def test_the_caller_s_call_id_is_kept_and_paths_without_rest(tmp_path: Path) -> None:
    queue = FakeQueue()
    async with gateway(tmp_path, queue) as (client, _):
        resp = await client.post("/async-function/fn", data=b"", headers={"X-Call-Id": "mine"})
        assert resp.status == 202 and resp.headers["X-Call-Id"] == "mine"
        resp = await client.post("/async-function/fn/")
        assert resp.status == 202
    first = queue.calls[0]
    assert (first.call_id, first.path, first.namespace) == ("mine", "", "openfaas-fn")
    assert queue.calls[1].path == "/"
    assert [v for k, v in queue.calls[0].headers if k.lower() == "x-call-id"] == ["mine"]


@pytest.mark.parametrize("url", ["not a url", "/relative/path", "ftp://host/x", "http://", "http://[::1"])
async def test_bad_callback_url_is_400_and_nothing_queued(tmp_path: Path, url: str) -> None:
    queue = FakeQueue()
    async with gateway(tmp_path, queue) as (client, _):
        resp = await client.post("/async-function/fn", data=b"x", headers={"X-Callback-Url": url})
        assert resp.status == 400
        assert "X-Callback-Url" in await resp.text()
    assert queue.calls == []


def test_parse_callback_url_accepts_http_and_https() -> None:
    for url in ("http://127.0.0.1:8000/cb", "https://example.invalid/x?y=1", "http://[::1]:80/"):
        assert parse_callback_url(url) == url


async def test_unknown_function_404_body_too_large_413_queue_down_503(tmp_path: Path) -> None:
    queue = FakeQueue()
    async with gateway(tmp_path, queue) as (client, _):
        resp = await client.post("/async-function/nope", data=b"x")
        assert resp.status == 404
        resp = await client.post("/async-function/fn", data=b"x" * 1001)
        assert resp.status == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"y" * 400

        resp = await client.post("/async-function/fn", data=chunks())  # chunked, no Content-Length
        assert resp.status == 413
        queue.down = True
        resp = await client.post("/async-function/fn", data=b"x")
        assert resp.status == 503
        assert "NATS" in await resp.text()
    assert queue.calls == []


async def test_without_a_queue_there_are_no_async_routes(tmp_path: Path) -> None:
    async with gateway(tmp_path, None) as (client, _):
        resp = await client.post("/async-function/fn", data=b"x")
        assert resp.status == 404


async def test_async_routes_need_no_credentials(tmp_path: Path) -> None:
    queue = FakeQueue()
    async with gateway(tmp_path, queue) as (client, _):
        resp = await client.post("/async-function/fn", data=b"x", headers={"Authorization": "Basic bm9wZTpub3Bl"})
        assert resp.status == 202


def test_message_encoding_round_trips_odd_headers_and_binary_bodies() -> None:
    body = bytes(range(256)) + b"\n\n{"
    call = QueuedCall(function="f.ns", name="f", namespace="ns", method="POST", path="/p", query="q=1",
                      headers=[("X-Odd", "caf\udce9"), ("X-Two", "a"), ("X-Two", "b")], body=body,
                      call_id="id", callback_url="http://h/", remote="1.2.3.4", host="h:1", enqueued_at=12.5)
    back, obj = decode(encode(call))
    assert back == call and obj == ""
    back, obj = decode(encode(call, body_object="o1"))
    assert back.body == b"" and obj == "o1"
    for junk in (b"no newline", b"{}\n", b'{"v": 99}\nx', b"[1]\n"):
        with pytest.raises(ValueError):
            decode(junk)


# --- the worker's invoke path ------------------------------------------------------------------


async def test_invoke_queued_takes_the_function_path_with_metrics_hooks(tmp_path: Path) -> None:
    started: list[tuple[str, str]] = []
    finished: list[tuple[str, str, int]] = []
    async with running_watchdog() as (_, endpoint), gateway(
        tmp_path, FakeQueue(), on_start=lambda n, ns: started.append((n, ns)),
        on_invocation=lambda n, ns, s, secs: finished.append((n, ns, s)),
    ) as (client, provider):
        provider.fake_functions.endpoints[("fn", "openfaas-fn")] = endpoint
        proxy = client.app[INVOKE]
        call = QueuedCall(function="fn", name="fn", namespace="openfaas-fn", method="PATCH", path="/x/y%20z",
                          query="a=1", headers=[("X-Custom", "v"), ("Connection", "close, X-Gone"),
                                                ("X-Gone", "hop"), ("Content-Length", "999")],
                          body=b"the body", call_id="cid-1", remote="10.0.0.9", host="gw:8080")
        result = await proxy.invoke_queued(call)
        assert result.status == 200 and result.seconds > 0
        seen = json.loads(result.body)
        assert (seen["method"], seen["path"], seen["body"]) == ("PATCH", "/x/y%20z?a=1", "the body")
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["x-custom"] == "v" and headers["x-call-id"] == "cid-1"
        assert headers["x-forwarded-for"] == "10.0.0.9" and headers["x-forwarded-host"] == "gw:8080"
        assert headers["content-length"] == "8" and "x-gone" not in headers and "connection" not in headers
        assert ("X-Watchdog", "yes") in result.headers
        assert provider.fake_functions.released[-1][:2] == ("fn", "openfaas-fn")

        # gateway-made answers: unknown function, no replica, unreachable replica
        gone = await proxy.invoke_queued(QueuedCall("nope", "nope", "openfaas-fn", "POST", "", "", [], b"", "c"))
        assert gone.status == 404
        provider.fake_functions.unavailable.add(("fn", "openfaas-fn"))
        assert (await proxy.invoke_queued(call)).status == 503
        provider.fake_functions.unavailable.clear()
        provider.fake_functions.endpoints[("fn", "openfaas-fn")] = Endpoint("127.0.0.1", 9, "x")
        down = await proxy.invoke_queued(call)
        assert down.status == 502 and ("X-OpenFaaS-Internal", "proxy") in down.headers
        provider.fake_functions.endpoints[("fn", "openfaas-fn")] = endpoint
        assert (await client.get("/function/fn")).status == 200  # the sync path calls the same hooks
    assert started == [("fn", "openfaas-fn")] * 3
    assert finished == [("fn", "openfaas-fn", 200), ("fn", "openfaas-fn", 502), ("fn", "openfaas-fn", 200)]


async def test_invoke_queued_caps_the_response_it_buffers(tmp_path: Path) -> None:
    async with running_watchdog() as (_, endpoint), gateway(tmp_path, FakeQueue()) as (client, provider):
        provider.fake_functions.endpoints[("fn", "openfaas-fn")] = endpoint
        proxy = client.app[INVOKE]
        ok = await proxy.invoke_queued(QueuedCall("fn", "fn", "openfaas-fn", "GET", "/source/1000", "", [], b"", "c"))
        assert ok.status == 200 and ok.body == b"x" * 1000
        big = await proxy.invoke_queued(QueuedCall("fn", "fn", "openfaas-fn", "GET", "/source/200000", "", [],
                                                   b"", "c"))
        assert big.status == 502 and b"larger than 1000 bytes" in big.body
