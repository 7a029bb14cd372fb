"""Function logs without a real journald: the collector writes to a datagram socket the test reads
(parsed as journald would), and /system/logs' reader runs a fake ``journalctl``."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from faasd_py.errors import RuntimeFailure
from faasd_py.provider.journal_writer import DROP_NOTICE, JournalWriter, field
from faasd_py.provider.log_collector import MAX_LINE, LogCollector, LogTarget, cut
from faasd_py.provider.logs import JournalLogs, journalctl_args, parse_entry
from tests.unit.journald_fake import FakeJournald, parse_native, wait_for_condition, write_all

TARGET = LogTarget("team-a", "fn1", "fn1-0123abcd")

@pytest.fixture
async def collector(tmp_path: Path, journald: FakeJournald) -> AsyncIterator[LogCollector]:
    c = LogCollector(tmp_path / "fifo", journal_socket=journald.path)
    yield c
    c.close()


def open_pipes(paths: tuple[str, str]) -> tuple[int, int]:
    """The shim's side: write ends of the two FIFOs (the collector holds a reader, so no wait)."""
    return os.open(paths[0], os.O_WRONLY), os.open(paths[1], os.O_WRONLY)






def first_call(log: Path) -> dict[str, Any]:
    call: dict[str, Any] = json.loads(log.read_text().splitlines()[0])
    return call


async def awrite(fd: int, data: bytes, timeout: float = 20) -> None:
    """Writes from a thread: more than a pipe holds only fits while the loop keeps reading."""
    await asyncio.wait_for(asyncio.to_thread(write_all, fd, data), timeout)


# --- the native protocol ----------------------------------------------------------------------------


def test_field_encoding_is_what_journald_parses() -> None:
    assert field(b"A", b"plain") == b"A=plain\n"
    raw = field(b"B", b"two\nlines\x00")
    assert raw == b"B\n" + struct.pack("<Q", 10) + b"two\nlines\x00\n"
    assert parse_native(field(b"A", b"x=y") + raw) == {"A": b"x=y", "B": b"two\nlines\x00"}


def test_cut_never_splits_a_utf8_character() -> None:
    text = ("é" * 40000).encode()  # 2 bytes each: an odd limit lands inside one
    end = cut(text, 0, 1001)
    assert end == 1000 and text[:end].decode()
    euro = ("x" + "€" * 40000).encode()  # 3 bytes each
    for start in (0, 1):
        end = cut(euro, start, 100)
        assert 97 <= end - start <= 100
        euro[start:end].decode() if start == 0 else None
    binary = b"\x80" * 200  # nothing but continuation bytes: cut at the limit
    assert cut(binary, 0, 100) == 100


# --- the collector ------------------------------------------------------------------------------------


async def test_lines_get_the_function_fields_and_a_priority_per_stream(
    collector: LogCollector, journald: FakeJournald
) -> None:
    out, err = open_pipes(await collector.attach(TARGET))
    try:
        write_all(out, b"hello stdout\nsecond line\r\n")
        write_all(err, b"oops on stderr\n")
        got = await journald.collect(3)
    finally:
        os.close(out)
        os.close(err)
    by_msg = {e["MESSAGE"]: e for e in got}
    assert set(by_msg) == {b"hello stdout", b"second line", b"oops on stderr"}
    for msg, stream, prio in ((b"hello stdout", b"stdout", b"6"), (b"oops on stderr", b"stderr", b"3")):
        e = by_msg[msg]
        assert e["PRIORITY"] == prio and e["OPENFAAS_STREAM"] == stream
        assert e["OPENFAAS_NAME"] == b"fn1" and e["OPENFAAS_NAMESPACE"] == b"team-a"
        assert e["OPENFAAS_INSTANCE"] == b"fn1-0123abcd" and e["SYSLOG_IDENTIFIER"] == b"team-a:fn1"


async def test_long_lines_are_split_without_losing_a_byte(collector: LogCollector, journald: FakeJournald) -> None:
    out, err = open_pipes(await collector.attach(TARGET))
    line = bytes(i % 251 + 1 for i in range(200 * 1024)).replace(b"\n", b"n")  # 200 KiB, no newline inside
    try:
        await awrite(out, line + b"\nafter\n")
        got = await journald.collect(5)
    finally:
        os.close(out)
        os.close(err)
    parts = [e["MESSAGE"] for e in got]
    assert parts[-1] == b"after"
    assert all(len(p) <= MAX_LINE for p in parts) and len(parts) == 5
    assert b"".join(parts[:-1]) == line


