"""The watchdog (faasd_py.watchdog) against the OpenFaaS watchdog contract.

Each test runs the real watchdog as a subprocess of the image's interpreter (/usr/bin/python3.11)
on a free loopback port, with its own TMPDIR (so its /tmp/.lock is private), and talks raw HTTP
to it, so framing, headers and dropped connections are visible exactly as a client sees them.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from faasd_py.watchdog.config import Config, format_duration, parse_bool, parse_duration
from faasd_py.watchdog.http11 import BadRequest, canonical_key, read_request, unquote_path
from tests.infra import free_port

PYTHON = "/usr/bin/python3.11"
REPO = Path(__file__).resolve().parents[2]
WATCHDOG_DIR = REPO / "faasd_py" / "watchdog"

pytestmark = pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"{PYTHON} not installed")


# --- a tiny raw HTTP client ----------------------------------------------------------------


@dataclass
class Resp:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw_head: str


def _read_response(f: io.BufferedReader, head_only: bool = False) -> Resp:
    status_line = f.readline().decode("latin-1")
    if not status_line:
        raise ConnectionError("empty reply from server")
    _, code, reason = [*status_line.rstrip("\r\n").split(" ", 2), ""][:3]
    headers: dict[str, str] = {}
    raw = status_line
    while True:
        line = f.readline().decode("latin-1")
        raw += line
        if line in ("\r\n", "\n", ""):
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if head_only or int(code) in (204, 304) or int(code) < 200:
        pass
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            body += f.read(size)
            f.readline()
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    else:
        body = f.read()
    return Resp(int(code), reason, headers, body, raw)


def request(port: int, method: str = "GET", path: str = "/", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> Resp:
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body is not None and "Transfer-Encoding" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + (body or b""))
        with s.makefile("rb") as f:
            return _read_response(f, head_only=method == "HEAD")


# --- running the watchdog ------------------------------------------------------------------


class Watchdog:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.tmp = tmp / f"wd-{self.port}"
        self.tmp.mkdir()
        self.log_path = self.tmp / "watchdog.log"
        full = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TMPDIR": str(self.tmp), "port": str(self.port),
                "bind_address": "127.0.0.1", "healthcheck_interval": "0", "metrics_port": str(free_port()), **env}
        self.metrics_port = int(full["metrics_port"])  # never the fixed 8081: tests run side by side
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([PYTHON, "-S", "-m", "faasd_py.watchdog"], env=full, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def lock(self) -> Path:
        return self.tmp / ".lock"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"watchdog exited {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError):
                if request(self.port, path="/_/health", timeout=1).status == 200:
                    return time.monotonic() - self.started
            time.sleep(0.002)
        raise AssertionError(f"watchdog not healthy within {timeout}s:\n{self.logs()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


StartWatchdog = Callable[..., Watchdog]


@pytest.fixture
def start_watchdog(tmp_path: Path) -> Iterator[StartWatchdog]:
    started: list[Watchdog] = []

    def start(healthy: bool = True, **env: str) -> Watchdog:
        wd = Watchdog(tmp_path, env)
        started.append(wd)
        if healthy:
            wd.wait_healthy()
        return wd

    yield start
    for wd in started:
        wd.kill()


def script(tmp_path: Path, name: str, body: str) -> str:
    """A Python fprocess (fprocess is split on spaces: no shell, so scripts live in files)."""
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return f"{PYTHON} -S {p}"


# --- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5.0), ("1m30s", 90.0), ("250ms", 0.25), ("10", 10.0), ("1h", 3600.0), ("1.5s", 1.5), ("0", 0.0),
    ("2h45m", 9900.0), ("", None), ("abc", None), ("5x", None), ("s", None),
])
def test_parse_duration_accepts_go_durations_and_integer_seconds(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (30, "30s"), (90, "1m30s"), (0.5, "500ms"), (0, "0s"), (3600, "1h0m0s"), (1.5, "1.5s"),
])
def test_format_duration_matches_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_config_defaults_follow_each_watchdog() -> None:
    classic = Config({"fprocess": "cat"})
    assert (classic.mode, classic.port, classic.read_timeout, classic.write_timeout) == ("classic", 8080, 30, 30)
    assert classic.exec_timeout == 0 and classic.healthcheck_interval == 30 and classic.combine_output
    assert classic.lock_path == "/tmp/.lock"
    http = Config({"mode": "http", "fprocess": "x", "write_timeout": "5s", "exec_timeout": "oops",
                   "upstream_url": "http://127.0.0.1:5000/ignored"})
    assert http.exec_timeout == 30 and http.healthcheck_interval == 5 and not http.combine_output
    assert http.content_type == "application/octet-stream"
    assert http.upstream_address() == ("127.0.0.1", 5000)
    assert Config({"fprocess": "a  b c"}).argv == ["a", "b", "c"]
    assert parse_bool("TRUE", False) and not parse_bool("0", True) and parse_bool("maybe", True)


def test_canonical_header_keys_and_path_decoding() -> None:
    assert canonical_key("x-forwarded-by") == "X-Forwarded-By"
    assert canonical_key("CONTENT-type") == "Content-Type"
    assert canonical_key("bad header") == "bad header"
    assert unquote_path("/a%20b/%E2%9C%93/%zz") == "/a b/\u2713/%zz"


def _parse(raw: bytes) -> tuple[str, bytes]:
    req = read_request(io.BufferedReader(io.BytesIO(raw)))
    assert req is not None
    return req.method + " " + req.path + "?" + req.query, req.body.read_all()


def test_request_parser_reads_chunked_and_sized_bodies() -> None:
    assert _parse(b"POST /a?b=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n"
                  b"Trailer: 1\r\n\r\n") == ("POST /a?b=1", b"abcde")
    assert _parse(b"PUT /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyzEXTRA") == ("PUT /x?", b"wxyz")
    assert read_request(io.BufferedReader(io.BytesIO(b""))) is None


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
])
def test_request_parser_rejects_malformed_requests(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        _parse(raw)


def test_watchdog_imports_only_the_standard_library() -> None:
    """It is copied alone into images: anything beyond the stdlib would be missing there."""
    for path in WATCHDOG_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name}"


# --- health, lock file, start-up -------------------------------------------------------------


def test_health_follows_the_lock_file(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    r = request(wd.port, path="/_/health")
    assert (r.status, r.body, r.headers["content-type"]) == (200, b"OK", "text/plain; charset=utf-8")
    assert wd.lock.exists() and (wd.lock.stat().st_mode & 0o777) == 0o660
    assert request(wd.port, "POST", "/_/health", b"").status == 405
    wd.lock.unlink()
    r = request(wd.port, path="/_/health")
    assert (r.status, r.body) == (503, b"")
    logs = wd.logs()
    for line in ("Timeouts: read: 30s write: 30s hard: 0s health: 0s.", f"Listening on port: {wd.port}",
                 f"Writing lock-file to: {wd.lock}"):
        assert line in logs
    assert logs.split(" ", 2)[0].count("/") == 2  # Go log date prefix YYYY/MM/DD


def test_suppress_lock_keeps_health_503(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(healthy=False, fprocess="cat", suppress_lock="true")
    deadline = time.monotonic() + 5
    while "Listening on port" not in wd.logs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert request(wd.port, path="/_/health").status == 503
    assert request(wd.port, "POST", "/", b"still works").body == b"still works"


def test_startup_to_first_health_200_is_fast(start_watchdog: StartWatchdog) -> None:
    times = sorted(start_watchdog(fprocess="cat").wait_healthy() for _ in range(5))
    print(f"\nwatchdog spawn -> first /_/health 200: min {times[0] * 1000:.1f} ms, "
          f"median {times[2] * 1000:.1f} ms")
    assert times[2] < 0.25


@pytest.mark.parametrize(("env", "code"), [
    ({"fprocess": "cat", "mode": "bogus"}, 1),
    ({}, 1),
    ({"fprocess": "cat", "TMPDIR": "/nonexistent/dir"}, 2),
])
def test_bad_configuration_exits(start_watchdog: StartWatchdog, env: dict[str, str], code: int) -> None:
    wd = start_watchdog(healthy=False, **env)
    assert wd.wait_exit() == code


# --- classic mode --------------------------------------------------------------------------


def test_classic_echoes_body_with_duration_and_content_type(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="rev")
    r = request(wd.port, "POST", "/", b"hello", {"Content-Type": "application/json"})
    assert (r.status, r.body, r.headers["content-type"]) == (200, b"olleh", "application/json")
    assert float(r.headers["x-duration-seconds"]) > 0
    r = request(wd.port, "GET", "/")
    assert (r.status, r.headers["content-type"]) == (200, "text/plain; charset=utf-8")  # sniffed
    logs = wd.logs()
    assert "Forking fprocess." in logs and "Wrote 5 Bytes - Duration: " in logs


def test_classic_content_type_setting_wins(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat", content_type="text/html")
    r = request(wd.port, "POST", "/", b"<p>", {"Content-Type": "application/json"})
    assert r.headers["content-type"] == "text/html"


def test_classic_cgi_environment(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "env.py", """
        import json, os
        print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("Http_") or k == "fprocess"}))
    """)
    wd = start_watchdog(fprocess=fp)
    r = request(wd.port, "POST", "/a%20b/c?x=1&y=%20", b"data",
                {"X-Forwarded-By": "tester", "x-custom-thing": "v1", "Content-Type": "text/plain"})
    env = json.loads(r.body)
    assert env["Http_Method"] == "POST" and env["Http_Path"] == "/a b/c" and env["Http_Query"] == "x=1&y=%20"
    assert env["Http_X_Forwarded_By"] == "tester" and env["Http_X_Custom_Thing"] == "v1"
    assert env["Http_Content_Type"] == "text/plain" and env["Http_Host"] == f"127.0.0.1:{wd.port}"
    assert env["Http_Content_Length"] == env["Http_ContentLength"] == "4"
    assert env["fprocess"] == fp
    env = json.loads(request(wd.port, "POST", "/", b"3\r\nabc\r\n0\r\n\r\n",
                             {"Transfer-Encoding": "chunked"}).body)
    assert env["Http_Transfer_Encoding"] == "chunked" and env["Http_Content_Length"] == "-1"
    assert "Http_Query" not in env


def test_classic_nonzero_exit_is_500_with_output(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "fail.py", """
        import sys
        sys.stdout.write("out;"); sys.stdout.flush()
        sys.stderr.write("err;"); sys.exit(3)
    """)
    wd = start_watchdog(fprocess=fp)
    r = request(wd.port, "POST", "/", b"")
    assert (r.status, r.body) == (500, b"exit status 3\nout;err;")
    assert "x-duration-seconds" not in r.headers
    wd2 = start_watchdog(fprocess=fp, combine_output="false")
    r = request(wd2.port, "POST", "/", b"")
    assert (r.status, r.body) == (500, b"exit status 3\nout;")
    assert "stderr: err;" in wd2.logs()


def test_classic_methods(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert request(wd.port, method, "/", b"x" if method != "GET" else None).status == 200
    for method in ("OPTIONS", "HEAD"):
        assert request(wd.port, method, "/").status == 405


def test_classic_exec_timeout_kills_and_answers_408(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "slow.py", "import time; time.sleep(5)\n")
    wd = start_watchdog(fprocess=fp, exec_timeout="300ms", write_timeout="3s")
    t0 = time.monotonic()
    r = request(wd.port, "POST", "/", b"")
    assert (r.status, r.body) == (408, b"Killed process.\n")
    assert 0.25 < time.monotonic() - t0 < 2.0
    assert f"Killing process: {fp}" in wd.logs()


def test_response_after_write_timeout_is_dropped(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "slow.py", "import time; time.sleep(0.6); print('late')\n")
    wd = start_watchdog(fprocess=fp, write_timeout="300ms")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        request(wd.port, "POST", "/", b"")
    assert time.monotonic() - t0 >= 0.55  # the handler ran to completion, then the reply was lost


def test_classic_runs_requests_concurrently(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "nap.py", "import time, sys; time.sleep(0.5); sys.stdout.write('done')\n")
    wd = start_watchdog(fprocess=fp)
    results: list[Resp] = []

    def call() -> None:
        results.append(request(wd.port, "POST", "/", b""))

    threads = [threading.Thread(target=call) for _ in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.body for r in results] == [b"done"] * 6
    assert time.monotonic() - t0 < 1.4  # 6 x 0.5 s sequentially would be 3 s


def test_max_inflight_answers_429(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "nap.py", "import time; time.sleep(0.6)\n")
    wd = start_watchdog(fprocess=fp, max_inflight="1")
    first = threading.Thread(target=request, args=(wd.port, "POST", "/", b""))
    first.start()
    time.sleep(0.2)
    r = request(wd.port, "POST", "/", b"")
    first.join()
    assert r.status == 429
    assert r.body == b"Concurrent request limit exceeded. Max concurrent requests: 1"
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["x-openfaas-internal"] == "faas-middleware"
    assert request(wd.port, path="/_/health").status == 200  # health is not limited
    assert request(wd.port, "POST", "/", b"").status == 200  # a slot is free again


def test_keep_alive_and_expect_continue(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none")
        assert _read_response(f).body == b"one"
        s.sendall(b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        interim = f.readline() + f.readline()
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"two")
        assert _read_response(f).body == b"two"


def test_read_timeout_closes_idle_and_slow_connections(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat", read_timeout="300ms")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")  # body never completes
        assert s.recv(100) == b""  # closed, no response
        assert 0.25 < time.monotonic() - t0 < 2
    assert request(wd.port, "POST", "/", b"fine").body == b"fine"


def test_malformed_request_gets_400(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(b"NOT-HTTP\r\n\r\n")
        assert _read_response(f).status == 400


def test_sigterm_drains_then_exits_zero(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "nap.py", "import time, sys; time.sleep(0.8); sys.stdout.write('finished')\n")
    wd = start_watchdog(fprocess=fp, healthcheck_interval="600ms")
    inflight: list[Resp] = []
    t = threading.Thread(target=lambda: inflight.append(request(wd.port, "POST", "/", b"")))
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    wd.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    assert not wd.lock.exists()
    assert request(wd.port, path="/_/health").status == 503
    assert request(wd.port, "POST", "/", b"during drain").status == 200  # still serving
    assert wd.wait_exit() == 0
    t.join()
    assert inflight[0].body == b"finished"  # the in-flight request was not cut
    assert 0.55 < time.monotonic() - t0 < 3
    logs = wd.logs()
    assert "SIGTERM: no new connections in 600ms" in logs and "Exiting. Active connections: 0" in logs


# --- of-watchdog fork modes ----------------------------------------------------------------


def test_streaming_mode_streams_output(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "stream.py", """
        import sys, time
        data = sys.stdin.read()
        for i in range(3):
            sys.stdout.write(f"{i}:{data};"); sys.stdout.flush(); time.sleep(0.2)
        sys.stderr.write("a log line\\n")
    """)
    wd = start_watchdog(fprocess=fp, mode="streaming")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        t0 = time.monotonic()
        head = f.readline()
        first_byte = time.monotonic() - t0
        rest = _read_response(io.BufferedReader(io.BytesIO(head + f.read())))
    assert head.startswith(b"HTTP/1.1 200")
    assert first_byte < 0.3  # the head went out with the first chunk, not after the process ended
    assert rest.body == b"0:hi;1:hi;2:hi;"
    assert rest.headers["content-type"] == "application/octet-stream"
    assert rest.headers["transfer-encoding"] == "chunked" and "x-duration-seconds" not in rest.headers
    time.sleep(0.1)
    assert "stderr: a log line" in wd.logs()


def test_streaming_mode_failure_before_output_is_500(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    wd = start_watchdog(fprocess=script(tmp_path, "f.py", "import sys; sys.exit(4)\n"), mode="streaming")
    r = request(wd.port, "POST", "/", b"")
    assert (r.status, r.body) == (500, b"exit status 4")


def test_serializing_mode(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    wd = start_watchdog(fprocess="rev", mode="serializing")
    r = request(wd.port, "OPTIONS", "/", b"abc")  # of-watchdog passes every method
    assert (r.status, r.body, r.headers["content-type"]) == (200, b"cba", "application/octet-stream")
    assert "x-duration-seconds" in r.headers
    bad = start_watchdog(fprocess=script(tmp_path, "f.py", "print('discarded'); raise SystemExit(2)\n"),
                         mode="serializing")
    r = request(bad.port, "POST", "/", b"")
    assert (r.status, r.body) == (500, b"exit status 2")
    r = request(bad.port, path="/_/ready")
    assert (r.status, r.body) == (200, b"OK")


# --- http mode -----------------------------------------------------------------------------

UPSTREAM = """
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
time.sleep(float(os.environ.get("UPSTREAM_DELAY", "0")))

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path.startswith("/sleep"):
            time.sleep(1)
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = f"data: {i}\\n\\n".encode()
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data)); self.wfile.flush(); time.sleep(0.2)
            self.wfile.write(b"0\\r\\n\\r\\n")
            return
        if self.path.startswith("/die"):
            os._exit(7)
        if self.path.startswith("/short"):  # promises 100 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
            return
        out = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                          "body": body.decode(), "te": self.headers.get("Transfer-Encoding")}).encode()
        self.send_response(201 if self.path.startswith("/created") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Upstream", "yes")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _any

    def log_message(self, *args):
        sys.stderr.write("upstream request\\n")

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def http_watchdog(start_watchdog: StartWatchdog, tmp_path: Path) -> Callable[..., Watchdog]:
    def start(healthy: bool = True, **env: str) -> Watchdog:
        up = free_port()
        fp = script(tmp_path, "upstream.py", UPSTREAM) + f" {up}"
        return start_watchdog(healthy=healthy, mode="http", fprocess=fp, upstream_url=f"http://127.0.0.1:{up}", **env)

    return start


def test_http_mode_proxies_method_path_query_headers_body(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog()
    r = request(wd.port, "PATCH", "/created/x?a=1&b=two", b"payload", {"X-Custom": "abc", "Content-Type": "a/b"})
    assert r.status == 201 and r.reason == "Created"
    assert r.headers["x-upstream"] == "yes" and float(r.headers["x-duration-seconds"]) >= 0
    echo = json.loads(r.body)
    assert (echo["method"], echo["path"], echo["body"]) == ("PATCH", "/created/x?a=1&b=two", "payload")
    assert echo["headers"]["X-Custom"] == "abc" and echo["headers"]["Content-Type"] == "a/b"
    assert echo["headers"]["Content-Length"] == "7"
    # a chunked request reaches an upstream that cannot read chunked bodies with a Content-Length
    echo = json.loads(request(wd.port, "POST", "/", b"5\r\nhello\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}).body)
    assert echo["body"] == "hello" and echo["te"] is None
    assert request(wd.port, "HEAD", "/").status == 200
    time.sleep(0.1)
    assert "PATCH /created/x?a=1&b=two - 201 Created - ContentLength:" in wd.logs()
    assert "stderr: upstream request" in wd.logs()


def test_http_mode_sends_a_small_response_in_one_write_and_a_cut_body_as_502(
    http_watchdog: Callable[..., Watchdog]
) -> None:
    wd = http_watchdog()
    with socket.create_connection(("127.0.0.1", wd.port), timeout=5) as s:
        s.sendall(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        first = s.recv(65536)  # one write: head and body arrive together (http.server wrote them apart)
    head, sep, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and sep
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    assert len(body) == length and json.loads(body)["body"] == "hi"
    r = request(wd.port, "GET", "/short")
    assert r.status == 502 and r.headers["x-openfaas-internal"] == "of-watchdog"  # not a 200 with 10 of 100 bytes
    assert request(wd.port, "POST", "/", b"after").status == 200


def test_http_mode_keep_alive_reuses_the_upstream_connection(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog()
    with socket.create_connection(("127.0.0.1", wd.port), timeout=5) as s, s.makefile("rb") as f:
        durations = []
        for i in range(5):
            t0 = time.monotonic()
            s.sendall(f"POST /{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{i}".encode())
            r = _read_response(f)
            durations.append(time.monotonic() - t0)
            assert json.loads(r.body)["body"] == str(i)
    # no Nagle/delayed-ACK stall (40 ms each time) on reused connections; the median tolerates a
    # scheduling hiccup on a busy machine
    assert sorted(durations[1:])[2] < 0.03


def test_http_mode_concurrency_and_large_bodies(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog()
    big = os.urandom(3 << 20).hex().encode()  # 6 MiB: streamed to the upstream, not buffered
    echo = json.loads(request(wd.port, "POST", "/big", big).body)
    assert echo["body"].encode() == big and echo["headers"]["Content-Length"] == str(len(big))
    results: list[int] = []

    def call(i: int) -> None:
        r = request(wd.port, "POST", f"/{i}", str(i).encode())
        results.append(int(json.loads(r.body)["body"]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(20))


def test_classic_large_body_roundtrip(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    big = os.urandom(4 << 20)
    r = request(wd.port, "POST", "/", big, {"Content-Type": "application/octet-stream"})
    assert r.status == 200 and r.body == big


def test_http_mode_streams_chunked_responses(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog()
    with socket.create_connection(("127.0.0.1", wd.port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        t0 = time.monotonic()
        while f.readline() not in (b"\r\n", b""):
            pass
        f.readline()  # chunk size
        assert f.readline() == b"data: 0\n"
        assert time.monotonic() - t0 < 0.3  # relayed as it came, not buffered until the end


def test_http_mode_health_waits_for_the_upstream(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog(healthy=False, UPSTREAM_DELAY="0.5")
    time.sleep(0.25)
    assert request(wd.port, path="/_/health").status == 503
    wd.wait_healthy()
    assert request(wd.port, "POST", "/", b"first").status == 200  # healthy means requests succeed


def test_http_mode_exec_timeout_is_504(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog(exec_timeout="300ms")
    r = request(wd.port, "GET", "/sleep")
    assert (r.status, r.body, r.headers["x-openfaas-internal"]) == (504, b"", "of-watchdog")
    wd2 = http_watchdog(exec_timeout="5s")
    t0 = time.monotonic()
    assert request(wd2.port, "GET", "/sleep", headers={"X-Timeout": "200ms"}).status == 504
    assert time.monotonic() - t0 < 0.9


def test_http_mode_exits_when_the_upstream_dies(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog()
    with contextlib.suppress(ConnectionError):
        request(wd.port, "GET", "/die")
    assert wd.wait_exit() == 1
    assert "Forked function has terminated: exit status 7" in wd.logs()


def test_http_mode_sigterm_keeps_upstream_until_drained(http_watchdog: Callable[..., Watchdog]) -> None:
    wd = http_watchdog(healthcheck_interval="300ms")
    wd.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    assert request(wd.port, "POST", "/", b"late").status == 200
    assert wd.wait_exit() == 0


# --- as PID 1 ------------------------------------------------------------------------------


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (p / "stat").read_bytes().rsplit(b")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append((int(p.name), fields[0].decode()))
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a PID namespace")
def test_as_pid_1_orphans_of_the_fprocess_are_reaped(tmp_path: Path) -> None:
    """A container's PID 1 inherits every orphan; the Go watchdog leaves them as zombies."""
    fp = script(tmp_path, "orphan.py", """
        import subprocess
        subprocess.Popen(["sleep", "0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("left a child behind")
    """)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path), "port": str(port),
           "bind_address": "127.0.0.1", "healthcheck_interval": "0", "fprocess": fp}
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", PYTHON, "-S", "-m",
                             "faasd_py.watchdog"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if request(port, path="/_/health", timeout=1).status == 200:
                    break
            time.sleep(0.01)
        for _ in range(3):
            assert request(port, "POST", "/", b"").body == b"left a child behind\n"
        (watchdog_pid, _), = _children(proc.pid)
        time.sleep(0.3)
        assert [s for _, s in _children(watchdog_pid)].count("Z") == 3  # orphans, now dead, not yet reaped
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _children(watchdog_pid):
            time.sleep(0.1)
        assert _children(watchdog_pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
