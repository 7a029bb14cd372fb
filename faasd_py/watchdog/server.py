"""Listener, one thread per connection (like Go's goroutine per conn), the lock file, SIGTERM
drain, and ``main()`` which wires the configured mode."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from .config import MODES, Config, format_duration
from .exchange import Exchange
from .http11 import BadRequest, WriteDeadlineExceeded, read_request, response_head
from .logs import log
from .metrics import SCRAPE_TIMEOUT, Metrics, metrics_handler
from .reaper import start_reaper

VERSION = "faasd-py-watchdog 0.1.0"

Handler = Callable[[Exchange], None]


class Server:
    """Accepts connections and runs ``handler`` for each request; tracks connections so a
    shutdown can close the idle ones at once and wait for the busy ones (http.Server.Shutdown)."""

    def __init__(self, listener: socket.socket, handler: Handler, read_timeout: float, write_timeout: float) -> None:
        self.handler = handler
        self.listener = listener
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, bool] = {}  # socket -> busy
        self._closing = False
        self._idle = threading.Condition(self._lock)

    def serve_in_background(self) -> None:
        threading.Thread(target=self._accept_loop, name="accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                if self._closing:
                    return
                time.sleep(0.01)  # EMFILE and friends: back off instead of spinning
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closing:
                    sock.close()
                    continue
                self._conns[sock] = False
            threading.Thread(target=self._serve_conn, args=(sock,), daemon=True).start()

    def _serve_conn(self, sock: socket.socket) -> None:
        rfile = sock.makefile("rb")
        try:
            while True:
                sock.settimeout(self.read_timeout or None)
                try:
                    req = read_request(rfile)
                except BadRequest:
                    _best_effort(sock, response_head(400, [("Content-Type", "text/plain; charset=utf-8"),
                                                           ("Connection", "close"), ("Content-Length", "15")])
                                 + b"400 Bad Request")
                    return
                except (OSError, ValueError):
                    return
                if req is None:
                    return
                with self._lock:
                    self._conns[sock] = True
                    closing = self._closing
                ex = Exchange(sock, req, self.write_timeout, closing)
                try:
                    self.handler(ex)
                    if not ex.sent_head:
                        ex.send(500, [("Content-Type", "text/plain; charset=utf-8")], b"no response\n")
                    if not req.body.done:
                        ex.close = True  # unread body left on the wire: the connection cannot be reused
                except (WriteDeadlineExceeded, BadRequest, OSError):
                    return
                except Exception as exc:  # a bug must cost one request, not the watchdog
                    log(f"Internal error: {exc!r}")
                    if not ex.sent_head:
                        _best_effort(sock, response_head(500, [("Connection", "close"), ("Content-Length", "0")]))
                    return
                with self._lock:
                    self._conns[sock] = False
                    if self._closing:
                        ex.close = True
                    self._idle.notify_all()
                if ex.close:
                    return
        finally:
            with self._lock:
                self._conns.pop(sock, None)
                self._idle.notify_all()
            _close(sock)
            rfile.close()

    def shutdown(self, timeout: float) -> int:
        """Stop accepting, close idle connections, wait up to ``timeout`` for busy ones; returns
        how many were still busy."""
        with self._lock:
            self._closing = True
            idle = [s for s, busy in self._conns.items() if not busy]
        with_suppress_close(self.listener)
        for s in idle:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RD)  # wakes the reader blocked on the next request
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(self._conns.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle.wait(left)
            return sum(1 for busy in self._conns.values() if busy)

    def busy(self) -> int:
        with self._lock:
            return sum(1 for b in self._conns.values() if b)


def _listen(host: str, port: int) -> socket.socket:
    """Dual-stack ``:port`` like Go, falling back to IPv4 where the netns has no IPv6."""
    if not host:
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            s.listen(1024)
            return s
        except OSError:
            s.close()
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(1024)
    return s


def with_suppress_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # unblocks accept() in the other thread on Linux
    sock.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _best_effort(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(data)
    except OSError:
        pass


def write_lock(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
    try:
        os.fchmod(fd, 0o660)  # not narrowed by the umask: the contract's mode
    finally:
        os.close(fd)


def remove_lock(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def start_metrics(cfg: Config, metrics: Metrics) -> Server | None:
    """The metrics listener on ``metrics_port`` (same address as the function's). A taken port costs
    the metrics, not the function (the classic watchdog panics there). It is never shut down: like
    the Go watchdogs', metrics stay readable while the function drains after SIGTERM."""
    try:
        listener = _listen(cfg.bind_address, cfg.metrics_port)
    except OSError as exc:
        log(f"Metrics disabled: cannot listen on port {cfg.metrics_port}: {exc.strerror or exc}")
        return None
    srv = Server(listener, metrics_handler(metrics), SCRAPE_TIMEOUT, SCRAPE_TIMEOUT)
    srv.serve_in_background()
    log(f"Metrics listening on port: {srv.port}")
    return srv


def _wait_for_signal() -> int:
    """Block the main thread until SIGTERM/SIGINT; the handler only records, the pipe wakes us."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.set_wakeup_fd(w)
    while not received:
        with contextlib.suppress(InterruptedError):
            os.read(r, 16)
    return received[0]


def main() -> None:
    cfg = Config(os.environ)
    if cfg.mode not in MODES:
        log(f"Unknown watchdog mode: {cfg.mode!r} (want one of {', '.join(MODES)})")
        sys.exit(1)
    if not cfg.argv:
        log("Provide a \"fprocess\" environmental variable for your function.")
        sys.exit(1)
    log(f"Version: {VERSION} (python {sys.version.split()[0]})")
    if cfg.mode != "classic":
        log(f"Watchdog mode: {cfg.mode}\tfprocess: {cfg.fprocess!r}")
    log(f"Timeouts: read: {format_duration(cfg.read_timeout)} write: {format_duration(cfg.write_timeout)} "
        f"hard: {format_duration(cfg.exec_timeout)} health: {format_duration(cfg.healthcheck_interval)}.")

    from .app import build_app  # imported here so an early config error costs nothing

    app = build_app(cfg)
    try:
        server = Server(_listen(cfg.bind_address, cfg.port), app.handle, cfg.read_timeout, cfg.write_timeout)
    except OSError as exc:
        log(f"Cannot listen on port {cfg.port}: {exc}")
        app.stop()
        sys.exit(1)
    server.serve_in_background()
    start_reaper()
    log(f"Listening on port: {server.port}")
    start_metrics(cfg, app.metrics)
    app.wait_ready()
    if not cfg.suppress_lock:
        log(f"Writing lock-file to: {cfg.lock_path}")
        try:
            write_lock(cfg.lock_path)
        except OSError as exc:
            log(f"Cannot write {cfg.lock_path}. To disable lock-file set env suppress_lock=true. ({exc})")
            app.stop()
            sys.exit(2 if cfg.mode == "classic" else 1)

    signum = _wait_for_signal()
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    log(f"{name}: no new connections in {format_duration(cfg.healthcheck_interval)}")
    if not cfg.suppress_lock:
        log(f"Removing lock-file : {cfg.lock_path}")
        remove_lock(cfg.lock_path)
    time.sleep(cfg.healthcheck_interval)  # still serving: the daemon has time to stop routing here
    log(f"No new connections allowed, draining: {server.busy()} requests")
    left = server.shutdown(cfg.write_timeout)
    app.stop()
    log(f"Exiting. Active connections: {left}")
    os._exit(0)  # daemon threads may still hold children of timed-out requests
