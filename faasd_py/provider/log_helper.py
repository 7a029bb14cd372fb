"""One helper process that drains every instance's log FIFOs into journald, off the daemon's loop.

Why a process: a watchdog writes its log line while the gateway is relaying that very call's
response, so reading, splitting and sending lines in the daemon put that work on the event loop
exactly when it proxies the next invocation (0.1 ms of gateway overhead at c=1 on 2 vCPUs). One
helper for all instances, not one per container, so hundreds of idle functions stay cheap: it
runs a LogCollector (log_collector.py) and imports nothing but the stdlib and that.

The daemon (``LogHelper``) writes one JSON object per line to the helper's stdin, and never
waits for an answer (there is none):

    {"cmd": "attach", "ns": ..., "function": ..., "instance": ...}   start draining its FIFOs
    {"cmd": "detach", "ns": ..., "instance": ...}                    read what they hold, stop
    {"cmd": "note", "ns": ..., "function": ..., "instance": ..., "message": ...}
                                                                     a daemon line in its stream

The client creates the FIFOs before ``attach`` returns and removes them on ``detach``; the
helper only opens what exists. So the shim can open them whatever the helper is doing, and a
slow helper can never delete a FIFO that a later attach created again.

Lifetime: on stdin EOF (the daemon closed it, or died) or SIGTERM (PR_SET_PDEATHSIG: the daemon
died), the helper reads what the pipes hold, gives journald a moment for its backlog, exits 0.
When it dies otherwise, the client starts another after a short backoff and sends attach for
every instance again. Meanwhile output waits in the pipes: containerd's shim keeps a read end of
each FIFO open itself, so its writes never fail; a function blocks only once its pipes are full.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # asyncio imports ssl when it can, which maps libssl and libcrypto: 4 MiB of RSS the helper
    # never uses (it has no TLS). As a module in the daemon, nothing changes.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from faasd_py.provider.journal_writer import JOURNAL_SOCKET
from faasd_py.provider.log_collector import LogCollector, LogTarget, fifo_paths, make_fifos, remove_stale_fifos

log = logging.getLogger(__name__)

MAX_COMMAND = 1 << 20  # a longer line is not a command (notes are one short line)
MAX_PENDING = 1 << 20  # bytes of commands the helper has not read yet; beyond it, it is wedged
EXIT_GRACE = 1.0  # seconds the helper gives journald for its backlog before it exits
CLOSE_TIMEOUT = 5.0  # seconds close() waits for the helper to finish
STABLE_AFTER = 10.0  # a helper that lived this long restarts after restart_delay again, not longer
MAX_RESTART_DELAY = 10.0
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
HELPER_MODULE = "faasd_py.provider.log_helper"  # not __name__: that is "__main__" in the helper
PROCESS_NAME = b"faasd-py-logs"  # what ps, top and journald's _COMM show


# --- the helper process ---------------------------------------------------------------------------


async def _handle(collector: LogCollector, line: bytes) -> None:
    try:
        cmd: dict[str, Any] = json.loads(line)
        op = cmd["cmd"]
        if op == "attach":
            target = LogTarget(cmd["ns"], cmd["function"], cmd["instance"])
            try:
                await collector.attach(target, create=False)
            except FileNotFoundError:
                log.debug("%s/%s was detached before it was attached", target.namespace, target.instance)
        elif op == "detach":
            collector.detach(cmd["ns"], cmd["instance"], remove=False)
        elif op == "note":
            collector.note(LogTarget(cmd["ns"], cmd["function"], cmd["instance"]), cmd["message"])
        else:
            log.warning("unknown command %r", op)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("bad command %r: %s", line[:200], exc)
    except OSError as exc:
        log.warning("%s: %s", line[:200], exc)
    except Exception:  # a bug in one command must not stop the draining of every function
        log.exception("command %r failed", line[:200])


async def serve(collector: LogCollector, stdin: int = 0) -> None:
    """Carry out the commands read from ``stdin`` until EOF or SIGTERM, then close the collector."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_COMMAND)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(stdin, "rb", buffering=0, closefd=False))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def commands() -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # over MAX_COMMAND: skip it
                log.warning("skipped a command longer than %d bytes", MAX_COMMAND)
                continue
            if not line:
                return
            await _handle(collector, line)

    tasks = {asyncio.create_task(commands()), asyncio.create_task(stop.wait())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        transport.close()
        await collector.aclose(EXIT_GRACE)


def _prctl(option: int, arg: int | bytes) -> None:
    """PR_SET_PDEATHSIG and PR_SET_NAME (Linux); without them the helper still works."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m faasd_py.provider.log_helper",
                                description="Drain function log FIFOs into journald; commands on stdin.")
    p.add_argument("--fifo-dir", type=Path, required=True)
    p.add_argument("--journal-socket", default=JOURNAL_SOCKET)
    p.add_argument("--no-journald", action="store_true", help="only drain the FIFOs")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_NAME, PROCESS_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon, which then closes our stdin
    if os.getppid() != parent:  # the daemon died before prctl took effect
        return
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s faasd_py.log_helper: %(message)s")
    collector = LogCollector(args.fifo_dir, journald=not args.no_journald, journal_socket=args.journal_socket)
    asyncio.run(serve(collector))


# --- the daemon's side -------------------------------------------------------------------------------


class LogHelper:
    """What the daemon holds: LogCollector's calls, carried out by the helper process.

    Every call returns at once: commands go through a non-blocking pipe, and what does not fit
    waits in a bounded buffer that the event loop flushes when the pipe has room.
    """

    def __init__(self, fifo_dir: Path, *, journald: bool = True, journal_socket: str = JOURNAL_SOCKET,
                 restart_delay: float = 0.1) -> None:
        self._dir = fifo_dir
        self._journald = journald
        self._argv = [sys.executable, "-S", "-m", HELPER_MODULE, "--fifo-dir", str(fifo_dir)]
        self._argv += ["--journal-socket", journal_socket] if journald else ["--no-journald"]
        self.restart_delay = restart_delay
        self._targets: dict[tuple[str, str], LogTarget] = {}  # what a new helper must attach
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._stdin = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: collections.deque[tuple[bool, bytes]] = collections.deque()  # (is a note, line)
        self._pending_bytes = 0
        self._written = 0  # bytes of the first pending line already in the pipe
        self._waiting = False  # for the pipe to be writable
        self._broken = False  # EPIPE: the helper is gone, its exit is not processed yet
        self._killed = False
        self._restart: asyncio.TimerHandle | None = None
        self._delay = 0.0
        self._started_at = 0.0
        self._closed = False
        self.restarts = 0
        self.lost_notes = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def paths(self, namespace: str, instance: str) -> tuple[Path, Path]:
        return fifo_paths(self._dir, namespace, instance)

    def start(self) -> None:
        """Start the helper now (the first attach or note would otherwise)."""
        if self._proc is None and self._restart is None and not self._closed:
            self._spawn()

    async def attach(self, target: LogTarget) -> tuple[str, str]:
        """Create the instance's FIFOs (or keep them) and have the helper drain them."""
        self.start()
        key = (target.namespace, target.instance)
        paths = self.paths(target.namespace, target.instance)
        if key not in self._targets:
            make_fifos(paths)
            self._targets[key] = target
            self._send(_attach(target))
        return str(paths[0]), str(paths[1])

    def detach(self, namespace: str, instance: str, *, remove: bool = True) -> None:
        """Stop draining (the helper first reads what the pipes still hold); ``remove``: delete the
        FIFOs now (the helper keeps reading the ones it has open)."""
        if self._targets.pop((namespace, instance), None) is not None:
            self._send({"cmd": "detach", "ns": namespace, "instance": instance})
        if remove:
            for path in self.paths(namespace, instance):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def remove_stale(self, namespaces: Iterable[str], keep: Collection[tuple[str, str]]) -> list[Path]:
        """remove_stale_fifos, sparing every instance the helper drains."""
        return remove_stale_fifos(self._dir, namespaces, {*keep, *self._targets})

    def note(self, target: LogTarget, message: str) -> None:
        """One line from the daemon in the function's log stream (see LogCollector.note)."""
        if not self._journald:
            return
        self.start()
        self._send({"cmd": "note", "ns": target.namespace, "function": target.function,
                    "instance": target.instance, "message": message}, note=True)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Let the helper finish: it reads what the pipes hold, then exits. The FIFOs stay for the
        next daemon. Blocks until then (at most ``timeout``): this is for shutdown only."""
        if self._closed:
            return
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        proc = self._proc
        if proc is None:
            return
        self._unwatch()
        deadline = time.monotonic() + timeout
        self._flush_blocking(deadline)
        os.close(self._stdin)  # EOF: the helper reads what the pipes hold and exits
        self._stdin = -1
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("log helper (pid %d) did not exit within %.0f s: killed", proc.pid, timeout)
            proc.kill()
            proc.wait()
        self._proc = None

    # --- the process --------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._loop = asyncio.get_running_loop()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # faasd_py's parent, wherever we run from
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        # Popen from the loop's thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits
        read, self._stdin = os.pipe()  # both close-on-exec: only the helper gets the read end, as fd 0
        try:
            proc = subprocess.Popen([*self._argv, "--log-level", str(level)], stdin=read,
                                    stdout=subprocess.DEVNULL, close_fds=True, env=env)
        except BaseException:
            os.close(self._stdin)
            raise
        finally:
            os.close(read)
        os.set_blocking(self._stdin, False)
        self._pidfd = os.pidfd_open(proc.pid)
        self._loop.add_reader(self._pidfd, self._exited)
        self._proc, self._started_at, self._broken, self._killed = proc, time.monotonic(), False, False
        # a new helper starts from the state: every attached instance, then notes not yet delivered
        attach = [(False, _line(_attach(t))) for t in self._targets.values()]
        self._pending.extendleft(reversed(attach))
        self._pending_bytes += sum(len(line) for _, line in attach)
        self._flush()

    def _exited(self) -> None:
        assert self._proc is not None and self._loop is not None
        proc, self._proc = self._proc, None
        self._unwatch()
        os.close(self._stdin)
        self._stdin = -1
        code = proc.wait()
        # what it had not read is lost with it; keep the notes, the next one re-attaches anyway
        if self._written and self._pending:
            self._pending_bytes -= len(self._pending.popleft()[1])
        self._written = 0
        notes = [(True, line) for is_note, line in self._pending if is_note]
        self._pending = collections.deque(notes)
        self._pending_bytes = sum(len(line) for _, line in notes)
        if self._closed:
            return
        lived = time.monotonic() - self._started_at
        if self._delay == 0.0 or lived >= STABLE_AFTER:
            self._delay = self.restart_delay
        else:
            self._delay = min(self._delay * 2, MAX_RESTART_DELAY)
        log.warning("log helper (pid %d) exited with %s; restarting it in %.1f s (function output waits in "
                    "the pipes meanwhile)", proc.pid, code, self._delay)
        self._restart = self._loop.call_later(self._delay, self._respawn)

    def _respawn(self) -> None:
        self._restart = None
        self.restarts += 1
        self._spawn()

    def _unwatch(self) -> None:
        assert self._loop is not None
        if self._waiting:
            self._loop.remove_writer(self._stdin)
            self._waiting = False
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    # --- commands ---------------------------------------------------------------------------------

    def _send(self, command: dict[str, str], *, note: bool = False) -> None:
        """Queue a command; without a helper only notes wait (the next one gets the attach state)."""
        if self._closed or (self._proc is None and not note):
            return
        line = _line(command)
        if self._pending_bytes + len(line) > MAX_PENDING:
            if self._proc is not None and not self._killed:
                log.warning("log helper (pid %d) stopped reading its commands: restarting it", self._proc.pid)
                self._killed = True
                self._proc.kill()  # its exit restarts it, with every attach again
            if note:
                self.lost_notes += 1
            return
        self._pending.append((note, line))
        self._pending_bytes += len(line)
        if self._proc is not None:
            self._flush()

    def _flush(self) -> None:
        """Write what fits into the pipe now; the loop calls again once it has room."""
        self._write()
        assert self._loop is not None
        want = bool(self._pending) and not self._broken
        if want and not self._waiting:
            self._loop.add_writer(self._stdin, self._flush)
        elif not want and self._waiting:
            self._loop.remove_writer(self._stdin)
        self._waiting = want

    def _write(self) -> None:
        while self._pending and not self._broken:
            line = self._pending[0][1]
            try:
                self._written += os.write(self._stdin, memoryview(line)[self._written:])
            except BlockingIOError:
                break
            except OSError:  # EPIPE: it is gone; _exited restarts it
                self._broken = True
                break
            if self._written < len(line):
                break
            self._pending.popleft()
            self._pending_bytes -= len(line)
            self._written = 0

    def _flush_blocking(self, deadline: float) -> None:
        """At close: hand over what is still pending (the helper reads while it runs)."""
        while self._pending and not self._broken and time.monotonic() < deadline:
            _, writable, _ = select.select([], [self._stdin], [], max(0.0, deadline - time.monotonic()))
            if writable:
                self._write()


def _attach(target: LogTarget) -> dict[str, str]:
    return {"cmd": "attach", "ns": target.namespace, "function": target.function, "instance": target.instance}


def _line(command: dict[str, str]) -> bytes:
    return (json.dumps(command, separators=(",", ":")) + "\n").encode()


if __name__ == "__main__":
    main()
