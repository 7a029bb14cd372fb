"""Reading request bodies from clients that may stall.

aiohttp waits for a body forever; a client that sends its headers and then a byte a minute would
hold a handler (and, for an invocation, a function's connection) indefinitely. The Go gateway cuts
such a client with its read_timeout; so do we, with a 408 the client can still read.
A body that has fully arrived (the common case) is read without arming a timer.
"""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader, web

from faasd_py.errors import RequestTimeout


def stalled(timeout: float) -> RequestTimeout:
    return RequestTimeout(f"the request body stopped arriving: nothing received for {timeout:g} s")


async def next_chunk(content: StreamReader, timeout: float) -> bytes:
    """The next piece of the body, b"" at its end."""
    if content.is_eof():
        return await content.readany()
    try:
        async with asyncio.timeout(timeout):
            return await content.readany()
    except TimeoutError:
        raise stalled(timeout) from None


async def read_exactly(content: StreamReader, size: int, timeout: float) -> bytes:
    """``size`` bytes (a small body with a Content-Length); IncompleteReadError if it ends early."""
    if content.is_eof():
        return await content.readexactly(size)
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = await next_chunk(content, timeout)
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(parts), size)
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def send_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response``, then close the connection at once. Returning it would not do: aiohttp
    lingers up to 10 s reading the unread rest of a body, which a stalled client never sends."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # after the buffered response has been written
    return response
