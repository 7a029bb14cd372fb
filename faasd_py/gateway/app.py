"""The gateway Application: one aiohttp app serving the OpenFaaS API, the portal and invocations.

``build_app`` wires routes to the provider protocols; ``serve`` starts it the way the daemon
needs it (one runner, graceful exit that lets in-flight invocations finish).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from faasd_py.config import Settings
from faasd_py.gateway import system
from faasd_py.gateway.alert import handle_alert
from faasd_py.gateway.async_invoke import AsyncInvoke, Enqueuer
from faasd_py.gateway.auth import Credentials
from faasd_py.gateway.front import Front
from faasd_py.gateway.invoke import InvokeProxy
from faasd_py.gateway.keys import CREDENTIALS, LOG_STREAMS, PROVIDER, SETTINGS, InvocationHook, StartHook
from faasd_py.gateway.middlewares import auth_middleware, errors_middleware
from faasd_py.provider.contract import Provider

UI_DIR = Path(__file__).parent / "ui"
# gorilla/mux's NameExpression in the OpenFaaS gateway: names may carry ".namespace".
NAME = "{name:[-a-zA-Z_0-9.]+}"
INVOKE = web.AppKey("invoke", InvokeProxy)


def build_app(
    provider: Provider,
    settings: Settings,
    credentials: Credentials,
    *,
    on_invocation: InvocationHook | None = None,
    on_start: StartHook | None = None,
    queue: Enqueuer | None = None,
) -> web.Application:
    """``queue``: where /async-function calls go; without one those routes do not exist (404), as in
    OpenFaaS without NATS. ``on_start``/``on_invocation`` see every sync and queued invocation."""
    # client_max_size bounds request.read()/json() should a handler ever use them; ours read with limits.
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=settings.max_json_body)
    app[PROVIDER] = provider
    app[SETTINGS] = settings
    app[CREDENTIALS] = credentials
    app[LOG_STREAMS] = set()
    proxy = InvokeProxy(provider.functions, settings, on_invocation, on_start)
    app[INVOKE] = proxy
    app.on_shutdown.append(_end_log_streams)
    app.on_cleanup.append(proxy.close)

    r = app.router
    r.add_get("/system/functions", system.list_functions)
    r.add_post("/system/functions", system.deploy_function)
    r.add_put("/system/functions", system.update_function)
    r.add_delete("/system/functions", system.delete_function)
    r.add_get(f"/system/function/{NAME}", system.get_function)
    r.add_post(f"/system/scale-function/{NAME}", system.scale_function)
    r.add_get("/system/info", system.system_info)
    r.add_post("/system/alert", handle_alert)
    r.add_get("/system/secrets", system.list_secrets)
    r.add_post("/system/secrets", system.create_secret)
    r.add_put("/system/secrets", system.update_secret)
    r.add_delete("/system/secrets", system.delete_secret)
    r.add_get("/system/namespaces", system.list_namespaces)
    ns = "/system/namespace/{namespace:[-a-zA-Z_0-9.]*}"  # empty: faas-cli creates with POST /system/namespace/
    r.add_get(ns, system.get_namespace)
    r.add_post(ns, system.create_namespace)
    r.add_put(ns, system.update_namespace)
    r.add_delete(ns, system.delete_namespace)
    r.add_get("/system/logs", system.logs)
    r.add_get("/healthz", system.healthz)
    r.add_get("/", system.root_redirect)
    r.add_get("/ui/{path:.*}", _ui_handler(_ui_files(UI_DIR)))

    r.add_route("*", f"/function/{NAME}", proxy.handle)
    r.add_route("*", f"/function/{NAME}/{{path:.*}}", proxy.handle)
    if queue is not None:
        queued = AsyncInvoke(provider.functions, queue, settings.queue.max_body, settings.timeouts.read)
        r.add_route("*", f"/async-function/{NAME}", queued.handle)
        r.add_route("*", f"/async-function/{NAME}/{{path:.*}}", queued.handle)
    return app


def _ui_files(root: Path) -> dict[str, Path]:
    """URL path -> file, listed once at build time: no path arithmetic on request input, no traversal."""
    files: dict[str, Path] = {}
    for path in root.rglob("*"):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            files[rel] = path
            if path.name == "index.html":
                files[rel[: -len("index.html")]] = path
    return files


def _ui_handler(files: dict[str, Path]) -> Handler:
    async def ui_file(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    return ui_file


async def _end_log_streams(app: web.Application) -> None:
    streams = app[LOG_STREAMS]
    for task in tuple(streams):
        task.cancel()


IP_FREEBIND = 15  # <linux/in.h>; Python 3.11's socket module does not name it


def _freebind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on an address that may not exist yet (the bridge appears with the first container)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _FrontSite(web.BaseSite):
    """A listening socket whose connections start with the gateway's own protocol (:mod:`.front`)."""

    __slots__ = ("_factory", "_host", "_port", "_sock")

    def __init__(self, runner: web.BaseRunner, factory: Front, host: str | None = None, port: int = 0,
                 sock: socket.socket | None = None) -> None:
        super().__init__(runner)
        self._factory = factory
        self._host = host
        self._port = port
        self._sock = sock

    @property
    def name(self) -> str:
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
            return f"http://{host}:{port}"
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(self._factory, sock=self._sock)
        else:
            self._server = await loop.create_server(self._factory, self._host, self._port)


