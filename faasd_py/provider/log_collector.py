"""Function stdout/stderr → journald, read from FIFOs the shim writes to.

This is the engine of the log helper (log_helper.py): one process next to the daemon runs one
collector for every instance, so reading and splitting lines never competes with the gateway's
event loop. One asyncio reader per stream costs a few KiB, where a logger process per container
(containerd's ``binary://`` driver) would cost ~10 MiB each — too much for hundreds of idle
functions. The FIFOs live at deterministic paths, so a restarted daemon (or helper) reattaches to
the same pipes and nothing written meanwhile is lost (the kernel keeps it in the pipe buffer).

We open our end O_RDWR: the pipe then always has a writer, so there is no spurious EOF before the
shim opens it, and the shim never gets EPIPE while the daemon restarts.

Every line becomes one journal entry (journal_writer: never blocks the event loop) with fields
that say whose it is; a line longer than 64 KiB becomes several entries, and bytes that are not
UTF-8 are stored as they are. Nothing here waits for a newline or for journald, so a function
can never stall on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from faasd_py.provider.journal_writer import JOURNAL_SOCKET, JournalWriter, field

# Longer lines are split into entries of this size (no byte is lost: joined they are the line).
MAX_LINE = 64 * 1024
FLUSH_DELAY = 0.005  # seconds a chunk may wait before it is split into entries (see data_received)
MAX_BUFFER = 4 * MAX_LINE  # ... unless this much is waiting already
PRIORITY = {"stdout": 6, "stderr": 3}  # info / err, as faasd does


@dataclass(frozen=True)
class LogTarget:
    namespace: str
    function: str
    instance: str

    @functools.cached_property
    def headers(self) -> dict[str, bytes]:
        """The journal fields of each stream, encoded once per instance, not per line."""
        common = (
            field(b"SYSLOG_IDENTIFIER", f"{self.namespace}:{self.function}".encode()),
            field(b"OPENFAAS_NAME", self.function.encode()),
            field(b"OPENFAAS_NAMESPACE", self.namespace.encode()),
            field(b"OPENFAAS_INSTANCE", self.instance.encode()),
        )
        return {
            stream: b"".join((field(b"PRIORITY", str(p).encode()), field(b"OPENFAAS_STREAM", stream.encode()), *common))
            for stream, p in PRIORITY.items()
        }


class LogSink(Protocol):
    """What the launcher and the core services need from log collection: a LogCollector in the
    daemon's own loop (tests) or log_helper.LogHelper, which runs one in a helper process."""

    async def attach(self, target: LogTarget) -> tuple[str, str]: ...

    def detach(self, namespace: str, instance: str, *, remove: bool = True) -> None: ...

    def note(self, target: LogTarget, message: str) -> None: ...

    def remove_stale(self, namespaces: Iterable[str], keep: Collection[tuple[str, str]]) -> list[Path]: ...

    def close(self) -> None: ...


def fifo_paths(fifo_dir: Path, namespace: str, instance: str) -> tuple[Path, Path]:
    """Where an instance's stdout and stderr FIFOs are: fixed, so a restart finds them again."""
    base = fifo_dir / namespace
    return base / f"{instance}.stdout", base / f"{instance}.stderr"


def make_fifos(paths: tuple[Path, Path]) -> None:
    """Create the FIFOs (mode 0600) unless they exist; anything else at their path is replaced."""
    paths[0].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in paths:
        try:
            if stat.S_ISFIFO(path.stat().st_mode):
                continue
            path.unlink()
        except FileNotFoundError:
            pass
        os.mkfifo(path, 0o600)


def remove_stale_fifos(fifo_dir: Path, namespaces: Iterable[str], keep: Collection[tuple[str, str]]) -> list[Path]:
    """Delete the FIFOs in these namespaces whose (namespace, instance) is not in ``keep``.

    A function removed while no daemon ran leaves its FIFOs behind, and /run is a tmpfs that only
    a reboot empties; at start the daemon knows every instance that may still write, so the rest
    can go. Only ``*.stdout``/``*.stderr`` FIFOs are touched; returns what was removed.
    """
    removed: list[Path] = []
    for ns in namespaces:
        try:
            entries = list(os.scandir(fifo_dir / ns))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            instance, _, stream = entry.name.rpartition(".")
            if stream not in ("stdout", "stderr") or (ns, instance) in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISFIFO(entry.stat(follow_symlinks=False).st_mode):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def cut(buf: bytes | bytearray, start: int, limit: int = MAX_LINE) -> int:
    """Where the entry of an over-long line starting at ``start`` ends: after ``limit`` bytes,
    moved back (at most 3 bytes) so that a UTF-8 character is not cut in two; binary data is
    simply cut at ``limit``. ``buf`` must hold more than ``start + limit`` bytes."""
    end = start + limit
    for i in range(end, max(end - 3, start + 1) - 1, -1):
        if buf[i] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return i
    return end


