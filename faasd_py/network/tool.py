"""Running the host's network tools (iptables, nft) without blocking the loop."""

from __future__ import annotations

import asyncio


async def run_tool(*argv: str, stdin: str | None = None) -> tuple[int, str]:
    """The exit status, and stdout on success or stderr on failure (the tool's own words)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    rc = proc.returncode if proc.returncode is not None else -1
    return rc, (out if rc == 0 else err).decode(errors="replace")
