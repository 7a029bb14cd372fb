"""/function/{name}[.{namespace}][/{path}]: the invocation hot path.

One shared pool of keep-alive connections (:mod:`faasd_py.gateway.upstream`) carries every call
to the watchdogs: request and response stream (never buffered whole, except small bodies that
fit in one write), hop-by-hop headers are dropped both ways, redirects and Content-Encoding
pass through untouched. Per request there is no logging at info level, no JSON, no regex
compile and no containerd call: the provider's ``resolve`` answers a warm function from memory.

Queued calls (:mod:`faasd_py.provider.queue`) take the same path through :meth:`InvokeProxy.invoke_queued`:
same resolve (a paused function resumes), same pool, same metrics hooks, the response read whole.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterable, Iterable

import aiohttp
from aiohttp import web

from faasd_py.config import Settings
from faasd_py.errors import NotFound, RequestTimeout, Unavailable
from faasd_py.gateway.body import next_chunk, read_exactly, send_and_close
from faasd_py.gateway.keys import InvocationHook, StartHook
from faasd_py.gateway.upstream import HOP_BY_HOP, Connection, Pool, Response, UpstreamError
from faasd_py.provider.contract import Endpoint, Functions
from faasd_py.provider.queue import InvocationResult, QueuedCall
from faasd_py.types import DEFAULT_NAMESPACE

log = logging.getLogger(__name__)

PREFIX_LEN = len("/function/")
# Request headers we never copy: Host is the watchdog's own, Expect was answered by our server,
# the framing is ours to choose, X-Start-Time is ours to set.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "expect", "content-length", "x-start-time"}
# Bodies up to this size are read at once and sent with the head in one write; larger ones stream.
SMALL_BODY = 64 * 1024
INTERNAL_HEADER = "X-OpenFaaS-Internal"
NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Methods that may be re-sent when a pooled connection turns out to be closed (RFC 9110 §9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class _BodyTooLarge(Exception):
    pass


class _CappedBody:
    """The request body as it arrives, cut at the limit; ``overflow`` says why sending stopped."""

    __slots__ = ("_content", "_limit", "_read_timeout", "_size", "overflow")

    def __init__(self, content: aiohttp.StreamReader, limit: int, read_timeout: float) -> None:
        self._content = content
        self._limit = limit
        self._read_timeout = read_timeout
        self._size = 0
        self.overflow = False

    def __aiter__(self) -> _CappedBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await next_chunk(self._content, self._read_timeout)
        if not chunk:
            raise StopAsyncIteration
        self._size += len(chunk)
        if self._size > self._limit:
            self.overflow = True
            raise _BodyTooLarge()
        return chunk


_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_call_id() -> str:
    """A random (version 4) UUID, formatted; a third of uuid.uuid4()'s cost. Unique, not secret."""
    h = "%032x" % ((random.getrandbits(128) & _VERSION_MASK) | _VERSION_BITS)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def split_function_name(raw: str) -> tuple[str, str]:
    """``fn.ns`` -> (fn, ns): the LAST dot splits, as in OpenFaaS; no dot means the default namespace."""
    name, dot, namespace = raw.rpartition(".")
    if not dot:
        return raw, DEFAULT_NAMESPACE
    return name, namespace or DEFAULT_NAMESPACE


def _internal_error(status: int, message: str) -> web.Response:
    """Errors the gateway itself produces, marked the way faas-provider marks them."""
    return web.Response(status=status, text=message, headers={INTERNAL_HEADER: "proxy"})


def _connection_tokens(value: str) -> frozenset[str]:
    """Extra hop-by-hop names a ``Connection`` header lists (RFC 9110 §7.6.1)."""
    return frozenset(t.strip().lower() for t in value.split(","))


