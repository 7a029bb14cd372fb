"""Zombie reaping for when the watchdog is PID 1 (it is, in a container).

Orphans of an fprocess (a script that backgrounds a command and exits) are re-parented to PID 1,
and nobody else will ever wait for them; the Go watchdogs leave them as zombies until the pids
cgroup limit bites. We reap them, but never a child a ``subprocess.Popen`` of ours is about to
wait for: those are spawned and registered under one lock that the reaper also holds."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy still sees the import
if TYPE_CHECKING:
    from typing import Any

_lock = threading.Lock()
_tracked: set[int] = set()


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    with _lock:
        proc = subprocess.Popen(argv, **kwargs)
        _tracked.add(proc.pid)
    return proc


def forget(proc: subprocess.Popen[bytes]) -> None:
    """Called once ``proc`` has been waited for."""
    with _lock:
        _tracked.discard(proc.pid)


def reap_orphans() -> int:
    """Waits for every zombie child we did not spawn ourselves; returns how many."""
    me = os.getpid()
    reaped = 0
    with _lock:
        for pid in _zombie_children(me):
            if pid in _tracked:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
            except ChildProcessError:
                pass
    return reaped


def _zombie_children(parent: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == parent:
            out.append(int(name))
    return out


def start_reaper(interval: float = 2.0) -> None:
    """Only as PID 1: elsewhere an init or the parent shell reaps orphans."""
    if os.getpid() != 1:
        return

    def loop() -> None:
        while True:
            time.sleep(interval)
            with contextlib.suppress(OSError):
                reap_orphans()

    threading.Thread(target=loop, name="reaper", daemon=True).start()
