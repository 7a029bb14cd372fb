"""One request/response on a connection, with Go's write-deadline semantics: the deadline is fixed
when the request head has been read, and a response that would be written after it is dropped
together with the connection (the client sees an empty reply, as with fwatchdog)."""

from __future__ import annotations

import socket
import time

from .http11 import LAST_CHUNK, Request, WriteDeadlineExceeded, chunk, http_date, response_head


class Exchange:
    __slots__ = ("bytes_out", "chunked", "close", "deadline", "req", "sent_head", "sock", "started", "status")

    def __init__(self, sock: socket.socket, req: Request, write_timeout: float, close: bool) -> None:
        self.sock = sock
        self.req = req
        self.started = time.monotonic()
        self.deadline = self.started + write_timeout if write_timeout > 0 else 0.0
        self.close = close or not req.keep_alive
        self.sent_head = False
        self.chunked = False
        self.status = 0
        self.bytes_out = 0

    @property
    def head_only(self) -> bool:
        return self.req.method == "HEAD"

    def expired(self) -> bool:
        return bool(self.deadline) and time.monotonic() >= self.deadline

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"", reason: str | None = None) -> None:
        """A complete response with Content-Length."""
        hdrs = self._common(headers)
        if status >= 200 and status not in (204, 304):
            hdrs.append(("Content-Length", str(len(body))))
        payload = response_head(status, hdrs, reason)
        if not self.head_only and status not in (204, 304):
            payload += body
            self.bytes_out += len(body)
        self.status = status
        self._sendall(payload)
        self.sent_head = True

    def start(self, status: int, headers: list[tuple[str, str]], reason: str | None = None,
              length: int | None = None) -> None:
        """Response head for a streamed body: Content-Length if known, else chunked."""
        hdrs = self._common(headers)
        bodyless = self.head_only or status in (204, 304) or status < 200
        if length is not None:
            hdrs.append(("Content-Length", str(length)))
        elif not bodyless:
            if self.req.version == "HTTP/1.1":
                self.chunked = True
                hdrs.append(("Transfer-Encoding", "chunked"))
            else:
                self.close = True  # HTTP/1.0 client: the body ends when we close
                _replace(hdrs, "Connection", "close")
        self.status = status
        self._sendall(response_head(status, hdrs, reason))
        self.sent_head = True

    def write(self, data: bytes) -> None:
        if not data or self.head_only:
            return
        self.bytes_out += len(data)
        self._sendall(chunk(data) if self.chunked else data)

    def finish(self) -> None:
        if self.chunked and not self.head_only:
            self._sendall(LAST_CHUNK)

    def interim_continue(self) -> None:
        """Answer ``Expect: 100-continue`` before the body is read (curl waits 1 s otherwise)."""
        if self.req.expect_continue and not self.sent_head:
            self.req.expect_continue = False
            self._sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _common(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        hdrs = list(headers)
        if not any(k.lower() == "date" for k, _ in hdrs):
            hdrs.append(("Date", http_date()))
        if self.close:
            _replace(hdrs, "Connection", "close")
        return hdrs

    def _sendall(self, data: bytes) -> None:
        if self.deadline:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise WriteDeadlineExceeded()
            self.sock.settimeout(remaining)
        else:
            self.sock.settimeout(None)
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise WriteDeadlineExceeded() from exc


def _replace(headers: list[tuple[str, str]], name: str, value: str) -> None:
    lname = name.lower()
    headers[:] = [(k, v) for k, v in headers if k.lower() != lname]
    headers.append((name, value))
