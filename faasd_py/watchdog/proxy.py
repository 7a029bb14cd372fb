"""http mode: fprocess is a long-running HTTP server; every request is proxied to upstream_url.

Unlike of-watchdog this sends bodies with Content-Length (Python's http.server, and many small
upstreams, cannot read chunked bodies), writes the lock file only once the upstream accepts
connections (so a 200 from /_/health means a request will succeed), and keeps the upstream
running until the SIGTERM drain is over."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from .app import TEXT, Backend
from .config import Config, parse_duration
from .exchange import Exchange
from .forking import exit_text, pump_lines
from .http11 import HOP_BY_HOP, BadRequest, BodyReader, Headers, Request, read_head
from .logs import log
from .reaper import forget, spawn

BUFFER_LIMIT = 1 << 20  # bodies up to this size are buffered, so a stale pooled connection can be retried
WHOLE_BODY = 64 * 1024  # response bodies up to this size (with a Content-Length) are sent with the head
INTERNAL = ("X-OpenFaaS-Internal", "of-watchdog")


class UpstreamTimeout(Exception):
    pass


class _Conn:
    __slots__ = ("rfile", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def close(self) -> None:
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


class HttpBackend(Backend):
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        try:
            self.address = cfg.upstream_address()
        except ValueError as exc:
            log(f"http mode needs upstream_url: {exc}")
            raise SystemExit(1) from exc
        if not cfg.upstream_url:
            log("http mode needs upstream_url (e.g. http://127.0.0.1:5000)")
            raise SystemExit(1)
        self._pool: list[_Conn] = []
        self._pool_lock = threading.Lock()
        self._stopping = False
        try:
            self.proc = spawn(cfg.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log(f"Failed to start process: {exc}")
            raise SystemExit(1) from exc
        log(f"Started logging: stderr from function. Forked {cfg.fprocess} - pid {self.proc.pid}")
        for pipe, name, fd in ((self.proc.stdout, "stdout", 1), (self.proc.stderr, "stderr", 2)):
            threading.Thread(target=pump_lines, args=(pipe, name, fd, cfg.prefix_logs), daemon=True).start()
        threading.Thread(target=self._monitor, daemon=True).start()

    def _monitor(self) -> None:
        code = self.proc.wait()
        forget(self.proc)
        if not self._stopping:
            log(f"Forked function has terminated: {exit_text(code)}")
            os._exit(1)

    def wait_ready(self) -> None:
        t0 = time.monotonic()
        while True:
            try:
                socket.create_connection(self.address, timeout=1.0).close()
                break
            except OSError:
                time.sleep(0.005)  # the monitor exits the watchdog if the upstream dies meanwhile
        log(f"Upstream {self.address[0]}:{self.address[1]} ready after {(time.monotonic() - t0) * 1000:.0f} ms")

    def stop(self) -> None:
        self._stopping = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # --- per request -------------------------------------------------------------------------------

    def handle(self, ex: Exchange) -> None:
        req = ex.req
        start = time.monotonic()
        timeout = self.cfg.exec_timeout
        asked = parse_duration(req.headers.get("X-Timeout") or "")
        if asked and asked > 0 and (not timeout or asked <= timeout):
            timeout = asked
        deadline = start + timeout if timeout else 0.0
        upgrade = bool(req.headers.get("Upgrade")) and "upgrade" in req.headers.tokens("Connection")
        ex.interim_continue()
        has_body = req.content_length is not None
        body: bytes | None = b""
        if has_body and (req.content_length == -1 or (req.content_length or 0) <= BUFFER_LIMIT):
            body = req.body.read_all()
        elif has_body:
            body = None  # large: streamed, hence not replayable
        head = self._request_head(req, body, upgrade)
        try:
            conn, status, reason, headers, version = self._exchange(head, req, body, deadline)
        except UpstreamTimeout:
            ex.send(504, [INTERNAL, ("X-Duration-Seconds", f"{time.monotonic() - start:f}")])
            self._access_log(ex, start, "Gateway Timeout")
            return
        except (OSError, BadRequest) as exc:
            log(f"Upstream HTTP request error: {exc}")
            ex.send(500, [INTERNAL, ("Content-Type", TEXT)], f"Can't reach service for: {req.request_uri}.".encode())
            self._access_log(ex, start, "Internal Server Error")
            return
        duration = f"{time.monotonic() - start:f}"
        if status == 101 and upgrade:
            self._tunnel(ex, conn, reason, headers)
            return
        self._relay(ex, conn, status, reason, headers, version, deadline, duration)
        self._access_log(ex, start, reason)

    def _request_head(self, req: Request, body: bytes | None, upgrade: bool) -> bytes:
        drop = HOP_BY_HOP | req.headers.tokens("Connection") | {"content-length", "expect"}
        if upgrade:
            drop -= {"connection", "upgrade"}
        lines = [f"{req.method} {req.request_uri or '/'} HTTP/1.1"]
        lines.extend(f"{k}: {v}" for k, v in req.headers.items if k.lower() not in drop)
        if req.headers.get("Host") is None:
            lines.append(f"Host: {self.address[0]}:{self.address[1]}")
        if req.content_length is not None:
            length = len(body) if body is not None else req.content_length
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _exchange(self, head: bytes, req: Request, body: bytes | None,
                  deadline: float) -> tuple[_Conn, int, str, Headers, str]:
        """Send the request and read the response head, retrying once when a pooled keep-alive
        connection turns out to be stale before any response byte arrived."""
        for attempt in (0, 1):
            conn, reused = self._acquire(deadline)
            try:
                _set_timeout(conn.sock, deadline)
                if body is not None:
                    conn.sock.sendall(head + body)
                else:
                    conn.sock.sendall(head)
                    reader = req.body
                    while True:
                        _set_timeout(conn.sock, deadline)
                        data = reader.read()
                        if not data:
                            break
                        conn.sock.sendall(data)
                while True:
                    _set_timeout(conn.sock, deadline)
                    # ACK at once: an upstream writing head and body separately (http.server) would
                    # otherwise wait for our delayed ACK under Nagle: +40 ms on a reused connection
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                    parsed = read_head(conn.rfile)
                    if parsed is None:
                        raise ConnectionResetError("upstream closed the connection")
                    start_line, headers = parsed
                    version, _, rest = start_line.partition(" ")
                    code, _, reason = rest.partition(" ")
                    if not code.isdigit():
                        raise BadRequest(f"malformed upstream status line {start_line!r}")
                    status = int(code)
                    if 100 <= status < 200 and status != 101:
                        continue  # interim responses are ours to swallow
                    return conn, status, reason, headers, version
            except TimeoutError as exc:
                conn.close()
                raise UpstreamTimeout() from exc
            except (OSError, BadRequest):
                conn.close()
                if attempt == 0 and reused and body is not None:
                    continue
                raise
        raise AssertionError("unreachable")

    def _relay(self, ex: Exchange, conn: _Conn, status: int, reason: str, headers: Headers, version: str,
               deadline: float, duration: str) -> None:
        bodyless = ex.req.method == "HEAD" or status in (204, 304) or status < 200
        chunked = "chunked" in headers.tokens("Transfer-Encoding")
        length = None if chunked else _content_length(headers)
        until_eof = not bodyless and not chunked and length is None
        reader = BodyReader(conn.rfile, 0 if bodyless else length, chunked and not bodyless, until_eof)
        drop = HOP_BY_HOP | headers.tokens("Connection") | {"content-length"}
        out = [(k, v) for k, v in headers.items if k.lower() not in drop]
        out.append(("X-Duration-Seconds", duration))
        reusable = version == "HTTP/1.1" and "close" not in headers.tokens("Connection") and not until_eof
        try:
            if not bodyless and length is not None and length <= WHOLE_BODY:
                self._relay_whole(ex, conn, reader, status, reason, out, deadline, reusable)
                return
            ex.start(status, out, reason, length=length if not bodyless or ex.head_only else None)
            for data in _chunks(conn, reader, deadline):
                ex.write(data)
            ex.finish()
        except BaseException:
            conn.close()
            raise
        if reusable and reader.done:
            self._release(conn)
        else:
            conn.close()

    def _relay_whole(self, ex: Exchange, conn: _Conn, reader: BodyReader, status: int, reason: str,
                     out: list[tuple[str, str]], deadline: float, reusable: bool) -> None:
        """A small body of known length: read it all, then send head and body in one write. The
        upstream often writes them apart (http.server does); the gateway then gets the response in
        one piece and relays it in one piece too. A body cut short is a 502, not a short 200."""
        try:
            body = b"".join(_chunks(conn, reader, deadline))
        except TimeoutError:
            conn.close()
            ex.send(504, [INTERNAL, ("Content-Type", TEXT)], b"the function's response timed out\n")
            return
        except (OSError, BadRequest) as exc:
            conn.close()
            log(f"Upstream HTTP response error: {exc}")
            ex.send(502, [INTERNAL, ("Content-Type", TEXT)], b"the function's response broke off\n")
            return
        ex.send(status, out, body, reason)
        if reusable:
            self._release(conn)
        else:
            conn.close()

    def _tunnel(self, ex: Exchange, conn: _Conn, reason: str, headers: Headers) -> None:
        """101 Switching Protocols (websockets): pass bytes both ways until either side closes."""
        conn.sock.settimeout(None)
        ex.start(101, headers.items, reason)
        ex.close = True
        ex.sock.settimeout(None)
        client_stream = ex.req.body.stream

        def pump(read: Callable[[], bytes], dst: socket.socket) -> None:
            try:
                while True:
                    data = read()
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        up = threading.Thread(target=pump, args=(lambda: client_stream.read1(65536), conn.sock), daemon=True)
        up.start()
        pump(lambda: conn.rfile.read1(65536), ex.sock)
        up.join()
        conn.close()

    # --- pool ---------------------------------------------------------------------------------------

    def _acquire(self, deadline: float) -> tuple[_Conn, bool]:
        while True:
            with self._pool_lock:
                conn = self._pool.pop() if self._pool else None
            if conn is None:
                break
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable:
                return conn, True
            conn.close()  # EOF or unsolicited bytes: the upstream closed it
        remaining = deadline - time.monotonic() if deadline else 10.0
        if remaining <= 0:
            raise UpstreamTimeout()
        try:
            sock = socket.create_connection(self.address, timeout=min(remaining, 10.0))
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(sock), False

    def _release(self, conn: _Conn) -> None:
        with self._pool_lock:
            if len(self._pool) < 64 and not self._stopping:
                self._pool.append(conn)
                return
        conn.close()

    def _access_log(self, ex: Exchange, start: float, reason: str) -> None:
        ua = ex.req.headers.get("User-Agent") or ""
        if ua.startswith("kube-probe"):
            return
        log(f"{ex.req.method} {ex.req.request_uri} - {ex.status} {reason} - ContentLength: {ex.bytes_out}B "
            f"({time.monotonic() - start:.4f}s)")


def _chunks(conn: _Conn, reader: BodyReader, deadline: float) -> Iterator[bytes]:
    """The upstream response body as it arrives, each read bounded by the call's deadline."""
    while True:
        _set_timeout(conn.sock, deadline)
        data = reader.read()
        if not data:
            return
        yield data


def _set_timeout(sock: socket.socket, deadline: float) -> None:
    if not deadline:
        sock.settimeout(None)
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("exec_timeout")
    sock.settimeout(remaining)


def _content_length(headers: Headers) -> int | None:
    values = {v.strip() for v in headers.get_all("Content-Length")}
    if len(values) == 1:
        v = values.pop()
        if v.isdigit():
            return int(v)
    if values:
        raise BadRequest("bad upstream Content-Length")
    return None
