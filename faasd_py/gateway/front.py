"""The gateway port's own connection protocol: plain /function/ calls without aiohttp's request machinery.

Per call, aiohttp's server spends more CPU around a handler (request, router, middleware and
response objects) than the proxy spends in it: a quarter to a half of the daemon's CPU per call,
measured side by side (docs/benchmarks.md, "The front protocol"). :class:`FrontConnection` serves the common case
itself: HTTP/1.1, a ``/function/`` target, no body or a small one with a Content-Length, nothing
to negotiate (no Expect, Upgrade or Transfer-Encoding). It goes through the same
:class:`InvokeProxy` (resolve, pool, metrics hooks, header rules) as aiohttp's route.

Every other request (another route, a large or chunked body, or anything this strict parser
does not accept) hands the connection to aiohttp together with every byte received so far, so
aiohttp parses it from the first byte as if it had owned the connection all along. Unusual
requests keep aiohttp's full behaviour and error answers, and this parser never has to decide
what a malformed request means.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from faasd_py.gateway.body import stalled
from faasd_py.gateway.invoke import (
    INTERNAL_HEADER,
    NO_BODY_METHODS,
    SMALL_BODY,
    InvokeProxy,
    ProxyFailure,
    reply_headers,
    request_head,
    split_function_name,
)
from faasd_py.gateway.upstream import Response, UpstreamError, lower_name
from faasd_py.provider.contract import Endpoint

log = logging.getLogger(__name__)

MAX_HEAD = 8190  # aiohttp's own line limit; a longer head is aiohttp's to judge
MAX_HEADER_LINES = 100
PIPELINE_LIMIT = 256 * 1024  # bytes buffered behind a call in progress before reading pauses

# The request line this path serves; the name segment is what the aiohttp route accepts.
_REQUEST_LINE = re.compile(
    r"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /function/([-a-zA-Z_0-9.]+)((?:[/?][!-~]*)?) HTTP/1\.1"
)
# Control characters other than HTAB, and CR or LF outside a CRLF pair (bare LF is a smuggling vector).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
# Headers that need negotiation or change the framing: aiohttp's to handle.
_HANDED_OVER = frozenset({"transfer-encoding", "upgrade", "expect", "http2-settings"})
_LOOKED_AT = _HANDED_OVER | {"content-length", "host", "connection", "content-type"}


@dataclass(slots=True)
class Call:
    """One parsed request head."""

    method: str
    name: str  # the route's name segment: fn or fn.namespace
    target: str  # what the watchdog is asked for: the rest of the path and the query
    headers: list[tuple[str, str]]
    host: str
    length: int
    close: bool
    content_type: str | None


def parse_head(head: str, max_body: int) -> Call | None:
    """The head (without its blank line) as a :class:`Call`, or None when aiohttp should have it."""
    if _BAD_CHARS.search(head) is not None:
        return None
    lines = head.split("\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None or len(lines) > MAX_HEADER_LINES + 1:
        return None
    method, name, rest = m.groups()
    path, _, query = rest.partition("?")
    if "#" in rest or "/." in path:  # fragments and dot segments: aiohttp normalises those its own way
        return None
    target = path or "/"
    if query:
        target = f"{target}?{query}"
    headers: list[tuple[str, str]] = []
    host: str | None = None
    length: int | None = None
    close = False
    content_type: str | None = None
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        lower = lower_name(key)
        if lower is None or not sep:
            return None
        value = value.strip(" \t")
        if lower in _LOOKED_AT:
            if lower in _HANDED_OVER:
                return None
            if lower == "content-length":
                if length is not None or not (value.isdigit() and value.isascii()):
                    return None
                length = int(value)
            elif lower == "host":
                if host is not None:
                    return None
                host = value
            elif lower == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                if "upgrade" in tokens:
                    return None
                close = close or "close" in tokens
            elif content_type is None:
                content_type = value
        headers.append((key, value))
    if host is None or (length is not None and length > min(SMALL_BODY, max_body)):
        return None
    return Call(method, name, target, headers, host, length or 0, close, content_type)


class _HttpDate:
    """The Date header, formatted once a second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


