"""POST /async-function/{name}[.{namespace}][/{path}]: queue the call, answer 202 at once.

What the OpenFaaS gateway's queue proxy does, with these differences: the body limit is a setting
(16 MiB by default, not 256,000 bytes) and exceeding it is a 413, not a 500; an unknown function
is a 404 now rather than a callback with status 404 later; the 202 always carries ``X-Call-Id``
(the caller's own when it sent one); any method is accepted and replayed as it came (OpenFaaS
accepts only POST, and its worker always POSTs). The call runs later in the daemon's queue worker
(:mod:`faasd_py.provider.queue`), which POSTs the result to ``X-Callback-Url`` if one was given.
"""

from __future__ import annotations

import time
from typing import Protocol

from aiohttp import web
from yarl import URL

from faasd_py.errors import InvalidRequest, PayloadTooLarge
from faasd_py.gateway.body import next_chunk
from faasd_py.gateway.invoke import new_call_id, split_function_name
from faasd_py.provider.contract import Functions
from faasd_py.provider.queue import QueuedCall

PREFIX_LEN = len("/async-function/")


class Enqueuer(Protocol):
    async def enqueue(self, call: QueuedCall) -> None:
        """Store the call durably (Unavailable when the queue is down, PayloadTooLarge)."""


def parse_callback_url(value: str) -> str:
    """An absolute http(s) URL or a 400, now rather than a failing callback later."""
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"invalid X-Callback-Url {value!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest(f"invalid X-Callback-Url {value!r}: an absolute http:// or https:// URL is needed")
    return value


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await next_chunk(request.content, timeout):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class AsyncInvoke:
    """The request handler for /async-function/*."""

    __slots__ = ("_functions", "_max_body", "_queue", "_read_timeout")

    def __init__(self, functions: Functions, queue: Enqueuer, max_body: int, read_timeout: float) -> None:
        self._functions = functions
        self._queue = queue
        self._max_body = max_body
        self._read_timeout = read_timeout

    async def handle(self, request: web.Request) -> web.Response:
        raw_name = request.match_info["name"]
        name, namespace = split_function_name(raw_name)
        callback = request.headers.get("X-Callback-Url", "")
        if callback:
            parse_callback_url(callback)
        await self._functions.get(name, namespace)  # 404 unknown function, 400 unknown namespace
        body = await _read_body(request, self._max_body, self._read_timeout)

        headers = list(request.headers.items())
        call_id = request.headers.get("X-Call-Id") or ""
        if not call_id:
            call_id = new_call_id()
            headers.append(("X-Call-Id", call_id))
        rel = request.rel_url
        raw_path = rel.raw_path
        slash = raw_path.find("/", PREFIX_LEN)
        call = QueuedCall(
            function=raw_name, name=name, namespace=namespace, method=request.method,
            path=raw_path[slash:] if slash != -1 else "", query=rel.raw_query_string, headers=headers,
            body=body, call_id=call_id, callback_url=callback, remote=request.remote or "",
            host=request.host, enqueued_at=time.time(),
        )
        await self._queue.enqueue(call)
        return web.Response(status=202, headers={"X-Call-Id": call_id, "X-Start-Time": str(time.time_ns())})
