"""Just enough HTTP/1.1 for a watchdog: parse requests (Content-Length and chunked bodies,
keep-alive, Expect: 100-continue) and frame responses. Hand-written because ``http.server``
costs ~20 ms of imports on every cold start and hides the socket we need for deadlines."""

from __future__ import annotations

import io
import time

MAX_LINE = 65536
MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes
TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade")
)
REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
    429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BadRequest(Exception):
    """The client sent something we cannot parse; answered with 400 and the connection closed."""


class WriteDeadlineExceeded(Exception):
    """Go semantics: a response finished after write_timeout is lost and the connection dropped."""


def canonical_key(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: ``x-forwarded-by`` -> ``X-Forwarded-By``."""
    if not name or any(c not in TOKEN_CHARS for c in name):
        return name
    out, upper = [], True
    for c in name:
        out.append(c.upper() if upper else c.lower())
        upper = c == "-"
    return "".join(out)


def http_date(now: float | None = None) -> str:
    t = time.gmtime(now)
    return (f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def unquote_path(path: str) -> str:
    """Percent-decoding of the path (Go's URL.Path), without importing urllib."""
    if "%" not in path:
        return path
    raw = path.encode("latin-1", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and _ishex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _ishex(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789abcdefABCDEF" for c in b)


class Headers:
    """An ordered multi-map that keeps the names as the peer sent them."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self.items: list[tuple[str, str]] = items if items is not None else []

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for k, v in self.items:
            if k.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.items if k.lower() == lname]

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}


class BodyReader:
    """Reads one message body off a buffered stream: Content-Length, chunked, or until EOF."""

    __slots__ = ("_chunk_left", "_chunked", "_done", "_remaining", "_rfile", "_until_eof")

    def __init__(self, rfile: io.BufferedReader, length: int | None, chunked: bool,
                 until_eof: bool = False) -> None:
        self._rfile = rfile
        self._chunked = chunked
        self._until_eof = until_eof and not chunked and length is None
        self._remaining = 0 if length is None else length
        self._chunk_left = 0
        self._done = not chunked and not self._until_eof and self._remaining == 0

    @property
    def done(self) -> bool:
        return self._done

    @property
    def stream(self) -> io.BufferedReader:
        """The buffered connection stream (a tunnel must not lose bytes already buffered)."""
        return self._rfile

    def read(self, n: int = 65536) -> bytes:
        """Up to n bytes as soon as some are available; b"" at the end of the body."""
        if self._done:
            return b""
        rf = self._rfile
        if self._until_eof:
            data = rf.read1(n)
            if not data:
                self._done = True
            return data
        if not self._chunked:
            data = rf.read1(min(n, self._remaining))
            if not data:
                raise BadRequest("body shorter than Content-Length")
            self._remaining -= len(data)
            if self._remaining == 0:
                self._done = True
            return data
        if self._chunk_left == 0:
            size_line = rf.readline(MAX_LINE)
            if not size_line.endswith(b"\n"):
                raise BadRequest("truncated chunk size")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise BadRequest("bad chunk size") from exc
            if size < 0:
                raise BadRequest("bad chunk size")
            if size == 0:
                while True:  # trailers, then the blank line
                    line = rf.readline(MAX_LINE)
                    if line in (b"\r\n", b"\n", b""):
                        break
                self._done = True
                return b""
            self._chunk_left = size
        data = rf.read1(min(n, self._chunk_left))
        if not data:
            raise BadRequest("truncated chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and rf.readline(MAX_LINE) not in (b"\r\n", b"\n"):
            raise BadRequest("missing CRLF after chunk")
        return data

    def read_all(self) -> bytes:
        parts: list[bytes] = []
        while True:
            data = self.read()
            if not data:
                return b"".join(parts)
            parts.append(data)


class Request:
    __slots__ = ("body", "content_length", "expect_continue", "headers", "method", "path", "query", "raw_path",
                 "target", "version")

    def __init__(self, method: str, target: str, version: str, headers: Headers, body: BodyReader,
                 content_length: int | None) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.content_length = content_length
        uri = target
        if "://" in uri:  # absolute-form: keep only the path and query
            rest = uri.split("://", 1)[1]
            uri = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        self.raw_path, _, self.query = uri.partition("?")
        self.path = unquote_path(self.raw_path)
        self.expect_continue = (headers.get("Expect") or "").lower() == "100-continue"

    @property
    def request_uri(self) -> str:
        return self.raw_path + ("?" + self.query if self.query else "")

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.tokens("Transfer-Encoding")

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.tokens("Connection")
        if self.version == "HTTP/1.1":
            return "close" not in conn
        return "keep-alive" in conn


def read_head(rfile: io.BufferedReader) -> tuple[str, Headers] | None:
    """The start line and headers of a message; None on a clean EOF before the first byte."""
    readline = rfile.readline
    line = readline(MAX_LINE)
    while line in (b"\r\n", b"\n"):  # RFC 9112: ignore a stray CRLF before a request
        line = readline(MAX_LINE)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise BadRequest("start line too long or truncated")
    total = len(line)
    headers = Headers()
    while True:
        h = readline(MAX_LINE)
        total += len(h)
        if total > MAX_HEADER_BYTES:
            raise BadRequest("headers too large")
        if h in (b"\r\n", b"\n"):
            break
        if not h.endswith(b"\n"):
            raise BadRequest("truncated headers")
        text = h.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and headers.items:  # obsolete line folding
            k, v = headers.items[-1]
            headers.items[-1] = (k, v + " " + text.strip())
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        headers.add(name, value.strip(" \t"))
    return line.decode("latin-1").rstrip("\r\n"), headers


def content_length(headers: Headers) -> int | None:
    values = {v.strip() for v in headers.get_all("Content-Length")}
    if not values:
        return None
    if len(values) != 1:
        raise BadRequest("conflicting Content-Length")
    text = values.pop()
    if not text.isdigit():
        raise BadRequest("bad Content-Length")
    return int(text)


def read_request(rfile: io.BufferedReader) -> Request | None:
    head = read_head(rfile)
    if head is None:
        return None
    start, headers = head
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0] or not parts[1]:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if any(c not in TOKEN_CHARS for c in method):
        raise BadRequest("malformed method")
    te = headers.tokens("Transfer-Encoding")
    if te and te != {"chunked"}:
        raise BadRequest("unsupported Transfer-Encoding")
    chunked = bool(te)
    length = None if chunked else content_length(headers)
    body = BodyReader(rfile, length, chunked)
    return Request(method, target, version, headers, body, length if not chunked else -1)


def response_head(status: int, headers: list[tuple[str, str]], reason: str | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Status')}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1", "replace")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