_date = _HttpDate()


def _reason(status: int, reason: str) -> str:
    if reason:
        return reason
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class Front:
    """The protocol factory for the gateway's listening sockets, and what all its connections share.

    One clock enforces ``timeouts.read`` on every connection (idle keep-alive, a head or body
    that stopped arriving) instead of a timer per request.
    """

    def __init__(self, proxy: InvokeProxy, read_timeout: float, max_body: int) -> None:
        self.proxy = proxy
        self.read_timeout = read_timeout
        self.max_body = max_body
        # aiohttp's protocol factory (runner.server), set once its runner is set up
        self.handler_factory: Callable[[], asyncio.Protocol] | None = None
        self.closing = False
        self.connections: set[FrontConnection] = set()
        self.served = 0  # calls answered here, and connections given to aiohttp: for tests and diagnosis
        self.handed_over = 0
        self._ticker: asyncio.Task[None] | None = None

    def __call__(self) -> FrontConnection:
        if self._ticker is None and not self.closing:
            self._ticker = asyncio.ensure_future(self._tick())
        return FrontConnection(self)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.read_timeout / 4))
            limit = loop.time() - self.read_timeout
            for conn in [c for c in self.connections if c.task is None and c.last < limit]:
                conn.expire()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; calls in progress get ``grace`` seconds, then are cancelled."""
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        busy: list[asyncio.Task[None]] = []
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
            else:
                busy.append(conn.task)
        if busy:
            _, pending = await asyncio.wait(busy, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self.connections):
            conn.close()


class FrontConnection(asyncio.Protocol):
    """One client connection, until a request needs aiohttp; then aiohttp owns it for good."""

    __slots__ = ("_buf", "_call", "_drain", "_front", "_keep", "_loop", "_paused", "_remote", "_sent_head",
                 "_transport", "last", "task")

    def __init__(self, front: Front) -> None:
        self._front = front
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._call: Call | None = None  # a head whose body is still arriving
        self._remote: str | None = None
        self._keep = True
        self._paused = False
        self._sent_head = False
        self._drain: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.last = self._loop.time()  # when the client last sent something, or a call ended

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._front.closing:
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # as aiohttp's tcp_keepalive
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, (tuple, list)) else None
        self._front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.connections.discard(self)
        task = self.task
        if task is not None and not task.done():
            task.cancel()  # the client left: abort the upstream call, as aiohttp's handler_cancellation does
        drain = self._drain
        if drain is not None and not drain.done():
            drain.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self.last = self._loop.time()
        if self.task is None:
            self._next()
        elif len(self._buf) > PIPELINE_LIMIT and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- requests ------------------------------------------------------------------------------

    def _next(self) -> None:
        buf = self._buf
        call = self._call
        if call is None:
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._hand_over()
                return
            if self._front.closing:
                self.close()
                return
            call = parse_head(buf[:end].decode("utf-8", "surrogateescape"), self._front.max_body)
            if call is None:
                self._hand_over()
                return
            del buf[: end + 4]
            self._call = call
        if len(buf) < call.length:
            return  # the body is still arriving; the front's clock bounds each pause
        body = bytes(buf[: call.length])
        del buf[: call.length]
        self._call = None
        self._keep = not call.close
        self._sent_head = False
        self._front.served += 1
        self.task = asyncio.ensure_future(self._serve(call, body))

    def _hand_over(self) -> None:
        factory = self._front.handler_factory
        transport = self._transport
        if factory is None or transport is None or transport.is_closing():
            self.close()
            return
        self._front.connections.discard(self)
        self._front.handed_over += 1
        handler = factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            handler.data_received(data)

    async def _serve(self, call: Call, body: bytes) -> None:
        proxy = self._front.proxy
        started = time.perf_counter()
        name, namespace = split_function_name(call.name)
        try:
            try:
                endpoint = await proxy.open(name, namespace)
            except ProxyFailure as exc:
                self._fail(exc.status, exc.message)
                return
            status = 502
            try:
                status = await self._relay(call, body, endpoint, f"{name}.{namespace}")
            finally:
                proxy.finish(name, namespace, endpoint, status, started)
            drain = self._drain
            if drain is not None:
                await drain  # a client that does not read its answers gets no more of them (pipelining)
        except Exception:
            log.exception("%s /function/%s failed", call.method, call.name)
            self._keep = False
            if not self._sent_head:
                self._fail(500, "internal server error")
        finally:
            self.task = None
            self._call_ended()

    async def _relay(self, call: Call, body: bytes, endpoint: Endpoint, key: str) -> int:
        proxy = self._front.proxy
        lines, call_id, start_time = request_head(
            call.method, call.target, endpoint, call.headers, self._remote, call.host)
        if call.length:
            lines.append(f"Content-Length: {call.length}\r\n")
        elif call.method not in NO_BODY_METHODS:
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        try:
            conn, upstream = await proxy.send(endpoint, key, call.method, head, body or None)
        except ProxyFailure as exc:
            self._fail(exc.status, exc.message)
            return exc.status
        try:
            headers = reply_headers(upstream.headers, call_id, start_time, call.content_type)
            complete = upstream.body_if_complete()
            if complete is not None:  # the common case: one write
                self._respond(upstream.status, upstream.reason, headers, complete, call.method == "HEAD")
                return upstream.status
            await self._stream(upstream, headers, key)
            return upstream.status
        finally:
            proxy.pool.release(conn)

    async def _stream(self, upstream: Response, headers: list[tuple[str, str]], key: str) -> None:
        """A response whose body is still arriving: relayed with the watchdog's length, or chunked."""
        transport = self._transport
        assert transport is not None
        chunked = not any(k.lower() == "content-length" for k, _ in headers)
        self._write_head(upstream.status, upstream.reason,
                         [*headers, ("Transfer-Encoding", "chunked")] if chunked else headers)
        try:
            while chunk := await upstream.read():
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                drain = self._drain
                if drain is not None:
                    await drain
        except (UpstreamError, TimeoutError) as exc:
            # The status is sent already: cut the connection so the client sees a truncated body.
            log.warning("upstream %s failed mid-response: %s", key, exc or "timeout")
            self._keep = False
            transport.close()
            return
        if chunked:
            transport.write(b"0\r\n\r\n")

    def _respond(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
                 head_only: bool = False) -> None:
        """A whole response in one write; its Content-Length is ours unless the request was HEAD."""
        if status < 200 or status in (204, 304):
            out = [(k, v) for k, v in headers if k.lower() != "content-length"]
            body = b""
        elif head_only:
            out = headers
            body = b""
        else:
            out = [(k, v) for k, v in headers if k.lower() != "content-length"]
            out.append(("Content-Length", str(len(body))))
        self._write_head(status, reason, out, body)

    def _write_head(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        parts = [f"HTTP/1.1 {status} {_reason(status, reason)}\r\n"]
        for k, v in headers:
            parts.append(f"{k}: {v}\r\n")
        parts.append(f"Date: {_date()}\r\n")
        if not self._keep or self._front.closing:
            self._keep = False
            parts.append("Connection: close\r\n")
        parts.append("\r\n")
        head = "".join(parts).encode("utf-8", "surrogateescape")
        transport.write(head + body if body else head)
        self._sent_head = True

    def _fail(self, status: int, message: str) -> None:
        """An answer the gateway gives itself, marked the way faas-provider marks them."""
        self._respond(status, "", [(INTERNAL_HEADER, "proxy"), ("Content-Type", "text/plain; charset=utf-8")],
                      message.encode())

    def _call_ended(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self._keep or self._front.closing:
            transport.close()
            return
        self.last = self._loop.time()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._buf:
            self._next()

    def expire(self) -> None:
        """``timeouts.read`` passed without a byte: a stalled body gets a 408, anything else just closes."""
        if self._call is not None:
            self._keep = False
            self._fail(408, stalled(self._front.read_timeout).message)
        self.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
