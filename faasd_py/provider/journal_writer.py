"""journald's native protocol on a non-blocking socket: function output never waits for journald.

systemd-python's ``journal.sendv`` makes a blocking ``sendmsg`` while it holds the GIL. Whenever
journald falls behind (it stops for tens of milliseconds to sync or rotate files: 40 to 100 ms
measured on this VM under a burst) the whole process (the log helper) would stop with it.
Here each entry is one ``sendto`` of a datagram on a non-blocking socket, in the documented
format (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/). When the kernel queue is full, entries wait
in a bounded backlog that is flushed as soon as the socket is writable; past the bound they are
dropped and counted, and once journald keeps up again one entry per stream says how many lines
were lost. Without a journald (not started yet, restarting) entries are counted as dropped the
same way, so the function's pipes are always drained.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import struct
import time

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"
MAX_BACKLOG = 16 << 20  # bytes of entries waiting for journald before lines are dropped
# what the journal says where lines are missing (faas-cli logs shows it in place of them)
DROP_NOTICE = "faasd-py: {count} line(s) of this stream were dropped: journald was down or too slow"
SEND_BUFFER = 8 << 20  # what sd_journal_sendv asks for too: room for bursts in the kernel queue


def field(name: bytes, value: bytes) -> bytes:
    """One field: ``NAME=value\\n``, or the length-prefixed form for values with a newline."""
    if b"\n" in value:
        return name + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return name + b"=" + value + b"\n"


class JournalWriter:
    """Sends entries (a pre-built header of fields + a message) to journald without ever blocking.

    The socket is connected: only then does the kernel report it writable when journald's queue
    has room again (an unconnected datagram socket always polls writable, which would make the
    backlog flush spin). A refused send means journald restarted: connect again and retry.
    """

    def __init__(self, path: str = JOURNAL_SOCKET, *, max_backlog: int = MAX_BACKLOG) -> None:
        self._path = path
        self._max_backlog = max_backlog
        self._sock: socket.socket | None = None
        self._retry_at = 0.0  # no journald: try to connect again at most once a second
        # (header, datagram, n): n > 0 marks a notice standing for n dropped lines
        self._backlog: collections.deque[tuple[bytes, bytes, int]] = collections.deque()
        self._backlog_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # set while waiting for writability
        self._missed: dict[bytes, int] = {}  # header -> lines dropped and not reported yet
        self._warned = False
        self.sent = 0
        self.dropped = 0

    @property
    def backlog(self) -> int:
        return self._backlog_bytes

    def send(self, header: bytes, message: bytes) -> None:
        datagram = header + field(b"MESSAGE", message)
        if self._missed and not self._backlog:
            # journald takes entries again: say what was lost where it was lost, then go on
            self._queue_notices()
            self._enqueue(header, datagram)
            self._flush()
        elif self._backlog:  # keep the order: behind what is already waiting
            self._enqueue(header, datagram)
        else:
            try:
                self._send(datagram)
            except BlockingIOError:
                self._enqueue(header, datagram)
            except OSError as exc:
                self._drop(header, exc)

    def _send(self, datagram: bytes) -> None:
        """One entry; BlockingIOError when journald's queue is full, OSError when it is not there."""
        for attempt in (1, 2):
            sock = self._connected()
            try:
                sock.send(datagram)
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, NotADirectoryError):
                self._disconnect()  # journald restarted: its new socket is another one
                self._retry_at = 0.0
                if attempt == 2:
                    raise
            else:
                self.sent += 1
                return

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if time.monotonic() < self._retry_at:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "journald was not reachable a moment ago")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            self._retry_at = time.monotonic() + 1.0
            raise
        self._sock = sock
        return sock

    def _disconnect(self) -> None:
        self._stop_waiting()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _enqueue(self, header: bytes, datagram: bytes, notice_for: int = 0) -> None:
        if not notice_for and self._backlog_bytes + len(datagram) > self._max_backlog:
            self._drop(header, None)
            return
        self._backlog.append((header, datagram, notice_for))
        self._backlog_bytes += len(datagram)
        if self._loop is None and self._sock is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_writer(self._sock.fileno(), self._flush)

    def _queue_notices(self) -> None:
        missed, self._missed = self._missed, {}
        for header, count in missed.items():
            notice = DROP_NOTICE.format(count=count).encode()
            self._enqueue(header, header + field(b"MESSAGE", notice), count)

    def _flush(self) -> None:
        """Send what waits, oldest first; when all went out, report drops (once per episode)."""
        reported = False
        while True:
            while self._backlog:
                header, datagram, notice_for = self._backlog[0]
                try:
                    self._send(datagram)
                except BlockingIOError:
                    if self._loop is None and self._sock is not None:  # reconnected: wait on the new socket
                        self._loop = asyncio.get_running_loop()
                        self._loop.add_writer(self._sock.fileno(), self._flush)
                    return  # still full: the loop calls us again when there is room
                except OSError as exc:
                    if notice_for:  # report it later, rather than count the notice as a lost line
                        self._missed[header] = self._missed.get(header, 0) + notice_for
                    else:
                        self._drop(header, exc)
                self._backlog.popleft()
                self._backlog_bytes -= len(datagram)
            if not self._missed or self._sock is None or reported:
                break
            self._queue_notices()
            reported = True
        self._stop_waiting()
        if not self._missed:
            self._warned = False

    def _drop(self, header: bytes, exc: OSError | None) -> None:
        self.dropped += 1
        self._missed[header] = self._missed.get(header, 0) + 1
        if not self._warned:
            self._warned = True
            why = f"journald is not reachable at {self._path} ({exc.strerror})" if exc else "journald fell behind"
            log.warning("dropping function log lines: %s", why)

    def _stop_waiting(self) -> None:
        if self._loop is not None and self._sock is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already at shutdown
                self._loop.remove_writer(self._sock.fileno())
        self._loop = None

    def close(self) -> None:
        self._disconnect()
