"""A small HTTP/1.1 client for the invocation hot path: pooled keep-alive connections to watchdogs.

aiohttp's client spent about 100 µs of CPU per proxied call here (request objects, tracing hooks,
cookie and redirect machinery we switch off anyway), twice what the aiohttp server side costs.
The watchdogs are our own containers speaking plain HTTP/1.1 on a private bridge, so a
Protocol with a strict little parser is enough: the request head and a small body go out in one
write, a small response arrives whole in one ``data_received`` and is handed back as bytes.
Larger bodies stream both ways with flow control (pause_reading / drain), never buffered whole.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterable
from typing import cast

# RFC 9110 §7.6.1 plus the legacy names Go's ReverseProxy drops; lower case. Responses come back without them.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)
MAX_HEAD = 64 * 1024  # status line + headers of one response
MAX_CHUNK_LINE = 4096
HIGH_WATER = 256 * 1024  # buffered response bytes before we stop reading from the watchdog
LOW_WATER = 64 * 1024

_NEVER = float("inf")
# parser states
_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_EOF, _DONE = range(6)
# chunked sub-states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class UpstreamError(Exception):
    """The exchange with the watchdog failed (the gateway answers 502)."""


class ConnectError(UpstreamError):
    """Nothing listens there (any more)."""


class ProtocolError(UpstreamError):
    """The watchdog broke the connection or answered something that is not HTTP/1.1."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The exchange outlived its deadline (the gateway answers 504)."""


class _StaleConnection(ProtocolError):
    """A pooled connection was closed by the peer before any response byte: safe to retry once."""


