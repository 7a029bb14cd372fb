"""Host ports of the core services, published by the daemon itself: an asyncio TCP proxy.

Why not CNI portmap: its DNAT rules hijack the port for the whole host (127.0.0.1 included) and
outlive a crashed daemon. Why not resolve once, as faasd's proxy does: a restarted service may
come back on another IP, so the target is asked for on every accepted connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
CHUNK = 64 * 1024


class PortProxy:
    """Listens on ``host:port``; each connection is spliced to ``(target(), target_port)``.
    ``target`` returns None while the service has no address (the client is then closed)."""

    def __init__(self, name: str, host: str, port: int, target: Callable[[], str | None], target_port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.target_port = target_port
        self._target = target
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip = self._target()
        upstream: asyncio.StreamWriter | None = None
        try:
            if ip is None:
                log.warning("port %s:%d: %s has no address (not running); closing the connection",
                            self.host, self.port, self.name)
                return
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    up_reader, upstream = await asyncio.open_connection(ip, self.target_port)
            except (OSError, TimeoutError) as exc:
                log.warning("port %s:%d: cannot reach %s at %s:%d: %s", self.host, self.port, self.name, ip,
                            self.target_port, exc or type(exc).__name__)
                return
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(OSError):
                        await w.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (so request/response protocols that shut
    down their write side still get their answer)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
