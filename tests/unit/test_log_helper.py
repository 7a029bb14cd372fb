"""The log helper: a real helper process (python -m faasd_py.provider.log_helper) drains FIFOs
in a temp dir into a fake journald (a datagram socket the test reads), driven by LogHelper
as the daemon drives it. The test plays the shim: it writes into the FIFOs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from faasd_py.provider import log_helper
from faasd_py.provider.log_collector import LogTarget, make_fifos
from faasd_py.provider.log_helper import LogHelper
from tests.unit.journald_fake import FakeJournald, wait_for_condition, write_all

TARGET = LogTarget("team-a", "fn1", "fn1-0123abcd")
OTHER = LogTarget("team-a", "fn2", "fn2-89abcdef")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def helper(tmp_path: Path, journald: FakeJournald) -> AsyncIterator[LogHelper]:
    h = LogHelper(tmp_path / "fifo", journal_socket=journald.path)
    h.start()
    yield h
    h.close()


def shim_open(paths: tuple[str, str]) -> tuple[int, int]:
    """Like containerd's shim: a write end, opened O_RDWR so the pipe keeps a reader of its own
    (the shim holds one too), whatever the helper does."""
    return os.open(paths[0], os.O_RDWR), os.open(paths[1], os.O_RDWR)


@contextlib.contextmanager
def reading_in_a_thread(journald: FakeJournald) -> Iterator[None]:
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            select.select([journald.sock], [], [], 0.02)
            journald._read()

    thread = threading.Thread(target=pump)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        journald._read()


def messages(journald: FakeJournald) -> list[bytes]:
    return [e["MESSAGE"] for e in journald.received]


def proc_file(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text()


def python(script: str) -> subprocess.Popen[bytes]:
    """A stand-in for the daemon: a Python process running ``script``; its stdout is a pipe."""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_lines_and_notes_reach_journald_from_the_helper_process(
    helper: LogHelper, journald: FakeJournald
) -> None:
    paths = await helper.attach(TARGET)
    for p in paths:  # there before attach returns, whatever the helper is doing: the shim may open them
        mode = os.stat(p).st_mode
        assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o600
    assert paths == tuple(str(p) for p in helper.paths(TARGET.namespace, TARGET.instance))
    out, err = shim_open(paths)
    try:
        write_all(out, b"hello stdout\nsecond line\r\n")
        write_all(err, b"oops on stderr\n")
        helper.note(TARGET, "faasd-py: restarted")
        got = await journald.collect(4)
    finally:
        os.close(out)
        os.close(err)
    by_msg = {e["MESSAGE"]: e for e in got}
    assert set(by_msg) == {b"hello stdout", b"second line", b"oops on stderr", b"faasd-py: restarted"}
    for msg, stream, prio in ((b"hello stdout", b"stdout", b"6"), (b"oops on stderr", b"stderr", b"3"),
                              (b"faasd-py: restarted", b"stderr", b"3")):
        e = by_msg[msg]
        assert e["PRIORITY"] == prio and e["OPENFAAS_STREAM"] == stream
        assert e["OPENFAAS_NAME"] == b"fn1" and e["OPENFAAS_NAMESPACE"] == b"team-a"
        assert e["OPENFAAS_INSTANCE"] == b"fn1-0123abcd" and e["SYSLOG_IDENTIFIER"] == b"team-a:fn1"
    # another process did it, under its own name
    assert helper.pid is not None and helper.pid != os.getpid()
    assert proc_file(helper.pid, "comm").strip() == "faasd-py-logs"


async def test_a_killed_helper_is_restarted_and_nothing_written_meanwhile_is_lost(
    tmp_path: Path, journald: FakeJournald
) -> None:
    h = LogHelper(tmp_path / "fifo", journal_socket=journald.path, restart_delay=0.5)
    fds: list[int] = []
    try:
        for target in (TARGET, OTHER):
            fds += shim_open(await h.attach(target))
        write_all(fds[0], b"before\n")
        await journald.collect(1)
        first = h.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_for_condition(lambda: h.pid is None, 5)
        assert h.pid is None, "the client did not notice that its helper died"
        # written while no helper runs: waits in the pipes (the shim's own read end: no EPIPE)
        write_all(fds[0], b"while down 1\n")
        write_all(fds[3], b"while down 2\n")
        h.note(OTHER, "a note while down")
        assert h.pid is None and messages(journald) == [b"before"]
        await journald.collect(4)
        assert h.restarts == 1 and h.pid not in (None, first)
        write_all(fds[1], b"after\n")
        got = await journald.collect(5)
    finally:
        for fd in fds:
            os.close(fd)
        h.close()
    assert sorted(e["MESSAGE"] for e in got) == [b"a note while down", b"after", b"before", b"while down 1",
                                                b"while down 2"]
    by_msg = {e["MESSAGE"]: e for e in got}
    assert by_msg[b"while down 2"]["OPENFAAS_INSTANCE"] == OTHER.instance.encode()
    assert by_msg[b"while down 2"]["OPENFAAS_STREAM"] == b"stderr"


async def test_detach_keeps_the_last_words_and_removes_the_fifos_at_once(
    helper: LogHelper, journald: FakeJournald
) -> None:
    paths = await helper.attach(TARGET)
    out, err = shim_open(paths)
    write_all(out, b"first\n")
    await journald.collect(1)  # the helper has the pipes open
    write_all(out, b"complete\nno newline at the end")
    write_all(err, b"last words\n")
    os.close(out)
    os.close(err)
    helper.detach(TARGET.namespace, TARGET.instance)
    assert not any(map(os.path.exists, paths))
    got = await journald.collect(4)
    assert sorted(e["MESSAGE"] for e in got) == [b"complete", b"first", b"last words", b"no newline at the end"]


async def test_a_fifo_detached_before_the_helper_got_to_it_is_not_created_again(
    helper: LogHelper, journald: FakeJournald
) -> None:
    """attach, detach, attach of one instance in a row (a failed start, then a restart): the helper
    sees the commands late and must neither resurrect the removed FIFOs nor lose the new ones."""
    await helper.attach(OTHER)
    helper.detach(OTHER.namespace, OTHER.instance)
    paths = await helper.attach(TARGET)
    helper.detach(TARGET.namespace, TARGET.instance)
    assert await helper.attach(TARGET) == paths
    out, err = shim_open(paths)
    try:
        write_all(out, b"second life\n")
        got = await journald.collect(1)
    finally:
        os.close(out)
        os.close(err)
    assert [e["MESSAGE"] for e in got] == [b"second life"]
    await asyncio.sleep(0.2)
    assert not any(map(os.path.exists, helper.paths(OTHER.namespace, OTHER.instance)))


async def test_remove_stale_spares_what_is_attached_kept_or_elsewhere(helper: LogHelper, tmp_path: Path) -> None:
    """At start the daemon removes the FIFOs of instances that went while it was down; what it
    drains, what it names as known, other namespaces and non-FIFO files stay."""
    attached = await helper.attach(TARGET)
    known = helper.paths("team-a", "fn3-11111111")
    gone = helper.paths("team-a", "fn4-22222222")
    elsewhere = helper.paths("team-b", "fn5-33333333")
    for paths in (known, gone, elsewhere):
        make_fifos(paths)
    stray = tmp_path / "fifo" / "team-a" / "notes.txt"
    stray.write_text("not ours to remove")
    removed = helper.remove_stale(["team-a", "missing-ns"], {("team-a", "fn3-11111111")})
    assert sorted(removed) == sorted(gone)
    assert not any(map(os.path.exists, gone))
    assert all(stat.S_ISFIFO(os.stat(p).st_mode) for p in (*map(Path, attached), *known, *elsewhere))
    assert stray.exists()
    assert sorted(helper.remove_stale(["team-a"], set())) == sorted(known)  # the attached one still stays
    assert all(map(os.path.exists, attached))


async def test_close_drains_what_the_pipes_hold_and_keeps_the_fifos(tmp_path: Path, journald: FakeJournald) -> None:
    h = LogHelper(tmp_path / "fifo", journal_socket=journald.path)
    paths = await h.attach(TARGET)
    out, err = shim_open(paths)
    try:
        write_all(out, b"x" * 100 + b"\n")
        await journald.collect(1)
        write_all(out, b"".join(b"line %d\n" % i for i in range(1000)))  # then the daemon stops at once
        pid = h.pid
        assert pid is not None
        t0 = time.monotonic()
        with reading_in_a_thread(journald):  # close() blocks the loop the fake journald reads on
            h.close()
        assert time.monotonic() - t0 < 3
        assert not alive(pid)
        got = await journald.collect(1001)
    finally:
        os.close(out)
        os.close(err)
    assert [e["MESSAGE"] for e in got[1:]] == [b"line %d" % i for i in range(1000)]
    assert all(map(os.path.exists, paths)), "the next daemon reattaches to them"
    assert h.pid is None


async def test_journald_off_only_drains(tmp_path: Path, journald: FakeJournald) -> None:
    h = LogHelper(tmp_path / "fifo", journald=False, journal_socket=journald.path)
    try:
        out, err = shim_open(await h.attach(TARGET))
        await asyncio.wait_for(asyncio.to_thread(write_all, err, b"y\n" * (2 << 20)), 20)  # 4 MiB, > a pipe
        h.note(TARGET, "nobody hears this")
        os.close(out)
        os.close(err)
    finally:
        h.close()
    assert await journald.drain(quiet=0.3) == []


async def test_a_helper_that_stops_reading_commands_is_replaced(
    tmp_path: Path, journald: FakeJournald, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_helper, "MAX_PENDING", 16 * 1024)
    h = LogHelper(tmp_path / "fifo", journal_socket=journald.path)
    out, err = shim_open(await h.attach(TARGET))
    try:
        pid = h.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # wedged
        for i in range(200):  # 200 KiB: the pipe (64 KiB), then the bounded buffer overflow
            h.note(TARGET, f"{i} " + "n" * 1024)
        await wait_for_condition(lambda: h.restarts == 1, 5)
        assert h.restarts == 1 and h.pid != pid and not alive(pid)
        assert h.lost_notes > 0
        write_all(out, b"still drained\n")
        journald.start()
        await wait_for_condition(lambda: b"still drained" in messages(journald), 10)
    finally:
        os.close(out)
        os.close(err)
        h.close()
    assert b"still drained" in messages(journald)


def helper_process(tmp_path: Path, journald: FakeJournald) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-S", "-m", "faasd_py.provider.log_helper", "--fifo-dir", str(tmp_path / "fifo"),
         "--journal-socket", journald.path],
        stdin=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


async def test_bad_commands_are_skipped_and_eof_ends_the_helper(tmp_path: Path, journald: FakeJournald) -> None:
    """The protocol as the helper reads it, without the client: one JSON object per line."""
    helper = LogHelper(tmp_path / "fifo")  # only for the paths and FIFOs
    paths = helper.paths(TARGET.namespace, TARGET.instance)
    make_fifos(paths)
    out = os.open(paths[0], os.O_RDWR)
    proc = helper_process(tmp_path, journald)
    assert proc.stdin is not None
    try:
        target = {"ns": TARGET.namespace, "function": TARGET.function, "instance": TARGET.instance}
        lines = [b"not json", b"[1, 2]", json.dumps({"cmd": "reboot"}).encode(),
                 json.dumps({"cmd": "attach", "ns": "x"}).encode(),
                 json.dumps({"cmd": "attach", "ns": "x", "function": "f", "instance": "missing"}).encode(),
                 json.dumps({"cmd": "note", **target, "message": 5}).encode(),
                 json.dumps({"cmd": "attach", **target}).encode(),
                 json.dumps({"cmd": "note", **target, "message": "noted"}).encode()]
        proc.stdin.write(b"\n".join(lines) + b"\n")
        proc.stdin.flush()
        write_all(out, b"through the helper\n")
        got = await journald.collect(2)
        assert sorted(e["MESSAGE"] for e in got) == [b"noted", b"through the helper"]
        assert proc.poll() is None
        proc.stdin.close()  # the daemon is gone
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
    finally:
        os.close(out)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    assert not (tmp_path / "fifo" / "x").exists(), "the helper never creates FIFOs"


async def test_the_helper_dies_with_the_daemon(tmp_path: Path, journald: FakeJournald) -> None:
    """A daemon killed with SIGKILL: its helper exits too (stdin EOF, and PR_SET_PDEATHSIG)."""
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from faasd_py.provider.log_helper import LogHelper\n"
        "async def main():\n"
        f"    h = LogHelper(Path({str(tmp_path / 'fifo')!r}), journal_socket={journald.path!r})\n"
        "    h.start()\n"
        "    print(h.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    daemon = python(script)
    try:
        assert daemon.stdout is not None
        pid = int(await asyncio.wait_for(asyncio.to_thread(daemon.stdout.readline), 10))
        assert alive(pid)
        daemon.kill()
        daemon.wait()
        await wait_for_condition(lambda: not alive(pid), 5)
        assert not alive(pid)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()


def test_the_helper_imports_only_the_stdlib_and_the_collector() -> None:
    """What the helper process loads (as it is started: -S, ssl blocked): no gRPC, no aiohttp."""
    code = ("import sys; sys.modules['ssl'] = None; import faasd_py.provider.log_helper; "
            "print(' '.join(m for m, mod in sys.modules.items() if mod is not None))")
    loaded = set(subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split())
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & {"grpc", "aiohttp", "google", "yaml", "pyroute2", "systemd", "prometheus_client", "ssl"}
    assert {m for m in loaded if m.startswith("faasd_py")} == {
        "faasd_py", "faasd_py.provider", "faasd_py.provider.log_helper", "faasd_py.provider.log_collector",
        "faasd_py.provider.journal_writer"}
    assert "asyncio" in tops  # the check sees what was loaded


async def test_two_hundred_idle_functions_cost_little(tmp_path: Path, journald: FakeJournald) -> None:
    """One process for all of them: its resident size with 400 open FIFOs (reported, and bounded)."""
    h = LogHelper(tmp_path / "fifo", journal_socket=journald.path)
    try:
        for i in range(200):
            await h.attach(LogTarget("team-a", f"fn{i}", f"fn{i}-0000abcd"))
        out, err = shim_open(await h.attach(TARGET))
        write_all(out, b"last one attached\n")
        await journald.collect(1)  # every attach before it is done
        os.close(out)
        os.close(err)
        assert h.pid is not None
        fds = len(os.listdir(f"/proc/{h.pid}/fd"))
        status = dict(line.split(":", 1) for line in proc_file(h.pid, "status").splitlines())
        rss_kib = int(status["VmRSS"].split()[0])
    finally:
        h.close()
    print(f"log helper with 201 instances: VmRSS {rss_kib} KiB, RssAnon {status['RssAnon'].strip()}, {fds} fds")
    assert fds >= 402
    assert rss_kib < 40 * 1024
