"""Function logs end to end: what functions write reaches the session's journald with the fields
that say whose it is, and comes back through ``GET /system/logs`` the way ``faas-cli logs`` asks
for it (faas-cli-contract.md, "logs").

Every journal query filters on the instance id (random per deploy), so entries of earlier runs in
a shared journald never count.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from faasd_py.types import DEFAULT_NAMESPACE
from tests.infra import TestEnv
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import DaemonHandle, Inspector, function_body
from tests.integration.fn_images import build_and_push

CLI = {"User-Agent": "faas-cli/e2e"}
MAX_LINE = 64 * 1024


@pytest.fixture(scope="module")
async def built(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("logs-images")
    return {name: await build_and_push(testenv, work, name) for name in ("logger", "rawlog")}


@pytest.fixture(scope="module")
async def rawlog(daemon: DaemonHandle, inspect: Inspector, built: dict[str, str]) -> str:
    """A function without a watchdog that writes exactly what it is sent; its instance id."""
    await daemon.deploy_ok(function_body("rawlog", built["rawlog"]))
    return (await inspect.instance("rawlog")).id


# --- reading the journal directly ---------------------------------------------------------------


def message(entry: dict[str, Any]) -> bytes:
    """journalctl's JSON gives MESSAGE as a string, or as a list of byte values if not UTF-8."""
    value = entry.get("MESSAGE")
    if isinstance(value, list):
        return bytes(value)
    return str(value).encode()


async def journal(instance: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "journalctl", "--no-pager", "--output=json", "--all", f"OPENFAAS_INSTANCE={instance}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=16 << 20)
    out, _ = await proc.communicate()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def journal_until(instance: str, done: Callable[[list[dict[str, Any]]], bool],
                        timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        entries = await journal(instance)
        if done(entries) or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.1)


def having(*needles: bytes) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda entries: all(any(n in message(e) for e in entries) for n in needles)


# --- faas-cli logs ------------------------------------------------------------------------------------


def logs_query(name: str, *, follow: bool = False, namespace: str = "", since: str = "", tail: int = -1) -> str:
    """faas-cli's query: sorted keys, namespace/since only when set, tail whenever it is not 0."""
    q = [f"follow={'true' if follow else 'false'}", f"name={name}"]
    if namespace:
        q.append(f"namespace={namespace}")
    if since:
        q.append(f"since={urllib.parse.quote(since)}")  # url.Values encodes '+' and ':'
    if tail:
        q.append(f"tail={tail}")
    return "/system/logs?" + "&".join(q)


async def get_logs(daemon: DaemonHandle, path: str) -> list[dict[str, Any]]:
    status, headers, body = await daemon.raw("GET", path, headers={**CLI, **daemon.auth})
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in body.splitlines() if line.strip()]


async def write(daemon: DaemonHandle, data: bytes, fd: int = 1) -> None:
    status, out = await daemon.invoke("rawlog", data, path=f"/write?fd={fd}")
    assert (status, out) == (200, b"written"), (status, out)


# --- tests ----------------------------------------------------------------------------------------------