async def test_binary_garbage_is_kept_byte_for_byte(collector: LogCollector, journald: FakeJournald) -> None:
    out, err = open_pipes(await collector.attach(TARGET))
    garbage = bytes(b for b in range(256) if b != 0x0A) * 3  # NULs, \r, invalid UTF-8 ...
    try:
        write_all(err, garbage + b"\n")
        got = await journald.collect(1)
    finally:
        os.close(out)
        os.close(err)
    assert [e["MESSAGE"] for e in got] == [garbage]


async def test_a_partial_line_and_unread_data_are_kept_when_the_instance_goes(
    collector: LogCollector, journald: FakeJournald
) -> None:
    out, err = open_pipes(await collector.attach(TARGET))
    await asyncio.sleep(0.05)
    write_all(out, b"complete\nno newline at the end")
    write_all(err, b"last words\n")
    os.close(out)
    os.close(err)
    collector.detach(TARGET.namespace, TARGET.instance)  # before the loop had a chance to read
    got = await journald.collect(3)
    assert sorted(e["MESSAGE"] for e in got) == [b"complete", b"last words", b"no newline at the end"]
    assert not any(map(os.path.exists, collector.paths(TARGET.namespace, TARGET.instance)))


async def test_reattach_after_a_daemon_restart_keeps_what_was_written_meanwhile(
    tmp_path: Path, journald: FakeJournald
) -> None:
    first = LogCollector(tmp_path / "fifo", journal_socket=journald.path)
    paths = await first.attach(TARGET)
    out, err = open_pipes(paths)
    first.close()  # the daemon stops; the task keeps running and writing
    write_all(out, b"while the daemon was away\n")
    second = LogCollector(tmp_path / "fifo", journal_socket=journald.path)
    try:
        assert await second.attach(TARGET) == paths
        got = await journald.collect(1)
    finally:
        os.close(out)
        os.close(err)
        second.close()
    assert [e["MESSAGE"] for e in got] == [b"while the daemon was away"]


async def test_a_stuck_journald_never_stalls_the_pipe(collector: LogCollector, journald: FakeJournald) -> None:
    """Nobody reads the socket: the kernel queue fills, then the backlog, then lines are dropped
    and counted. The function's writes all complete; once journald reads again, a notice says
    how many lines were lost."""
    out, err = open_pipes(await collector.attach(TARGET))
    chunk = (b"x" * 1023 + b"\n") * 1024  # 1 MiB of 1 KiB lines
    t0 = time.monotonic()
    try:
        await awrite(out, chunk * 40, timeout=30)
    finally:
        os.close(out)
        os.close(err)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(0.2)
    assert collector.dropped > 0, "expected drops with a journald that never reads"
    assert elapsed < 30
    got = await journald.drain()
    notices = [e for e in got if e["MESSAGE"].startswith(b"faasd-py:")]
    assert notices and b"dropped" in notices[0]["MESSAGE"], [e["MESSAGE"][:40] for e in got[-3:]]
    assert notices[0]["OPENFAAS_NAME"] == b"fn1" and notices[0]["OPENFAAS_STREAM"] == b"stdout"
    # accounting: every line was either delivered or counted as dropped (the notice says how many)
    delivered = sum(1 for e in got if e["MESSAGE"] == b"x" * 1023)
    counted = sum(int(n["MESSAGE"].split()[1]) for n in notices)
    assert delivered + counted == 40 * 1024


async def test_without_journald_lines_are_drained_and_counted(tmp_path: Path) -> None:
    c = LogCollector(tmp_path / "fifo", journal_socket=str(tmp_path / "nobody-listens"))
    try:
        out, err = open_pipes(await c.attach(TARGET))
        await asyncio.wait_for(asyncio.to_thread(write_all, out, b"line\n" * 200_000), 20)  # 1 MiB, > a pipe
        os.close(out)
        os.close(err)
        await wait_for_condition(lambda: c.dropped >= 200_000, 5)
        assert c.dropped == 200_000
    finally:
        c.close()


async def test_journald_disabled_only_drains(tmp_path: Path) -> None:
    c = LogCollector(tmp_path / "fifo", journald=False)
    try:
        out, err = open_pipes(await c.attach(TARGET))
        await asyncio.wait_for(asyncio.to_thread(write_all, err, b"y" * (4 << 20)), 20)
        os.close(out)
        os.close(err)
        assert c.dropped == 0
    finally:
        c.close()


