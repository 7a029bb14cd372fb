"""Log lines in the Go ``log`` format (``YYYY/MM/DD HH:MM:SS msg``) so tooling built for the Go
watchdogs reads ours too. Writes go straight to the fd: unbuffered and one syscall per line, so
lines from concurrent requests never interleave."""

from __future__ import annotations

import os
import time


def _stamp() -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S")


def log(msg: str, fd: int = 2) -> None:
    _write(fd, f"{_stamp()} {msg}\n")


def raw(line: str, fd: int = 2) -> None:
    _write(fd, line if line.endswith("\n") else line + "\n")


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "replace")
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError:
        pass  # a closed log pipe must never take a request down
