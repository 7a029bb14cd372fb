"""Routing shared by every mode: ``/_/health``, ``/_/ready``, the method rules and the
``max_inflight`` limiter in front of the mode's function handler."""

from __future__ import annotations

import os
import threading
import time

from .config import Config
from .exchange import Exchange
from .metrics import Metrics

CLASSIC_METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE"))
TEXT = "text/plain; charset=utf-8"


class Backend:
    """What a mode provides: the function handler, plus hooks around the server's life."""

    def handle(self, ex: Exchange) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        """Block until the function can take requests (http mode: the upstream accepts)."""

    def stop(self) -> None:
        """Called once the server has drained."""


class App:
    __slots__ = ("_inflight", "_lock", "backend", "cfg", "metrics")

    def __init__(self, cfg: Config, backend: Backend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.metrics = Metrics()
        self._lock = threading.Lock()
        self._inflight = 0

    def handle(self, ex: Exchange) -> None:
        req = ex.req
        if req.path == "/_/health":
            self._health(ex)
            return
        if req.path == "/_/ready" and self.cfg.mode != "classic":
            self._ready(ex)
            return
        # everything else is the function's, counted like the Go watchdogs' instrumented "/" route
        # (their 405 and 429 answers included); the duration runs from the end of the request head
        self.metrics.started()
        try:
            self._function(ex)
        finally:
            self.metrics.finished(req.method, ex.status, time.monotonic() - ex.started)

    def _function(self, ex: Exchange) -> None:
        req = ex.req
        cfg = self.cfg
        if cfg.mode == "classic" and req.method not in CLASSIC_METHODS:
            ex.send(405, [])
            return
        with self._lock:
            if cfg.max_inflight and self._inflight >= cfg.max_inflight:
                over = True
            else:
                over = False
                self._inflight += 1
        if over:
            ex.send(429, [("Content-Type", "text/plain"), ("X-OpenFaaS-Internal", "faas-middleware")],
                    f"Concurrent request limit exceeded. Max concurrent requests: {cfg.max_inflight}".encode())
            return
        try:
            self.backend.handle(ex)
        finally:
            with self._lock:
                self._inflight -= 1

    def _locked(self) -> bool:
        return os.path.exists(self.cfg.lock_path)

    def _health(self, ex: Exchange) -> None:
        if ex.req.method != "GET":
            ex.send(405, [])
        elif self._locked():
            ex.send(200, [("Content-Type", TEXT)], b"OK")
        else:
            ex.send(503, [])

    def _ready(self, ex: Exchange) -> None:
        if not self._locked():
            ex.send(503, [])
        elif self.cfg.max_inflight and self._inflight >= self.cfg.max_inflight:
            ex.send(429, [])
        else:
            ex.send(200, [("Content-Type", TEXT)], b"OK")

    def wait_ready(self) -> None:
        self.backend.wait_ready()

    def stop(self) -> None:
        self.backend.stop()


def build_app(cfg: Config) -> App:
    if cfg.mode == "http":
        from .proxy import HttpBackend

        return App(cfg, HttpBackend(cfg))
    from .forking import ForkBackend

    return App(cfg, ForkBackend(cfg))