async def test_watchdog_lines_and_function_output_reach_journald_with_their_fields(
    daemon: DaemonHandle, inspect: Inspector, built: dict[str, str]
) -> None:
    await daemon.deploy_ok(function_body("logger", built["logger"]))
    instance = (await inspect.instance("logger")).id
    tag = uuid.uuid4().hex
    body = json.dumps({"stdout": [f"to stdout {tag}"], "stderr": [f"to stderr {tag}"]}).encode()
    status, out = await daemon.invoke("logger", body)
    assert (status, out) == (200, b"ok\n")

    entries = await journal_until(instance, having(f"to stdout {tag}".encode(), f"to stderr {tag}".encode(),
                                                   b"Started logging"))
    by_text = {message(e): e for e in entries}
    out_entry = next(e for m, e in by_text.items() if f"to stdout {tag}".encode() in m)
    err_entry = next(e for m, e in by_text.items() if f"to stderr {tag}".encode() in m)
    watchdog = next(e for m, e in by_text.items() if b"Started logging" in m)  # the watchdog's own line
    for e, stream, priority in ((out_entry, "stdout", "6"), (err_entry, "stderr", "3"), (watchdog, "stderr", "3")):
        assert e["OPENFAAS_STREAM"] == stream and e["PRIORITY"] == priority, e
        assert e["OPENFAAS_NAME"] == "logger" and e["OPENFAAS_NAMESPACE"] == DEFAULT_NAMESPACE
        assert e["OPENFAAS_INSTANCE"] == instance and e["SYSLOG_IDENTIFIER"] == "openfaas-fn:logger"

    # and back through the API, as `faas-cli logs logger --tail=false` asks for them
    messages = await get_logs(daemon, logs_query("logger"))
    texts = [m["text"] for m in messages]
    assert any(f"to stdout {tag}" in t for t in texts) and any(f"to stderr {tag}" in t for t in texts)
    assert any("Started logging" in t for t in texts)
    for m in messages:  # a shared journald may also hold lines of earlier deploys of "logger"
        assert set(m) == {"name", "namespace", "instance", "timestamp", "text"}
        assert (m["name"], m["namespace"]) == ("logger", DEFAULT_NAMESPACE)
        if tag in m["text"]:
            assert m["instance"] == instance
    stamps = [datetime.fromisoformat(m["timestamp"]) for m in messages]
    assert stamps == sorted(stamps) and all(s.tzinfo is not None for s in stamps)
    assert abs((stamps[-1] - datetime.now(UTC)).total_seconds()) < 60
    # one instance only (the provider's ``instance`` parameter)
    mine = await get_logs(daemon, logs_query("logger") + f"&instance={instance}")
    assert mine and {m["instance"] for m in mine} == {instance}
    # (the watchdog may have logged more since the snapshot, e.g. its access line)
    assert [message(e).decode() for e in entries] == [m["text"] for m in mine][:len(entries)]


async def test_classic_watchdog_lines_arrive(daemon: DaemonHandle, inspect: Inspector, images: PushedImages) -> None:
    await daemon.deploy_ok(function_body("echo-logs", images["echo"]))
    status, out = await daemon.invoke("echo-logs", b"hello")
    assert (status, out) == (200, b"hello")
    instance = (await inspect.instance("echo-logs")).id
    await journal_until(instance, having(b"Forking fprocess", b"Wrote 5 Bytes"))
    texts = [m["text"] for m in await get_logs(daemon, logs_query("echo-logs", namespace=DEFAULT_NAMESPACE))]
    assert any(t.endswith("Forking fprocess.") for t in texts), texts
    assert any("Wrote 5 Bytes" in t for t in texts), texts