class _GatewayRunner(web.AppRunner):
    """Shutdown also drains the connections the front still owns, with the same grace as aiohttp's."""

    def __init__(self, app: web.Application, front: Front | None, grace: float, **kwargs: Any) -> None:
        super().__init__(app, shutdown_timeout=grace, **kwargs)
        self.front = front
        self._grace = grace

    async def shutdown(self) -> None:
        await super().shutdown()
        if self.front is not None:
            await self.front.shutdown(self._grace)


class _QuietBadRequests(logging.Filter):
    """aiohttp logs each malformed request at ERROR with a traceback, so any client could flood the
    journal; the client gets its 400 either way. Those records become one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 0) < 500:
            return True
        record.msg, record.args = "%s: %s", (record.getMessage(), exc.message.splitlines()[0] if exc.message else "")
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = record.exc_text = None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET_BAD_REQUESTS = _QuietBadRequests()


async def serve(
    app: web.Application, host: str, port: int, *, also: Sequence[str] = (), front: bool = True
) -> web.AppRunner:
    """Listen on host:port; ``await runner.cleanup()`` stops accepting, then waits for in-flight calls.

    In-flight invocations get up to the upstream timeout to finish; log followers are ended at once.
    Handlers are cancelled when their client disconnects, which aborts the upstream call too.
    ``also``: more addresses for the same port, bound even before they exist (IP_FREEBIND).
    ``front``: simple invocations are served by :mod:`faasd_py.gateway.front` (apps with /function/
    routes only); False leaves every request to aiohttp.
    """
    logging.getLogger("aiohttp.server").addFilter(_QUIET_BAD_REQUESTS)  # a filter already there is not added twice
    settings = app[SETTINGS]
    grace = settings.timeouts.upstream
    proxy = app.get(INVOKE)
    entry = Front(proxy, settings.timeouts.read, settings.max_invoke_body) if front and proxy is not None else None
    # auto_decompress=False: request bodies stay as sent, as in the Go gateway. aiohttp would otherwise
    # inflate a gzip body that the proxy then forwards, cut at the compressed Content-Length, still
    # labelled Content-Encoding: gzip (a corrupted body), and a bad gzip body would be a 500.
    # keepalive_timeout also bounds a connection whose request head never completes (slowloris)
    runner = _GatewayRunner(app, entry, grace, handler_cancellation=True, access_log=None,
                            auto_decompress=False, keepalive_timeout=settings.timeouts.read)
    await runner.setup()
    try:
        if entry is None:
            await web.TCPSite(runner, host, port).start()
            for extra in also:
                await web.SockSite(runner, _freebind_socket(extra, port)).start()
        else:
            entry.handler_factory = runner.server
            await _FrontSite(runner, entry, host, port).start()
            for extra in also:
                await _FrontSite(runner, entry, sock=_freebind_socket(extra, port)).start()
    except BaseException:
        await asyncio.shield(runner.cleanup())
        raise
    return runner
