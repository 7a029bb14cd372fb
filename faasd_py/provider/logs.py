"""``/system/logs``: read function logs back from journald, as faas-cli expects them.

``journalctl -o json`` in a subprocess, filtered on the fields the collector writes: it follows
new entries without polling, handles ``--since``/``-n`` itself, and keeps the blocking journal
API off the event loop. The stream ends when the client disconnects (the caller closes the
generator, which kills journalctl), never on a timeout. Bytes that are not UTF-8 reach the
client as U+FFFD (faas-cli's messages are JSON strings).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

from faasd_py.errors import RuntimeFailure
from faasd_py.types import LogMessage

# only what a LogMessage needs (journald adds a dozen trusted fields per entry); the timestamp comes anyway
OUTPUT_FIELDS = "MESSAGE,OPENFAAS_NAME,OPENFAAS_NAMESPACE,OPENFAAS_INSTANCE"
JOURNALCTL_MAX_LINES = 2**31 - 1  # journalctl parses --lines as a C int


def journalctl_args(
    name: str, namespace: str, *, instance: str, tail: int, since: datetime | None, follow: bool
) -> list[str]:
    # --all: without it journalctl prints fields over 4 KiB as null in JSON (our entries go to 64 KiB)
    args = ["journalctl", "--no-pager", "--output=json", "--all", "--quiet", f"--output-fields={OUTPUT_FIELDS}"]
    if since is not None:
        # seconds since the epoch: exact, and free of journalctl's local-time parsing; it refuses
        # negative ones (faas-cli's --since-time 0001-01-01... gave an empty 200), and nothing is older anyway
        args.append(f"--since=@{max(since.timestamp(), 0.0):.6f}")
    # faas-cli sends tail=-1 for "everything"; journalctl's -f alone would show only 10 lines.
    # journalctl refuses counts over INT_MAX (and the client would get an empty 200): that many is all.
    args.append(f"--lines={tail}" if 0 <= tail < JOURNALCTL_MAX_LINES else "--lines=all")
    if follow:
        args.append("--follow")
    args += [f"OPENFAAS_NAMESPACE={namespace}", f"OPENFAAS_NAME={name}"]
    if instance:
        args.append(f"OPENFAAS_INSTANCE={instance}")
    return args


def parse_entry(line: bytes) -> LogMessage | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    message = entry.get("MESSAGE") or ""
    if isinstance(message, list):  # journald's JSON for non-UTF-8 payloads: a list of byte values
        message = bytes(message).decode("utf-8", errors="replace")
    micros = int(entry.get("__REALTIME_TIMESTAMP", "0"))
    return LogMessage(
        name=entry.get("OPENFAAS_NAME", ""),
        namespace=entry.get("OPENFAAS_NAMESPACE", ""),
        instance=entry.get("OPENFAAS_INSTANCE", ""),
        timestamp=datetime.fromtimestamp(micros / 1e6, UTC),
        text=str(message),
    )


class JournalLogs:
    def stream(
        self,
        name: str,
        namespace: str,
        *,
        instance: str = "",
        tail: int = -1,
        since: datetime | None = None,
        follow: bool = False,
    ) -> AsyncGenerator[LogMessage, None]:
        """Checks what it can before the response starts (a 500 then still has its status), then
        returns the stream; journalctl starts on the first message asked for."""
        if shutil.which("journalctl") is None:
            raise RuntimeFailure("function log request failed: journalctl is not installed")
        return self._read(journalctl_args(name, namespace, instance=instance, tail=tail, since=since, follow=follow))

    @staticmethod
    async def _read(args: list[str]) -> AsyncGenerator[LogMessage, None]:
        """Raises RuntimeFailure with journalctl's own words if it exits with an error."""
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=4 << 20,  # entries up to 64 KiB of text are far larger as JSON byte arrays
        )
        assert proc.stdout is not None and proc.stderr is not None
        complaint = asyncio.ensure_future(_last_words(proc.stderr))
        try:
            while True:
                try:
                    line = await proc.stdout.readline()
                except ValueError:  # one entry over the limit (written by something else): skip it
                    continue
                if not line:
                    break
                msg = parse_entry(line)
                if msg is not None:
                    yield msg
            if await proc.wait() != 0:
                said = await complaint
                raise RuntimeFailure(f"function log request failed: journalctl exited with status "
                                     f"{proc.returncode}: {said or 'no message'}")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
            complaint.cancel()


async def _last_words(stderr: asyncio.StreamReader, keep: int = 2048) -> str:
    """The end of what a process wrote to stderr (read all along, so it can never block on it)."""
    tail = b""
    while chunk := await stderr.read(65536):
        tail = (tail + chunk)[-keep:]
    lines = [ln.strip() for ln in tail.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""
