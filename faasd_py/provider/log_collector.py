"""Function stdout/stderr → journald, read by the daemon from FIFOs the shim writes to.

One asyncio reader per stream in the daemon costs a few KiB, where a logger process per
container (containerd's ``binary://`` driver) would cost ~10 MiB each — too much for hundreds of
idle functions. The FIFOs live at deterministic paths, so a restarted daemon reattaches to the
same pipes and nothing written meanwhile is lost (the kernel keeps it in the pipe buffer).

We open our end O_RDWR: the pipe then always has a writer, so there is no spurious EOF before the
shim opens it, and the shim never gets EPIPE while the daemon restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# journald refuses nothing below this, but giant entries are awkward to read; split there.
MAX_LINE = 64 * 1024
PRIORITY = {"stdout": 6, "stderr": 3}  # info / err, as faasd does


@dataclass(frozen=True)
class LogTarget:
    namespace: str
    function: str
    instance: str

    @functools.cached_property
    def fields(self) -> dict[str, tuple[str, ...]]:
        """The journal fields per stream, built once per instance, not per line."""
        common = (
            f"SYSLOG_IDENTIFIER={self.namespace}:{self.function}",
            f"OPENFAAS_NAME={self.function}",
            f"OPENFAAS_NAMESPACE={self.namespace}",
            f"OPENFAAS_INSTANCE={self.instance}",
        )
        return {s: (f"PRIORITY={p}", f"OPENFAAS_STREAM={s}", *common) for s, p in PRIORITY.items()}


class _Sink:
    """Sends to journald if it is there; otherwise only drains (never blocks the function).

    Uses ``journal.sendv`` with bytes: the message reaches journald byte-exact (binary output is
    kept, not replaced), and it skips ``journal.send``'s stack inspection on every line.
    """

    def __init__(self, enabled: bool) -> None:
        self._sendv: Any = None
        self.dropped = 0
        if enabled:
            try:
                from systemd import journal

                self._sendv = journal.sendv
            except ImportError:  # pragma: no cover - systemd-python is a dependency
                log.warning("systemd-python is missing: function logs are drained but not stored")

    def emit(self, target: LogTarget, stream: str, line: bytes) -> None:
        if self._sendv is None:
            return
        try:
            self._sendv(b"MESSAGE=" + line, *target.fields[stream])
        except OSError:
            # journald not running: keep draining so the function never stalls on a full pipe.
            self.dropped += 1


class _PipeProtocol(asyncio.Protocol):
    def __init__(self, sink: _Sink, target: LogTarget, stream: str) -> None:
        self._sink = sink
        self._target = target
        self._stream = stream
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            self._flush(bytes(self._buf[:nl]))
            del self._buf[: nl + 1]
        while len(self._buf) >= MAX_LINE:
            self._flush(bytes(self._buf[:MAX_LINE]))
            del self._buf[:MAX_LINE]

    def _flush(self, line: bytes) -> None:
        self._sink.emit(self._target, self._stream, line.rstrip(b"\r"))

    def eof_received(self) -> bool | None:
        if self._buf:
            self._flush(bytes(self._buf))
            self._buf.clear()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof_received()


class LogCollector:
    def __init__(self, fifo_dir: Path, *, journald: bool = True) -> None:
        self._dir = fifo_dir
        self._sink = _Sink(journald)
        self._transports: dict[tuple[str, str], list[asyncio.BaseTransport]] = {}

    def paths(self, namespace: str, instance: str) -> tuple[Path, Path]:
        base = self._dir / namespace
        return base / f"{instance}.stdout", base / f"{instance}.stderr"

    async def attach(self, target: LogTarget) -> tuple[str, str]:
        """Create (or reopen) the instance's FIFOs and start draining them; returns their paths."""
        key = (target.namespace, target.instance)
        if key in self._transports:
            out, err = self.paths(target.namespace, target.instance)
            return str(out), str(err)
        loop = asyncio.get_running_loop()
        transports: list[asyncio.BaseTransport] = []
        paths = self.paths(target.namespace, target.instance)
        paths[0].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stream, path in zip(("stdout", "stderr"), paths, strict=True):
            try:
                if not stat.S_ISFIFO(path.stat().st_mode):
                    path.unlink()
                    raise FileNotFoundError
            except FileNotFoundError:
                os.mkfifo(path, 0o600)
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            pipe = os.fdopen(fd, "rb", buffering=0)
            transport, _ = await loop.connect_read_pipe(functools.partial(_PipeProtocol, self._sink, target, stream),
                                                        pipe)
            transports.append(transport)
        self._transports[key] = transports
        return str(paths[0]), str(paths[1])

    def detach(self, namespace: str, instance: str, *, remove: bool = True) -> None:
        """Stop draining (after the task is gone) and delete the FIFOs."""
        for transport in self._transports.pop((namespace, instance), []):
            transport.close()
        if remove:
            for path in self.paths(namespace, instance):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def gc(self, keep: set[tuple[str, str]]) -> None:
        """Remove FIFOs of instances that no longer exist (e.g. after a crash of the daemon)."""
        if not self._dir.is_dir():
            return
        for ns_dir in self._dir.iterdir():
            for path in ns_dir.glob("*.std*"):
                if (ns_dir.name, path.name.rsplit(".", 1)[0]) not in keep:
                    self.detach(ns_dir.name, path.name.rsplit(".", 1)[0])

    def close(self) -> None:
        for key in list(self._transports):
            self.detach(*key, remove=False)

    @property
    def dropped(self) -> int:
        return self._sink.dropped