async def test_long_lines_and_binary_output_are_kept(daemon: DaemonHandle, rawlog: str) -> None:
    tag = uuid.uuid4().hex.encode()
    long_line = tag + bytes(b"abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(200 * 1024 - len(tag)))
    garbage = tag + bytes(b for b in range(256) if b != 0x0A) * 2
    await write(daemon, long_line + b"\n")
    await write(daemon, garbage + b"\n", fd=2)
    await write(daemon, b"end " + tag + b"\n")

    entries = await journal_until(rawlog, having(b"end " + tag))
    stdout = [message(e) for e in entries if e["OPENFAAS_STREAM"] == "stdout"]
    start = next(i for i, m in enumerate(stdout) if m.startswith(tag))
    pieces = stdout[start:stdout.index(b"end " + tag)]
    assert b"".join(pieces) == long_line  # not a byte lost
    assert len(pieces) == 4 and all(len(p) <= MAX_LINE for p in pieces)
    binary = [e for e in entries if message(e).startswith(tag) and e["OPENFAAS_STREAM"] == "stderr"]
    assert [message(e) for e in binary] == [garbage]  # byte for byte, NULs and invalid UTF-8 included
    assert binary[0]["PRIORITY"] == "3"

    # faas-cli logs rawlog --lines 10: the long line's four entries, the garbage and the end marker
    texts = [m["text"] for m in await get_logs(daemon, logs_query("rawlog", namespace=DEFAULT_NAMESPACE, tail=10))]
    assert texts[-1] == "end " + tag.decode()
    i = next(i for i, t in enumerate(texts) if t.startswith(tag.decode()) and len(t) > 1000)
    assert "".join(texts[i:i + 4]) == long_line.decode()
    assert garbage.decode("utf-8", "replace") in texts


async def test_tail_and_since_select_lines(daemon: DaemonHandle, rawlog: str) -> None:
    tag = uuid.uuid4().hex
    await write(daemon, "".join(f"tail-{i} {tag}\n" for i in range(5)).encode())
    await journal_until(rawlog, having(f"tail-4 {tag}".encode()))
    got = await get_logs(daemon, logs_query("rawlog", namespace=DEFAULT_NAMESPACE, tail=3))
    assert [m["text"] for m in got] == [f"tail-{i} {tag}" for i in (2, 3, 4)]

    # --since: faas-cli sends RFC3339 with whole seconds
    await write(daemon, f"before {tag}\n".encode())
    await journal_until(rawlog, having(f"before {tag}".encode()))
    since = int(time.time()) + 1
    await asyncio.sleep(since - time.time() + 0.05)
    await write(daemon, f"after {tag}\n".encode())
    await journal_until(rawlog, having(f"after {tag}".encode()))
    stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    got = await get_logs(daemon, logs_query("rawlog", namespace=DEFAULT_NAMESPACE, since=stamp))
    assert [m["text"] for m in got] == [f"after {tag}"]
    assert all(datetime.fromisoformat(m["timestamp"]).timestamp() >= since for m in got)
    # an offset works too (faas-cli --since-time with a zone)
    offset = datetime.fromtimestamp(since, UTC).astimezone().isoformat(timespec="seconds")
    got = await get_logs(daemon, logs_query("rawlog", namespace=DEFAULT_NAMESPACE, since=offset))
    assert [m["text"] for m in got] == [f"after {tag}"]


async def test_bad_log_requests(daemon: DaemonHandle, rawlog: str) -> None:
    for query in ("name=rawlog&tail=abc", "name=rawlog&tail=1.5", "name=rawlog&since=yesterday",
                  "name=rawlog&since=2026-13-01T00:00:00Z", "follow=maybe&name=rawlog"):
        status, body = await daemon.request("GET", f"/system/logs?{query}", headers=CLI)
        assert status == 422, (query, status, body)
    for headers in (CLI, {**CLI, "Authorization": "Bearer"}):
        status, _, _ = await daemon.raw("GET", logs_query("rawlog"), headers=headers)
        assert status == 401


def journalctl_followers(function: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"journalctl") and f"OPENFAAS_NAME={function}".encode() in argv:
                found.append(int(proc.name))
    return found


class NDJSONStream:
    """The client side of a follow: reads raw chunks (lines may be long) and splits them."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._buf = b""
        self.messages: list[tuple[float, dict[str, Any]]] = []  # (arrival, message)

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> float:
        """Reads until a message matches; returns when it arrived."""
        async def read() -> float:
            checked = 0
            while True:
                for arrived, m in self.messages[checked:]:
                    if predicate(m):
                        return arrived
                checked = len(self.messages)
                chunk = await self._response.content.readany()
                assert chunk, "the follow stream ended"
                self._buf += chunk
                *lines, self._buf = self._buf.split(b"\n")
                self.messages += [(time.monotonic(), json.loads(line)) for line in lines if line.strip()]

        return await asyncio.wait_for(read(), timeout)


@pytest.fixture
async def follow(daemon: DaemonHandle) -> AsyncIterator[Callable[[str], Any]]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))

    async def open_stream(path: str) -> tuple[aiohttp.ClientResponse, NDJSONStream]:
        response = await session.get(daemon.url + path, headers={**CLI, **daemon.auth})
        return response, NDJSONStream(response)

    yield open_stream
    await session.close()


async def test_follow_streams_new_lines_until_the_client_leaves(
    daemon: DaemonHandle, rawlog: str, follow: Callable[[str], Any]
) -> None:
    tag = uuid.uuid4().hex
    await write(daemon, f"history {tag}\n".encode())
    await journal_until(rawlog, having(f"history {tag}".encode()))
    # faas-cli logs rawlog --lines 1 (without --lines it replays the whole history first)
    response, stream = await follow(logs_query("rawlog", follow=True, tail=1))
    assert response.status == 200
    await stream.until(lambda m: m["text"] == f"history {tag}")
    assert len(stream.messages) == 1
    assert journalctl_followers("rawlog")

    t0 = time.monotonic()
    await write(daemon, f"live-1 {tag}\n".encode())
    arrived = await stream.until(lambda m: m["text"] == f"live-1 {tag}")
    assert arrived - t0 < 5, "a new line must show up while following, not at the end"

    # quiet for a while (several of the gateway's disconnect checks): still open, still streaming
    await asyncio.sleep(3.5)
    await write(daemon, f"live-2 {tag}\n".encode())
    await stream.until(lambda m: m["text"] == f"live-2 {tag}")
    assert all(m["instance"] == rawlog for _, m in stream.messages if tag in m["text"])

    response.close()  # the client leaves: the journalctl behind the stream must go too
    deadline = time.monotonic() + 10
    while True:
        left = journalctl_followers("rawlog")
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert left == []


async def test_output_written_while_the_log_helper_is_down_waits_in_the_pipe(
    daemon: DaemonHandle, rawlog: str
) -> None:
    """The log helper dies: the function keeps answering and writing (containerd's shim holds a
    read end of each FIFO itself, so its writes neither fail nor block while the pipe has room),
    and once the daemon has restarted the helper, what was written meanwhile reaches the journal."""
    assert daemon.daemon is not None
    helper = daemon.daemon.logs
    first = helper.pid
    assert first is not None
    restarts = helper.restarts
    helper.restart_delay = 3.0  # long enough to write while no helper runs
    try:
        tag = uuid.uuid4().hex
        os.kill(first, signal.SIGKILL)
        for _ in range(500):  # until the daemon has noticed (pidfd), at most 5 s
            if helper.pid is None:
                break
            await asyncio.sleep(0.01)
        assert helper.pid is None, "the daemon did not notice that its log helper died"
        t0 = time.monotonic()
        await write(daemon, "".join(f"while down {i} {tag}\n" for i in range(200)).encode())  # ~10 KiB
        await write(daemon, f"stderr while down {tag}\n".encode(), fd=2)
        assert time.monotonic() - t0 < 2, "the function blocked on its output"
        assert helper.pid is None and not any(tag.encode() in message(e) for e in await journal(rawlog))
        entries = await journal_until(rawlog, having(f"while down 199 {tag}".encode(),
                                                     f"stderr while down {tag}".encode()))
        assert helper.pid not in (None, first) and helper.restarts == restarts + 1
        down = [message(e) for e in entries if tag.encode() in message(e) and e["OPENFAAS_STREAM"] == "stdout"]
        assert down == [f"while down {i} {tag}".encode() for i in range(200)]  # none lost, in order
        # and the pipes work as before with the new helper
        await write(daemon, f"after the restart {tag}\n".encode())
        assert having(f"after the restart {tag}".encode())(
            await journal_until(rawlog, having(f"after the restart {tag}".encode())))
    finally:
        helper.restart_delay = 0.1


async def test_a_flood_of_output_never_stalls_the_function(daemon: DaemonHandle, rawlog: str) -> None:
    """32 MiB of 1 KiB lines as fast as the function can write: it keeps answering, the flood
    ends quickly, the gateway stays responsive, and every line is either in the journal or
    counted in a 'dropped' notice (journald is the slow part, never the function)."""
    status, out = await daemon.invoke("rawlog", path="/flood?mb=32&line=1024")
    assert (status, out) == (200, b"started")
    worst = 0.0
    state = b"running"
    deadline = time.monotonic() + 60
    while state == b"running" and time.monotonic() < deadline:
        t = time.monotonic()
        status, out = await daemon.invoke("rawlog", method="GET", timeout=10)
        assert (status, out) == (200, b"raw ok")
        status, _ = await daemon.request("GET", "/healthz", auth=False)
        assert status == 200
        worst = max(worst, time.monotonic() - t)
        status, state = await daemon.invoke("rawlog", method="GET", path="/flood", timeout=10)
        await asyncio.sleep(0.05)
    assert state.startswith(b"done"), state
    _, lines, seconds = state.split()
    assert int(lines) == 32 * 1024
    assert float(seconds) < 30, f"the function needed {seconds.decode()} s to write 32 MiB"
    assert worst < 3, f"an invocation took {worst:.2f} s during the flood"

    tag = uuid.uuid4().hex
    await write(daemon, f"after the flood {tag}\n".encode())
    entries = await journal_until(rawlog, having(f"after the flood {tag}".encode()), timeout=60)
    flood_line = b"z" * 1023
    delivered = sum(1 for e in entries if message(e) == flood_line)
    notices = [message(e) for e in entries if message(e).startswith(b"faasd-py:")]
    dropped = sum(int(n.split()[1]) for n in notices)
    assert delivered + dropped == 32 * 1024, (delivered, notices)