async def test_writer_backlog_keeps_order_and_is_bounded(journald: FakeJournald) -> None:
    w = JournalWriter(journald.path, max_backlog=64 * 1024)
    header = TARGET.headers["stdout"]
    try:
        for i in range(2000):
            w.send(header, f"{i:05d}".encode() + b"." * 100)
        assert w.backlog <= 64 * 1024 and w.dropped > 0
        got = await journald.drain()
    finally:
        w.close()
    numbers = [int(e["MESSAGE"][:5]) for e in got if not e["MESSAGE"].startswith(b"faasd-py")]
    assert numbers == sorted(numbers) and numbers[0] == 0
    assert len(numbers) + w.dropped == 2000


# --- reading back: journalctl arguments and entries -------------------------------------------------


def test_journalctl_arguments() -> None:
    args = journalctl_args("fn1", "team-a", instance="", tail=-1, since=None, follow=True)
    assert args[0] == "journalctl" and "--output=json" in args and "--all" in args and "--no-pager" in args
    assert "--lines=all" in args and "--follow" in args
    assert args[-2:] == ["OPENFAAS_NAMESPACE=team-a", "OPENFAAS_NAME=fn1"]
    since = datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)
    args = journalctl_args("fn1", "team-a", instance="fn1-1", tail=20, since=since, follow=False)
    assert "--lines=20" in args and "--follow" not in args and "OPENFAAS_INSTANCE=fn1-1" in args
    assert f"--since=@{since.timestamp():.6f}" in args
    # journalctl exits 1 on counts over INT_MAX, which left the client an empty 200: that many lines is all
    assert "--lines=all" in journalctl_args("fn1", "ns", instance="", tail=2**31, since=None, follow=False)
    assert "--lines=all" in journalctl_args("fn1", "ns", instance="", tail=10**30, since=None, follow=False)
    assert "--lines=2147483646" in journalctl_args("fn1", "ns", instance="", tail=2**31 - 2, since=None,
                                                   follow=False)
    ancient = datetime(1, 1, 1, tzinfo=UTC)  # journalctl refuses a negative --since=@ and printed nothing
    assert "--since=@0.000000" in journalctl_args("fn1", "ns", instance="", tail=-1, since=ancient, follow=False)


def test_parse_entry() -> None:
    entry = {"MESSAGE": "hello", "OPENFAAS_NAME": "fn1", "OPENFAAS_NAMESPACE": "team-a",
             "OPENFAAS_INSTANCE": "fn1-1", "__REALTIME_TIMESTAMP": "1795308427487264"}
    msg = parse_entry(json.dumps(entry).encode())
    assert msg is not None
    assert msg.to_json() == {"name": "fn1", "namespace": "team-a", "instance": "fn1-1",
                             "timestamp": "2026-11-22T00:47:07.487264Z", "text": "hello"}
    binary = parse_entry(json.dumps({**entry, "MESSAGE": [104, 105, 255]}).encode())
    assert binary is not None and binary.text == "hi\ufffd"
    assert parse_entry(json.dumps({**entry, "MESSAGE": None}).encode()).text == ""  # type: ignore[union-attr]
    assert parse_entry(b"not json") is None


FAKE_JOURNALCTL = """\
import json, os, sys, time
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\\n")
if os.environ.get("FAKE_FAIL"):
    print("Journal file /var/log/journal/x.journal is truncated, ignoring file.", file=sys.stderr)
    print(os.environ["FAKE_FAIL"], file=sys.stderr)
    sys.exit(1)
for i in range(3):
    print(json.dumps({"MESSAGE": f"line {i}", "OPENFAAS_NAME": "fn1", "OPENFAAS_NAMESPACE": "team-a",
                      "OPENFAAS_INSTANCE": "fn1-1", "__REALTIME_TIMESTAMP": str(1795308427000000 + i)}))
print("x" * (5 << 20))  # an entry over the reader's limit: skipped, not the end of the stream
print(json.dumps({"MESSAGE": "after the big one", "__REALTIME_TIMESTAMP": "1795308428000000"}))
sys.stdout.flush()
if "--follow" in sys.argv:
    time.sleep(600)
"""