class _PipeProtocol(asyncio.Protocol):
    """Splits one stream into lines; never waits for a newline beyond MAX_LINE bytes."""

    def __init__(self, writer: JournalWriter | None, target: LogTarget, stream: str) -> None:
        self._writer = writer
        self._header = target.headers[stream]
        self._buf = bytearray()
        self._flush: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        """Buffer now, split and send a moment later (FLUSH_DELAY).

        A watchdog writes its log line while the gateway is relaying that very call's response;
        sending the entries right away would put that work on the invocation's critical path.
        Deferring it batches the lines of a burst too. MAX_BUFFER bounds what waits.
        """
        if self._writer is None:
            return  # journald disabled: only drain
        self._buf += data
        if len(self._buf) >= MAX_BUFFER:
            self._split()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._split)

    def _split(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        buf = self._buf
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            stop = nl if nl >= 0 else len(buf)
            while stop - start > MAX_LINE:  # over-long: entries of MAX_LINE, the rest stays a line
                end = cut(buf, start)
                self._emit(buf, start, end)
                start = end
            if nl < 0:
                break
            self._emit(buf, start, nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl)  # CRLF too
            start = nl + 1
        del buf[:start]

    def _emit(self, buf: bytearray, start: int, end: int) -> None:
        assert self._writer is not None
        self._writer.send(self._header, bytes(buf[start:end]))

    def eof_received(self) -> bool | None:
        if self._writer is not None:
            self._split()
        if self._buf and self._writer is not None:
            self._emit(self._buf, 0, len(self._buf))
        self._buf.clear()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof_received()


def _read_available(fd: int, limit: int = 1 << 20) -> list[bytes]:
    """What a non-blocking pipe holds right now (bounded, should a writer still be busy)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return chunks


class LogCollector:
    def __init__(self, fifo_dir: Path, *, journald: bool = True, journal_socket: str = JOURNAL_SOCKET) -> None:
        self._dir = fifo_dir
        self._writer = JournalWriter(journal_socket) if journald else None
        self._pipes: dict[tuple[str, str], list[tuple[asyncio.ReadTransport, _PipeProtocol, int]]] = {}

    def paths(self, namespace: str, instance: str) -> tuple[Path, Path]:
        return fifo_paths(self._dir, namespace, instance)

    async def attach(self, target: LogTarget, *, create: bool = True) -> tuple[str, str]:
        """Create (or reopen) the instance's FIFOs and start draining them; returns their paths.

        ``create=False``: only open FIFOs that exist (FileNotFoundError otherwise), for a reader
        whose FIFOs are created and removed by someone else (the log helper's client).
        """
        key = (target.namespace, target.instance)
        paths = self.paths(target.namespace, target.instance)
        if key in self._pipes:
            return str(paths[0]), str(paths[1])
        if create:
            make_fifos(paths)
        loop = asyncio.get_running_loop()
        pipes: list[tuple[asyncio.ReadTransport, _PipeProtocol, int]] = []
        try:
            for stream, path in zip(("stdout", "stderr"), paths, strict=True):
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                pipe = os.fdopen(fd, "rb", buffering=0)
                if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                    pipe.close()
                    raise FileNotFoundError(f"{path} is not a FIFO")
                transport, protocol = await loop.connect_read_pipe(
                    functools.partial(_PipeProtocol, self._writer, target, stream), pipe)
                pipes.append((transport, protocol, fd))
        except BaseException:
            for transport, _, _ in pipes:
                transport.close()
            raise
        self._pipes[key] = pipes
        return str(paths[0]), str(paths[1])

    def detach(self, namespace: str, instance: str, *, remove: bool = True) -> None:
        """Stop draining (after the task is gone) and delete the FIFOs.

        What the task wrote just before it exited may still be in the pipe (the loop has not run
        the reader since): read it out first, so a crashing function's last words are kept.
        """
        for transport, protocol, fd in self._pipes.pop((namespace, instance), []):
            if not transport.is_closing():
                for chunk in _read_available(fd):
                    protocol.data_received(chunk)
            transport.close()
        if remove:
            for path in self.paths(namespace, instance):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def remove_stale(self, namespaces: Iterable[str], keep: Collection[tuple[str, str]]) -> list[Path]:
        """remove_stale_fifos, sparing every instance this collector drains."""
        return remove_stale_fifos(self._dir, namespaces, {*keep, *self._pipes})

    def note(self, target: LogTarget, message: str) -> None:
        """One line from the daemon itself in the function's log stream (stderr, with its fields),
        so ``faas-cli logs`` shows what happened to it (a crash and its restart) among its output."""
        if self._writer is not None:
            self._writer.send(target.headers["stderr"], message.encode())

    async def aclose(self, grace: float) -> None:
        """close(), but give journald up to ``grace`` seconds for the entries still waiting."""
        for key in list(self._pipes):
            self.detach(*key, remove=False)
        await asyncio.sleep(0)  # the closed transports hand over their last partial lines (connection_lost)
        for _ in range(round(grace / 0.01)):  # polled: the writer has no "sent everything" event
            if not self.backlog:
                break
            await asyncio.sleep(0.01)
        self.close()

    def close(self) -> None:
        for key in list(self._pipes):
            self.detach(*key, remove=False)
        if self._writer is not None:
            self._writer.close()

    @property
    def backlog(self) -> int:
        """Bytes of entries waiting for journald (what closing now would lose)."""
        return self._writer.backlog if self._writer is not None else 0

    @property
    def dropped(self) -> int:
        """Lines that could not be handed to journald (not running, or far behind)."""
        return self._writer.dropped if self._writer is not None else 0
