"""/function/{name}[.{namespace}][/{path}]: the invocation hot path.

One shared client session with a keep-alive pool carries every call to the watchdogs: the
request and the response are streamed (never buffered whole), hop-by-hop headers are dropped
both ways, redirects and Content-Encoding pass through untouched. Per request there is no
logging at info level, no JSON, no regex compile and no containerd call: the provider's
``resolve`` answers a warm function from memory.
"""

from __future__ import annotations

import logging
import time
import uuid

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from faasd_py.config import Settings
from faasd_py.errors import NotFound, Unavailable
from faasd_py.gateway.keys import InvocationHook
from faasd_py.provider.contract import Endpoint, Functions
from faasd_py.types import DEFAULT_NAMESPACE

log = logging.getLogger(__name__)

PREFIX_LEN = len("/function/")
# RFC 9110 §7.6.1 plus the legacy ones Go's ReverseProxy drops; Host is the upstream's own; Expect is
# answered by our server already. Lower case: compared against header.lower().
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "expect", "x-start-time"}
# Bodies up to this size are read at once (one write upstream); larger ones stream.
SMALL_BODY = 64 * 1024
INTERNAL_HEADER = "X-OpenFaaS-Internal"


class _BodyTooLarge(Exception):
    pass


class _CappedBody:
    """The request body as it arrives, cut at the limit; ``overflow`` survives aiohttp's error wrapping."""

    __slots__ = ("_content", "_limit", "_size", "overflow")

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self._size = 0
        self.overflow = False

    def __aiter__(self) -> _CappedBody:
        return self

    async def __anext__(self) -> bytes:
        chunk: bytes = await self._content.readany()
        if not chunk:
            raise StopAsyncIteration
        self._size += len(chunk)
        if self._size > self._limit:
            self.overflow = True
            raise _BodyTooLarge()
        return chunk


def split_function_name(raw: str) -> tuple[str, str]:
    """``fn.ns`` -> (fn, ns): the LAST dot splits, as in OpenFaaS; no dot means the default namespace."""
    name, dot, namespace = raw.rpartition(".")
    if not dot:
        return raw, DEFAULT_NAMESPACE
    return name, namespace or DEFAULT_NAMESPACE


def _internal_error(status: int, message: str) -> web.Response:
    """Errors the gateway itself produces, marked like faas-provider marks them."""
    return web.Response(status=status, text=message, headers={INTERNAL_HEADER: "proxy"})


def _connection_tokens(value: str | None) -> frozenset[str]:
    """Extra hop-by-hop names a ``Connection`` header lists (RFC 9110 §7.6.1)."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(","))


class InvokeProxy:
    """The request handler for /function/*, holding the pooled client session."""

    __slots__ = ("_functions", "_max_body", "_on_invocation", "_session", "_timeout")

    def __init__(self, functions: Functions, settings: Settings, on_invocation: InvocationHook | None = None) -> None:
        self._functions = functions
        self._max_body = settings.max_invoke_body
        self._timeout = settings.timeouts.upstream
        self._on_invocation = on_invocation
        self._session: aiohttp.ClientSession | None = None

    async def start(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30.0, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            trust_env=False,
            max_line_size=64 * 1024,
            max_field_size=64 * 1024,
        )

    async def close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        name, namespace = split_function_name(request.match_info["name"])
        length = request.content_length
        if length is not None and length > self._max_body:
            return _internal_error(413, f"request body larger than {self._max_body} bytes")
        try:
            endpoint = await self._functions.resolve(name, namespace)
        except NotFound as exc:
            return _internal_error(404, exc.message)
        except Unavailable as exc:
            return _internal_error(503, exc.message)
        status = 502
        try:
            response = await self._forward(request, endpoint, name, namespace)
            status = response.status
            return response
        finally:
            self._functions.release(name, namespace, endpoint)
            if self._on_invocation is not None:
                self._on_invocation(name, namespace, status, time.perf_counter() - started)

    async def _forward(
        self, request: web.Request, endpoint: Endpoint, name: str, namespace: str
    ) -> web.StreamResponse:
        session = self._session
        assert session is not None, "InvokeProxy.start() was not called"
        rel = request.rel_url
        path = rel.raw_path
        slash = path.find("/", PREFIX_LEN)
        tail = path[slash:] if slash != -1 else "/"
        query = rel.raw_query_string
        url = URL(
            f"http://{endpoint.host}:{endpoint.port}{tail}?{query}" if query
            else f"http://{endpoint.host}:{endpoint.port}{tail}",
            encoded=True,
        )

        in_headers = request.headers
        drop = _NOT_FORWARDED
        connection = in_headers.get("Connection")
        if connection:
            drop = drop | _connection_tokens(connection)
        headers = [(k, v) for k, v in in_headers.items() if k.lower() not in drop]
        call_id = in_headers.get("X-Call-Id")
        if call_id is None:
            call_id = str(uuid.uuid4())
            headers.append(("X-Call-Id", call_id))
        start_time = str(time.time_ns())
        headers.append(("X-Start-Time", start_time))
        if "X-Forwarded-For" not in in_headers:
            headers.append(("X-Forwarded-For", request.remote or ""))
        if "X-Forwarded-Host" not in in_headers:
            headers.append(("X-Forwarded-Host", request.host))

        length = request.content_length
        data: bytes | _CappedBody | None = None
        capped: _CappedBody | None = None
        if length == 0 or (length is None and not request.body_exists):
            pass
        elif length is not None and length <= SMALL_BODY:
            data = await request.content.readexactly(length)
        else:
            data = capped = _CappedBody(request.content, self._max_body)

        try:
            upstream = await session.request(request.method, url, headers=headers, data=data, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError, _BodyTooLarge) as exc:
            if capped is not None and capped.overflow:
                return _internal_error(413, f"request body larger than {self._max_body} bytes")
            if isinstance(exc, TimeoutError):
                return _internal_error(504, f"timeout calling {name}.{namespace}")
            log.debug("upstream %s.%s failed: %r", name, namespace, exc)
            return _internal_error(502, f"can't reach service for: {name}.{namespace}")

        try:
            out = CIMultiDict[str]()
            up_headers = upstream.headers
            drop = HOP_BY_HOP
            connection = up_headers.get("Connection")
            if connection:
                drop = drop | _connection_tokens(connection)
            for k, v in up_headers.items():
                if k.lower() not in drop:
                    out.add(k, v)
            if "X-Call-Id" not in out:
                out["X-Call-Id"] = call_id
            if "X-Start-Time" not in out:
                out["X-Start-Time"] = start_time
            if "Content-Type" not in out:
                out["Content-Type"] = in_headers.get("Content-Type") or "text/plain"
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except ConnectionError:
                return response  # the client left; aiohttp closes the connection quietly
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The status is sent already: cut the connection so the client sees a truncated body.
                log.warning("upstream %s.%s failed mid-response: %r", name, namespace, exc)
                response.force_close()
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            upstream.release()