@pytest.fixture
def fake_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "journalctl"
    script.write_text(f"#!{sys.executable}\n" + FAKE_JOURNALCTL)
    script.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


async def test_stream_without_follow_ends_with_the_entries(fake_journalctl: Path) -> None:
    texts = [m.text async for m in JournalLogs().stream("fn1", "team-a", tail=5)]
    assert texts == ["line 0", "line 1", "line 2", "after the big one"]
    call = first_call(fake_journalctl)
    assert "--lines=5" in call["argv"] and "--follow" not in call["argv"]


async def test_closing_a_follow_stream_kills_journalctl(fake_journalctl: Path) -> None:
    stream = JournalLogs().stream("fn1", "team-a", follow=True)
    got = [await anext(stream) for _ in range(4)]
    assert [m.text for m in got][-1] == "after the big one"
    pid = first_call(fake_journalctl)["pid"]
    assert alive(pid)
    await stream.aclose()  # what the gateway does when the client has gone
    assert not alive(pid)


async def test_cancelling_a_waiting_follow_stream_kills_journalctl(fake_journalctl: Path) -> None:
    stream = JournalLogs().stream("fn1", "team-a", follow=True)
    for _ in range(4):
        await anext(stream)
    pid = first_call(fake_journalctl)["pid"]
    waiting = asyncio.ensure_future(anext(stream))
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done, "a follow stream must not end by itself"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not alive(pid)


@pytest.mark.parametrize("follow", [False, True])
async def test_journalctl_failing_is_an_error_with_its_own_words(
    fake_journalctl: Path, monkeypatch: pytest.MonkeyPatch, follow: bool
) -> None:
    """It used to end the stream as if there were no entries: an empty 200 for the client."""
    monkeypatch.setenv("FAKE_FAIL", "Failed to open journal directory: Permission denied")
    stream = JournalLogs().stream("fn1", "team-a", follow=follow)
    with pytest.raises(RuntimeFailure) as failed:
        await anext(stream)
    assert failed.value.message == ("function log request failed: journalctl exited with status 1: "
                                    "Failed to open journal directory: Permission denied")


def test_missing_journalctl_is_a_500_before_the_stream_starts(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    """Raised by stream() itself, not on the first message: the gateway has not answered 200 yet."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeFailure, match="journalctl"):
        JournalLogs().stream("fn1", "team-a")


async def test_a_restarted_journald_gets_the_next_lines(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    first = FakeJournald(path)
    w = JournalWriter(str(path))
    header = TARGET.headers["stdout"]
    try:
        w.send(header, b"to the first")
        assert [e["MESSAGE"] for e in await first.collect(1)] == [b"to the first"]
        first.close()
        os.unlink(path)
        second = FakeJournald(path)  # same path, new socket: the old connection is refused
        try:
            w.send(header, b"to the second")
            assert [e["MESSAGE"] for e in await second.collect(1)] == [b"to the second"]
            assert w.dropped == 0
        finally:
            second.close()
    finally:
        w.close()


async def test_lines_lost_while_journald_was_away_are_reported_before_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    w = JournalWriter(str(path))
    out, err = TARGET.headers["stdout"], TARGET.headers["stderr"]
    try:
        for i in range(5):
            w.send(out, f"lost {i}".encode())
        w.send(err, b"lost too")
        assert w.dropped == 6
        j = FakeJournald(path)
        try:
            await asyncio.sleep(1.1)  # the writer retries a missing journald at most once a second
            w.send(out, b"back")
            got = await j.collect(3)
        finally:
            j.close()
    finally:
        w.close()
    assert [(e["OPENFAAS_STREAM"], e["MESSAGE"]) for e in got] == [
        (b"stdout", DROP_NOTICE.format(count=5).encode()),
        (b"stderr", DROP_NOTICE.format(count=1).encode()),
        (b"stdout", b"back"),
    ]


async def test_the_in_loop_collector_also_spares_what_it_drains(collector: LogCollector) -> None:
    drained = await collector.attach(LogTarget("team-a", "fn1", "fn1-0123abcd"))
    gone = collector.paths("team-a", "fn2-89abcdef")
    (gone[0].parent).mkdir(parents=True, exist_ok=True)
    for path in gone:
        os.mkfifo(path)
    assert sorted(collector.remove_stale(["team-a"], set())) == sorted(gone)
    assert all(map(os.path.exists, drained)) and not any(map(os.path.exists, gone))
