"""Is a new replica able to serve? Ask the watchdog, the way a Kubernetes probe would.

faasd marks a function available as soon as its task runs, so the first calls after a deploy or
a scale-up race the watchdog's start and fail. Here a replica is ready only when ``GET
/_/health`` answers 200, or, for images whose server has no health route (404/405/other
non-503 answers), when the server answers at all.
"""

from __future__ import annotations

import asyncio
import time

# A 503 means "the watchdog is up but its lock file is not written yet" (or it is draining).
_NOT_READY = 503


async def probe_once(host: str, port: int, path: str, timeout: float = 1.0) -> bool:
    """One HTTP/1.0 GET over a raw socket: cheaper than a client session for a one-shot probe.

    Ready unless the connection is refused or the server answers 503; a server that accepts the
    connection but does not speak HTTP counts as ready (TCP-accept readiness).
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: faasd-py-probe\r\n\r\n".encode())
        async with asyncio.timeout(timeout):
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return True
    finally:
        writer.close()
    parts = status_line.split()
    return not (len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1] == str(_NOT_READY).encode())


async def wait_ready(
    host: str,
    port: int,
    *,
    path: str = "/_/health",
    timeout: float = 60.0,
    failed: asyncio.Event | None = None,
) -> bool:
    """Poll until ready; False on timeout or as soon as ``failed`` is set (the task exited).

    Polls every 2 ms at first (a Python watchdog is up within ~100 ms), backing off to 50 ms so a
    slow starter costs little CPU.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if failed is not None and failed.is_set():
            return False
        if await probe_once(host, port, path):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if failed is not None:
            try:
                await asyncio.wait_for(failed.wait(), timeout=min(delay, remaining))
                return False
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.05)