class Response:
    """Status and headers of an upstream response; the body is read with :meth:`read`."""

    __slots__ = ("_conn", "headers", "reason", "status")

    def __init__(self, conn: Connection, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers

    def body_if_complete(self) -> bytes | None:
        """The whole body when it is already here (the common small-response case), else None."""
        conn = self._conn
        if conn._state != _DONE or conn._exc is not None:
            return None
        data = b"".join(conn._chunks)
        conn._chunks.clear()
        conn._buffered = 0
        return data

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises ProtocolError if the watchdog breaks off."""
        return await self._conn._read()


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    __slots__ = (
        "_body_exc", "_buf", "_buffered", "_chunk_left", "_chunk_state", "_chunks", "_drain", "_exc", "_head_only",
        "_head_waiter", "_key", "_left", "_paused", "_pool", "_read_waiter", "_received", "_response", "_sender",
        "_state", "closed", "deadline", "idle_since", "reusable", "reused", "transport",
    )

    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
        self._pool = pool
        self._key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.reused = False
        self.idle_since = 0.0
        self.deadline = _NEVER  # loop.time() by which the current exchange must end
        self._state = _IDLE
        self._buf = bytearray()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._left = 0
        self._chunk_state = _SIZE
        self._chunk_left = 0
        self._head_only = False
        self._received = False
        self._exc: BaseException | None = None
        self._body_exc: BaseException | None = None
        self._head_waiter: asyncio.Future[Response] | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._response: Response | None = None
        self._paused = False
        self._sender: asyncio.Task[None] | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._state == _UNTIL_EOF:
            self._finish()
        elif self._state in (_HEAD, _LENGTH, _CHUNKED):
            if self._state == _HEAD and not self._received and self.reused:
                self._fail(_StaleConnection("pooled connection closed by the watchdog"))
            else:
                self._fail(ProtocolError(f"connection lost: {exc or 'closed by the watchdog'}"))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ProtocolError("connection lost while sending the body"))
        self._pool._forget(self)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._received = True
        state = self._state
        if state == _LENGTH:
            self._feed_length(data)
        elif state == _CHUNKED:
            self._buf += data
            self._feed_chunked()
        elif state == _HEAD:
            self._buf += data
            self._parse_head()
        elif state == _UNTIL_EOF:
            self._push(data)
        else:  # bytes nobody asked for: the connection is no longer in a known state
            self.reusable = False
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    # --- parsing -------------------------------------------------------------------------------

    def _parse_head(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if len(buf) > MAX_HEAD:
                self._protocol_error("response head too large")
            return
        head = bytes(buf[:end])
        del buf[: end + 4]
        try:
            status, reason, headers, length, chunked, keep_alive = _parse_head(head)
        except ValueError as exc:
            self._protocol_error(f"bad response from the watchdog: {exc}")
            return
        if 100 <= status < 200:
            if status == 101:
                self._protocol_error("the watchdog switched protocols, which the gateway does not proxy")
                return
            self._parse_head()  # 100 Continue, 103 Early Hints: wait for the final response
            return
        if not keep_alive:
            self.reusable = False
        response = Response(self, status, reason, headers)
        self._response = response
        rest = bytes(buf)
        buf.clear()
        if self._head_only or status in (204, 304):
            self._state = _DONE
            if rest:
                self.reusable = False
        elif chunked:
            self._state = _CHUNKED
            self._chunk_state = _SIZE
        elif length is not None:
            self._state = _LENGTH
            self._left = length
            if length == 0:
                self._state = _DONE
        else:
            self._state = _UNTIL_EOF
            self.reusable = False
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self._state == _DONE:
            self._finish()
        elif rest:
            if self._state == _LENGTH:
                self._feed_length(rest)
            elif self._state == _CHUNKED:
                self._buf += rest
                self._feed_chunked()
            else:
                self._push(rest)

    def _feed_length(self, data: bytes) -> None:
        left = self._left
        if len(data) < left:
            self._left = left - len(data)
            self._push(data)
            return
        if len(data) > left:
            self.reusable = False  # more than announced
            data = data[:left]
        self._left = 0
        if data:
            self._push(data)
        self._finish()

    def _feed_chunked(self) -> None:
        buf = self._buf
        while True:
            st = self._chunk_state
            if st == _DATA:
                if not buf:
                    return
                take = min(len(buf), self._chunk_left)
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._chunk_left -= take
                if self._chunk_left:
                    return
                self._chunk_state = _DATA_END
            elif st == _DATA_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    self._protocol_error("bad chunk terminator")
                    return
                del buf[:2]
                self._chunk_state = _SIZE
            else:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        self._protocol_error("chunk header too long")
                    return
                line = bytes(buf[:i])
                del buf[: i + 2]
                if st == _TRAILER:
                    if not line:  # end of trailers: the message is complete
                        if buf:
                            self.reusable = False
                        self._finish()
                        return
                    continue  # trailers are hop-by-hop for us: dropped
                size_text = line.split(b";", 1)[0].strip()
                try:
                    if not size_text or size_text.startswith((b"-", b"+", b"0x", b"0X")):
                        raise ValueError(size_text)
                    size = int(size_text, 16)
                except ValueError:
                    self._protocol_error("bad chunk size")
                    return
                if size == 0:
                    self._chunk_state = _TRAILER
                else:
                    self._chunk_state = _DATA
                    self._chunk_left = size

    def _push(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        self._state = _DONE
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._exc = exc
        self._state = _DONE
        self.reusable = False
        for waiter in (self._head_waiter, self._read_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

    def _protocol_error(self, message: str) -> None:
        self._fail(ProtocolError(message))
        self.close()

    # --- used by Pool and Response -------------------------------------------------------------

    def start(self, head: bytes, body: bytes | AsyncIterable[bytes] | None, chunked: bool, head_only: bool) -> None:
        assert self.transport is not None
        self._state = _HEAD
        self._head_only = head_only
        self._received = False
        self._exc = self._body_exc = None
        self._response = None
        self._head_waiter = None
        self._read_waiter = None
        if body is None:
            self.transport.write(head)
        elif isinstance(body, bytes):
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self._sender = asyncio.ensure_future(self._send_body(body, chunked))

    async def _send_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if self.closed:
                    raise ProtocolError("connection lost while sending the body")
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                drain = self._drain
                if drain is not None and not drain.done():
                    await drain
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            self.reusable = False
            raise
        except Exception as exc:  # incl. errors from the client side's body (size cap, disconnect)
            self._body_exc = exc
            self.reusable = False
            if self._state == _HEAD:
                self._fail(exc)
            self.close()

    async def wait_head(self) -> Response:
        if self._exc is not None:
            raise self._exc
        if self._response is not None:
            return self._response
        self._head_waiter = asyncio.get_running_loop().create_future()
        return await self._head_waiter

    async def _read(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft()
                self._buffered -= len(data)
                if self._paused and self._buffered < LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self._exc is not None:
                raise self._exc
            if self._state == _DONE:
                return b""
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None

    def finished_cleanly(self) -> bool:
        sender = self._sender
        return (
            self._state == _DONE and self._exc is None and not self._chunks
            and (sender is None or (sender.done() and self._body_exc is None))
        )

    def close(self) -> None:
        """Close after a clean exchange; abort (drop unsent bytes, RST) in the middle of one."""
        self.reusable = False
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()
        if self.transport is not None and not self.closed:
            if self._state in (_IDLE, _DONE) and self._exc is None:
                self.transport.close()
            else:
                self.transport.abort()


class Pool:
    """Idle keep-alive connections per (host, port), most recently used first.

    Deadlines are enforced by one ticker that fails overdue exchanges, instead of a timer per
    request: a coarse clock (a quarter of the timeout, at most 1 s) is plenty for timeouts of
    minutes, and it keeps two heap operations off every call.
    """

    __slots__ = ("_all", "_idle", "_idle_timeout", "_last_sweep", "_max_idle", "_tick", "_ticker")

    def __init__(self, *, tick: float = 1.0, idle_timeout: float = 5.0, max_idle_per_host: int = 256) -> None:
        # 5 s, like faas-provider's IdleConnTimeout: under the watchdogs' own idle timeouts.
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle_per_host
        self._tick = tick
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._last_sweep = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None

    async def request(
        self,
        host: str,
        port: int,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        *,
        deadline: float = _NEVER,
        chunked: bool = False,
        head_only: bool = False,
        retry_stale: bool = True,
    ) -> tuple[Connection, Response]:
        """Send one request; returns once the response head is in. Call :meth:`release` afterwards.

        ``deadline`` (``loop.time()`` based) bounds the whole exchange, body included: past it the
        head or body read raises :class:`UpstreamTimeout`.
        """
        if self._ticker is None and deadline != _NEVER:
            self._ticker = asyncio.ensure_future(self._tick_loop())
        key = (host, port)
        conn = self._acquire(key)
        # a connection closed before any response byte: once more on a new one, if the body can be re-sent
        retry = retry_stale and (body is None or isinstance(body, bytes))
        while True:
            if conn is None:
                conn = await self._connect(key, deadline)
            conn.deadline = deadline
            conn.start(head, body, chunked, head_only)
            try:
                return conn, await conn.wait_head()
            except _StaleConnection:
                conn.close()
                if not retry:
                    raise
                retry, conn = False, None
            except BaseException:
                conn.close()
                raise

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            for conn in [c for c in self._all if c.deadline < now]:
                conn._fail(UpstreamTimeout("the watchdog did not answer in time"))
                conn.close()

    def release(self, conn: Connection) -> None:
        """Back to the pool if the exchange ended cleanly, else closed."""
        if not conn.reusable or conn.closed or not conn.finished_cleanly():
            conn.close()
            return
        conn._sender = None
        conn.deadline = _NEVER
        conn._state = _IDLE
        conn._response = None
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle.setdefault(conn._key, [])
        if len(idle) >= self._max_idle:
            conn.close()
            return
        idle.append(conn)
        if now - self._last_sweep > self._idle_timeout:
            self._sweep(now)

    def _acquire(self, key: tuple[str, int]) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        deadline = time.monotonic() - self._idle_timeout
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < deadline:  # the rest are older still
                conn.close()
                for old in idle:
                    old.close()
                idle.clear()
                return None
            conn.reused = True
            return conn
        return None

    async def _connect(self, key: tuple[str, int], deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(None if deadline == _NEVER else deadline):
                _, conn = await loop.create_connection(lambda: Connection(self, key), key[0], key[1])
        except TimeoutError as exc:
            raise UpstreamTimeout(f"connecting to {key[0]}:{key[1]} timed out") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from exc
        self._all.add(conn)
        return conn

    def _forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn._key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        deadline = now - self._idle_timeout
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and c.idle_since >= deadline]
            for c in idle:
                if c not in keep:
                    c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def drop(self, host: str, port: int) -> None:
        """Close idle connections to an endpoint that went away (its address may be reused)."""
        for conn in self._idle.pop((host, port), []):
            conn.close()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._idle.clear()
        for conn in list(self._all):
            conn.close()
        self._all.clear()


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?")
# Header names seen before -> lower case. Validating each distinct name once keeps the per-line cost at
# one partition and one dict lookup; the cache is bounded, so odd names cannot grow it without limit.
_NAMES: dict[str, str] = {}
_NAMES_MAX = 4096
# Response headers _parse_head has to look at; everything else is copied without a second look.
_SPECIAL = HOP_BY_HOP | {"content-length"}


def lower_name(name: str) -> str | None:
    """A header name in lower case, or None if it is not a token; each distinct valid name is checked once."""
    lower = _NAMES.get(name)
    if lower is None:
        if _TOKEN.fullmatch(name) is None:
            return None
        lower = name.lower()
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = lower
    return lower


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]], int | None, bool, bool]:
    """Status line and end-to-end headers; raises ValueError for anything we would not forward faithfully."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf or "\x00" in text:
        raise ValueError("stray CR, LF or NUL in the response head")
    lines = text.split("\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        raise ValueError(f"bad status line {lines[0][:40]!r}")
    minor, code, reason = m.groups()
    keep_alive = minor == "1"
    headers: list[tuple[str, str]] = []
    length: int | None = None
    chunked = False
    listed: set[str] | None = None  # extra hop-by-hop names from Connection
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        lower = lower_name(name)
        if lower is None or not sep:
            raise ValueError(f"bad header line {line[:40]!r}")
        value = value.strip(" \t")
        if lower not in _SPECIAL:
            headers.append((name, value))
        elif lower == "content-length":
            if not value.isdigit() or not value.isascii():
                raise ValueError("bad Content-Length")
            n = int(value)
            if length is not None and n != length:
                raise ValueError("conflicting Content-Length")
            length = n
            headers.append((name, value))
        elif lower == "transfer-encoding":
            if value.rsplit(",", 1)[-1].strip().lower() != "chunked":
                raise ValueError("unsupported Transfer-Encoding")
            chunked = True
        elif lower == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "close" in tokens:
                keep_alive = False
            elif "keep-alive" in tokens:
                keep_alive = True
            listed = tokens if listed is None else listed | tokens
    if listed:
        headers = [(n, v) for n, v in headers if n.lower() not in listed]
    if chunked and length is not None:
        raise ValueError("both Content-Length and chunked (RFC 9112 §6.3: a sign of request smuggling)")
    return int(code), reason or "", headers, length, chunked, keep_alive
