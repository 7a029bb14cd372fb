"""A stand-in for journald's native socket, and helpers the log tests share."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path


async def wait_for_condition(condition: Callable[[], bool], timeout: float) -> None:
    """Polls (bounded); the caller asserts on the state afterwards."""
    deadline = time.monotonic() + timeout
    while True:
        if condition() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


def parse_native(datagram: bytes) -> dict[str, bytes]:
    """journald's reading of one native-protocol datagram (both field forms)."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(datagram):
        nl = datagram.index(b"\n", pos)
        line = datagram[pos:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = nl + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", datagram[nl + 1:nl + 9])
            value = datagram[nl + 9:nl + 9 + size]
            assert datagram[nl + 9 + size:nl + 10 + size] == b"\n"
            pos = nl + 10 + size
        fields[name.decode()] = value
    return fields


class FakeJournald:
    """Reads its socket as eagerly as journald does (from the event loop), parsing each entry."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[dict[str, bytes]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Begin reading (a journald that never reads is one that never called this)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                self.received.append(parse_native(self.sock.recv(1 << 20)))
            except BlockingIOError:
                return

    async def collect(self, until: int, timeout: float = 10.0) -> list[dict[str, bytes]]:
        """Entries until ``until`` of them have arrived (or the timeout)."""
        if self._loop is None:
            self.start()
        await wait_for_condition(lambda: len(self.received) >= until, timeout)
        return list(self.received)

    async def drain(self, quiet: float = 0.5, timeout: float = 20.0) -> list[dict[str, bytes]]:
        """Everything, until nothing more arrives for ``quiet`` seconds."""
        if self._loop is None:
            self.start()
        deadline = time.monotonic() + timeout
        seen, last = -1, time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() < deadline:
            if len(self.received) != seen:
                seen, last = len(self.received), time.monotonic()
            await asyncio.sleep(0.02)
        return list(self.received)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