class ProxyFailure(Exception):
    """An answer the gateway gives itself (no replica, unreachable, too slow), marked ``X-OpenFaaS-Internal``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def request_head(
    method: str, target: str, endpoint: Endpoint, headers: Iterable[tuple[str, str]], remote: str | None,
    host: str | None, call_id: str | None = None,
) -> tuple[list[str], str, str]:
    """The watchdog's request head without framing or the final blank line, as lines.

    Returns the lines, the call id the function sees (the client's own X-Call-Id wins) and the
    X-Start-Time it was given. Hop-by-hop headers, and those a ``Connection`` header lists, stay here.
    """
    kept: list[tuple[str, str, str]] = []
    listed: frozenset[str] = frozenset()  # names a Connection header lists: hop-by-hop too
    for k, v in headers:
        lower = k.lower()
        if lower == "connection":
            listed = listed | _connection_tokens(v)
        elif lower not in _NOT_FORWARDED:
            kept.append((k, v, lower))
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"]
    seen_call_id: str | None = None
    forwarded_for = forwarded_host = False
    for k, v, lower in kept:
        if lower in listed:
            continue
        lines.append(f"{k}: {v}\r\n")
        if lower == "x-call-id":
            if seen_call_id is None:
                seen_call_id = v
        elif lower == "x-forwarded-for":
            forwarded_for = True
        elif lower == "x-forwarded-host":
            forwarded_host = True
    if seen_call_id is None:
        seen_call_id = call_id or new_call_id()
        lines.append(f"X-Call-Id: {seen_call_id}\r\n")
    start_time = str(time.time_ns())
    lines.append(f"X-Start-Time: {start_time}\r\n")
    if not forwarded_for and remote:
        lines.append(f"X-Forwarded-For: {remote}\r\n")
    if not forwarded_host and host:
        lines.append(f"X-Forwarded-Host: {host}\r\n")
    return lines, seen_call_id, start_time


def reply_headers(
    upstream: list[tuple[str, str]], call_id: str, start_time: str, content_type: str | None
) -> list[tuple[str, str]]:
    """The watchdog's end-to-end headers plus ours where it set none (its own win, as in OpenFaaS)."""
    have_call_id = have_start = have_type = False
    for k, _ in upstream:
        lower = k.lower()
        if lower == "x-call-id":
            have_call_id = True
        elif lower == "x-start-time":
            have_start = True
        elif lower == "content-type":
            have_type = True
    if have_call_id and have_start and have_type:
        return upstream
    out = list(upstream)
    if not have_call_id:
        out.append(("X-Call-Id", call_id))
    if not have_start:
        out.append(("X-Start-Time", start_time))
    if not have_type:
        out.append(("Content-Type", content_type or "text/plain"))
    return out


class InvokeProxy:
    """The request handler for /function/*, holding the upstream connection pool."""

    __slots__ = ("_functions", "_max_body", "_max_queued_response", "_on_invocation", "_on_start", "_pool",
                 "_read_timeout", "_timeout")

    def __init__(self, functions: Functions, settings: Settings, on_invocation: InvocationHook | None = None,
                 on_start: StartHook | None = None) -> None:
        self._functions = functions
        self._max_body = settings.max_invoke_body
        self._max_queued_response = settings.queue.max_body
        self._timeout = settings.timeouts.upstream
        self._read_timeout = settings.timeouts.read
        self._on_invocation = on_invocation
        self._on_start = on_start
        self._pool = Pool(tick=min(1.0, self._timeout / 4))

    @property
    def pool(self) -> Pool:
        return self._pool

    async def close(self, app: web.Application) -> None:
        self._pool.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        name, namespace = split_function_name(request.match_info["name"])
        length = request.content_length
        if length is not None and length > self._max_body:
            return _internal_error(413, f"request body larger than {self._max_body} bytes")
        try:
            endpoint = await self.open(name, namespace)
        except ProxyFailure as exc:
            return _internal_error(exc.status, exc.message)
        status = 502
        try:
            response = await self._forward(request, endpoint, name, namespace)
            status = response.status
            return response
        finally:
            self.finish(name, namespace, endpoint, status, started)

    async def open(self, name: str, namespace: str) -> Endpoint:
        """The replica a call goes to (a paused function resumes); every call to it must :meth:`finish`."""
        try:
            endpoint = await self._functions.resolve(name, namespace)
        except NotFound as exc:
            raise ProxyFailure(404, exc.message) from None
        except Unavailable as exc:
            raise ProxyFailure(503, exc.message) from None
        if self._on_start is not None:
            self._on_start(name, namespace)
        return endpoint

    def finish(self, name: str, namespace: str, endpoint: Endpoint, status: int, started: float) -> None:
        self._functions.release(name, namespace, endpoint)
        if self._on_invocation is not None:
            self._on_invocation(name, namespace, status, time.perf_counter() - started)

    async def send(
        self, endpoint: Endpoint, key: str, method: str, head: bytes, body: bytes | AsyncIterable[bytes] | None,
        chunked: bool = False,
    ) -> tuple[Connection, Response]:
        """One exchange on a pooled connection, bounded by ``timeouts.upstream``; see :meth:`Pool.request`.

        A watchdog that does not answer in time is a 504, one that cannot be reached a 502
        (:class:`ProxyFailure`, ``key`` names the function). Errors of a streamed request body pass as raised.
        """
        try:
            return await self._pool.request(
                endpoint.host, endpoint.port, head, body, deadline=asyncio.get_running_loop().time() + self._timeout,
                chunked=chunked, head_only=method == "HEAD", retry_stale=method in _IDEMPOTENT,
            )
        except TimeoutError:
            raise ProxyFailure(504, f"timeout calling {key}") from None
        except UpstreamError as exc:
            log.debug("upstream %s failed: %s", key, exc)
            raise ProxyFailure(502, f"can't reach service for: {key}") from None

    async def _forward(
        self, request: web.Request, endpoint: Endpoint, name: str, namespace: str
    ) -> web.StreamResponse:
        method = request.method
        rel = request.rel_url
        path = rel.raw_path
        slash = path.find("/", PREFIX_LEN)
        target = path[slash:] if slash != -1 else "/"
        query = rel.raw_query_string
        if query:
            target = f"{target}?{query}"

        in_headers = request.headers
        lines, call_id, start_time = request_head(
            method, target, endpoint, in_headers.items(), request.remote, request.host)
        length = request.content_length
        body: bytes | _CappedBody | None = None
        capped: _CappedBody | None = None
        chunked = False
        if length == 0 or (length is None and not request.body_exists):
            if method not in NO_BODY_METHODS:
                lines.append("Content-Length: 0\r\n")
        elif length is not None and length <= SMALL_BODY:
            try:
                body = await read_exactly(request.content, length, self._read_timeout)
            except asyncio.IncompleteReadError:
                return _internal_error(400, "the request body ended before its Content-Length")
            except RequestTimeout as exc:
                return await send_and_close(request, _internal_error(exc.status, exc.message))
            lines.append(f"Content-Length: {length}\r\n")
        else:
            body = capped = _CappedBody(request.content, self._max_body, self._read_timeout)
            if length is None:
                chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                lines.append(f"Content-Length: {length}\r\n")
        lines.append("\r\n")
        # Header values come from aiohttp's parser (no CR/LF possible); surrogateescape restores raw bytes.
        head = "".join(lines).encode("utf-8", "surrogateescape")

        try:
            conn, upstream = await self.send(endpoint, f"{name}.{namespace}", method, head, body, chunked)
        except ProxyFailure as exc:
            if exc.status == 502 and capped is not None and capped.overflow:  # we cut the body off
                return _internal_error(413, f"request body larger than {self._max_body} bytes")
            return _internal_error(exc.status, exc.message)
        except RequestTimeout as exc:  # the client's streamed body stalled before the function answered
            return await send_and_close(request, _internal_error(exc.status, exc.message))
        except ConnectionError:  # reading the client's body failed: it is gone
            return _internal_error(400, "the client connection was lost while sending the body")
        except _BodyTooLarge:
            return _internal_error(413, f"request body larger than {self._max_body} bytes")

        try:
            complete = upstream.body_if_complete()
            headers = reply_headers(upstream.headers, call_id, start_time, in_headers.get("Content-Type"))
            if complete is not None:  # the common case: status, headers and body leave in one write
                return web.Response(body=complete, status=upstream.status, reason=upstream.reason, headers=headers)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            await response.prepare(request)
            try:
                while chunk := await upstream.read():
                    await response.write(chunk)
            except ConnectionError:
                return response  # the client left; aiohttp closes the connection quietly
            except (UpstreamError, TimeoutError) as exc:
                # The status is sent already: cut the connection so the client sees a truncated body.
                log.warning("upstream %s.%s failed mid-response: %s", name, namespace, exc or "timeout")
                response.force_close()
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            self._pool.release(conn)

    # --- queued (async) calls ----------------------------------------------------------------

    async def invoke_queued(self, call: QueuedCall) -> InvocationResult:
        """A stored async call, through the same resolve → pool → release path as /function/*.

        The response is read whole (up to the queue's ``max_body``): it becomes the callback's body.
        """
        started = time.perf_counter()
        name, namespace = call.name, call.namespace
        try:
            endpoint = await self.open(name, namespace)
        except ProxyFailure as exc:
            return _result(exc.status, exc.message, started)
        status = 502
        try:
            result = await self._exchange(call, endpoint, started)
            status = result.status
            return result
        finally:
            self.finish(name, namespace, endpoint, status, started)

    async def _exchange(self, call: QueuedCall, endpoint: Endpoint, started: float) -> InvocationResult:
        target = call.path or "/"
        if call.query:
            target = f"{target}?{call.query}"
        lines, _, _ = request_head(call.method, target, endpoint, call.headers, call.remote, call.host,
                                   call.call_id)
        if call.body or call.method not in NO_BODY_METHODS:
            lines.append(f"Content-Length: {len(call.body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        try:
            conn, upstream = await self.send(endpoint, call.key, call.method, head, call.body or None)
        except ProxyFailure as exc:
            return _result(exc.status, exc.message, started)
        try:
            body = upstream.body_if_complete()
            if body is None:
                parts: list[bytes] = []
                size = 0
                while chunk := await upstream.read():
                    size += len(chunk)
                    if size > self._max_queued_response:
                        conn.reusable = False
                        return _result(502, f"the response of {call.key} is larger than "
                                            f"{self._max_queued_response} bytes", started)
                    parts.append(chunk)
                body = b"".join(parts)
            return InvocationResult(upstream.status, upstream.headers, body, time.perf_counter() - started)
        except (UpstreamError, TimeoutError) as exc:
            log.debug("upstream %s failed mid-response: %s", call.key, exc or "timeout")
            return _result(502, f"the response of {call.key} broke off", started)
        finally:
            self._pool.release(conn)


def _result(status: int, message: str, started: float) -> InvocationResult:
    """An answer the gateway made itself, marked as such (like :func:`_internal_error`)."""
    return InvocationResult(status, [(INTERNAL_HEADER, "proxy"), ("Content-Type", "text/plain")],
                            message.encode(), time.perf_counter() - started)
