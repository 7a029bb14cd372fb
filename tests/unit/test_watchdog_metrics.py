"""The watchdog's Prometheus metrics (faasd_py.watchdog.metrics): the exposition text, checked with
prometheus_client's own parser, and the real watchdog's metrics listener (run as in test_watchdog.py,
as a subprocess of the image's interpreter, on free loopback ports)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from faasd_py.watchdog.config import Config
from faasd_py.watchdog.metrics import BUCKETS, CONTENT_TYPE, Metrics
from tests.infra import free_port
from tests.unit.test_watchdog import UPSTREAM, StartWatchdog, Watchdog, request, script

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, tuple[str, str]], Samples]:
    """(family name -> (type, help), (sample name, sorted labels) -> value); raises on invalid text."""
    families: dict[str, tuple[str, str]] = {}
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = (fam.type, fam.documentation)
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return families, samples


def total(samples: Samples, code: str, method: str) -> float:
    return samples.get(("http_requests_total", (("code", code), ("method", method))), 0.0)


def scrape(wd: Watchdog) -> Samples:
    r = request(wd.metrics_port, path="/metrics")
    assert (r.status, r.headers["content-type"]) == (200, CONTENT_TYPE)
    return parse(r.body.decode())[1]


@pytest.fixture
def start_watchdog(tmp_path: Path) -> Iterator[StartWatchdog]:
    started: list[Watchdog] = []

    def start(**env: str) -> Watchdog:
        started.append(Watchdog(tmp_path, env))
        started[-1].wait_healthy()
        return started[-1]

    yield start
    for wd in started:
        wd.kill()


def settled(wd: Watchdog, in_flight: int = 0, timeout: float = 10.0) -> Samples:
    """A scrape once ``in_flight`` requests are left. A request is recorded when its handler returns,
    just after the client has its response, so a scrape right after a reply may not count it yet."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(wd)
        if samples[("http_requests_in_flight", ())] == in_flight:
            return samples
        assert time.monotonic() < deadline, f"in flight stays {samples[('http_requests_in_flight', ())]}"
        time.sleep(0.01)


# --- the registry, in-process ------------------------------------------------------------------


def test_config_metrics_port_defaults_to_8081() -> None:
    assert Config({}).metrics_port == 8081
    assert Config({"metrics_port": "9100"}).metrics_port == 9100
    assert Config({"metrics_port": "x"}).metrics_port == 8081


def test_exposition_parses_with_the_go_watchdogs_names_types_and_labels() -> None:
    m = Metrics()
    for method, code, seconds in [("POST", 200, 0.003), ("POST", 200, 0.2), ("GET", 200, 0.01),
                                  ("DELETE", 500, 12.0), ("OPTIONS", 405, 0.0)]:
        m.started()
        m.finished(method, code, seconds)
    families, samples = parse(m.render().decode())
    assert families == {
        "http_requests": ("counter", "total HTTP requests processed"),
        "http_request_duration_seconds": ("histogram", "Seconds spent serving HTTP requests."),
        "http_requests_in_flight": ("gauge", "total HTTP requests in-flight"),
    }
    assert total(samples, "200", "post") == 2 and total(samples, "200", "get") == 1
    assert total(samples, "500", "delete") == 1 and total(samples, "405", "options") == 1
    assert samples[("http_requests_in_flight", ())] == 0
    post = (("code", "200"), ("method", "post"))
    assert samples[("http_request_duration_seconds_sum", post)] == pytest.approx(0.203)
    assert samples[("http_request_duration_seconds_count", post)] == 2


def test_histogram_buckets_are_cumulative_and_match_count_and_sum() -> None:
    m = Metrics()
    durations = [0.0, 0.005, 0.0051, 0.07, 0.3, 0.3, 1.0, 4.0, 9.99, 10.0, 10.5, 60.0]
    for d in durations:
        m.started()
        m.finished("GET", 200, d)
    text = m.render().decode()
    _, samples = parse(text)
    labels = (("code", "200"), ("method", "get"))
    buckets = {le: v for (name, lbl), v in samples.items() if name == "http_request_duration_seconds_bucket"
               for k, le in lbl if k == "le"}
    assert list(buckets) == [*(f"{b:g}" for b in BUCKETS), "+Inf"]  # Go's le spelling: "1", not "1.0"
    for bound, le in zip(BUCKETS, buckets, strict=False):
        assert buckets[le] == sum(1 for d in durations if d <= bound), le  # le is inclusive
    values = list(buckets.values())
    assert values == sorted(values) and values[-1] == len(durations)
    assert samples[("http_request_duration_seconds_count", labels)] == len(durations)
    assert samples[("http_request_duration_seconds_sum", labels)] == pytest.approx(sum(durations))
    assert total(samples, "200", "get") == len(durations)
    assert 'http_request_duration_seconds_bucket{code="200",method="get",le="0.005"} 2\n' in text


def test_method_label_is_bounded_like_promhttp() -> None:
    m = Metrics()
    for method in ("GET", "get", "PATCH", "BREW", "Get", "X" * 50):
        m.started()
        m.finished(method, 200, 0.001)
    m.started()
    m.finished("POST", 0, 0.001)  # nothing sent: the client got the server's 500 or a closed connection
    _, samples = parse(m.render().decode())
    methods = {dict(lbl)["method"] for name, lbl in samples if name == "http_requests_total"}
    assert methods == {"get", "patch", "unknown", "post"}
    assert total(samples, "200", "get") == 2 and total(samples, "200", "unknown") == 3
    assert total(samples, "500", "post") == 1


def test_empty_registry_still_declares_every_family() -> None:
    families, samples = parse(Metrics().render().decode())
    assert set(families) == {"http_requests", "http_request_duration_seconds", "http_requests_in_flight"}
    assert samples == {("http_requests_in_flight", ()): 0}


def test_recording_from_many_threads_loses_nothing() -> None:
    m = Metrics()
    gate = threading.Barrier(8)

    def worker(i: int) -> None:
        gate.wait()
        for n in range(2000):
            m.started()
            m.finished("POST" if i % 2 else "GET", 200 if n % 4 else 500, 0.001 * (n % 7))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, samples = parse(m.render().decode())
    assert m.in_flight == 0 and samples[("http_requests_in_flight", ())] == 0
    for method in ("get", "post"):
        assert total(samples, "200", method) == 4 * 1500 and total(samples, "500", method) == 4 * 500


# --- the real watchdog -------------------------------------------------------------------------


def test_watchdog_counts_function_requests_by_code_and_method(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    fp = script(tmp_path, "maybe_fail.py", """
        import sys
        body = sys.stdin.read()
        sys.stdout.write(body)
        sys.exit(1 if body == "fail" else 0)
    """)
    wd = start_watchdog(fprocess=fp)
    assert f"Metrics listening on port: {wd.metrics_port}" in wd.logs()
    for _ in range(3):
        assert request(wd.port, "POST", "/", b"ok").status == 200
    assert request(wd.port, "GET", "/any/path?q=1").status == 200
    assert request(wd.port, "POST", "/", b"fail").status == 500
    assert request(wd.port, "OPTIONS", "/").status == 405  # classic refuses it inside the counted handler
    assert request(wd.port, "GET", "/_/ready").status == 200  # classic has no /_/ready: a function path
    for _ in range(5):
        assert request(wd.port, "GET", "/_/health").status == 200
    samples = settled(wd)
    assert total(samples, "200", "post") == 3 and total(samples, "200", "get") == 2
    assert total(samples, "500", "post") == 1 and total(samples, "405", "options") == 1
    assert sum(v for (name, _), v in samples.items() if name == "http_requests_total") == 7  # health not counted
    fork = samples[("http_request_duration_seconds_sum", (("code", "200"), ("method", "post")))]
    assert 0 < fork < 30


def test_health_and_ready_are_not_counted(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat", mode="serializing")
    for path in ("/_/health", "/_/ready", "/_/health", "/_/ready"):
        assert request(wd.port, "GET", path).status == 200
    assert request(wd.port, "POST", "/_/health", b"").status == 405
    assert [k for k in settled(wd) if k[0] == "http_requests_total"] == []
    assert request(wd.port, "PUT", "/", b"x").status == 200
    assert total(settled(wd), "200", "put") == 1


def test_http_mode_counts_the_upstream_status(start_watchdog: StartWatchdog, tmp_path: Path) -> None:
    up = free_port()
    wd = start_watchdog(mode="http", fprocess=script(tmp_path, "upstream.py", UPSTREAM) + f" {up}",
                        upstream_url=f"http://127.0.0.1:{up}")
    assert request(wd.port, "PATCH", "/created/x", b"p").status == 201
    assert request(wd.port, "HEAD", "/").status == 200
    samples = settled(wd)
    assert total(samples, "201", "patch") == 1 and total(samples, "200", "head") == 1


def test_in_flight_rises_during_a_slow_request_and_429s_are_counted(start_watchdog: StartWatchdog,
                                                                    tmp_path: Path) -> None:
    release = tmp_path / "release"
    fp = script(tmp_path, "wait.py", f"""
        import os, time
        while not os.path.exists({str(release)!r}):
            time.sleep(0.01)
        print("done")
    """)
    wd = start_watchdog(fprocess=fp, max_inflight="1")
    replies: list[int] = []
    slow = threading.Thread(target=lambda: replies.append(request(wd.port, "POST", "/", b"").status))
    slow.start()
    try:
        assert total(settled(wd, in_flight=1), "200", "post") == 0
        assert request(wd.port, "POST", "/", b"").status == 429
        samples = settled(wd, in_flight=1)  # the 429 has come and gone, the slow one is still running
        assert total(samples, "429", "post") == 1 and total(samples, "200", "post") == 0
    finally:
        release.touch()
        slow.join(10)
    assert replies == [200]
    samples = settled(wd)
    assert total(samples, "200", "post") == 1 and total(samples, "429", "post") == 1


def test_metrics_listener_routes(start_watchdog: StartWatchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    r = request(wd.metrics_port, "GET", "/")
    assert (r.status, r.body) == (404, b"404 page not found\n")
    assert request(wd.metrics_port, "GET", "/metricsx").status == 404
    assert request(wd.metrics_port, "POST", "/metrics", b"").status == 405
    r = request(wd.metrics_port, "HEAD", "/metrics")
    assert (r.status, r.body, r.headers["content-type"]) == (200, b"", CONTENT_TYPE)
    with socket.create_connection(("127.0.0.1", wd.metrics_port), timeout=5) as s:  # keep-alive: two scrapes
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        with s.makefile("rb") as f:
            heads = []
            for _ in range(2):
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += f.readline()
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                heads.append(head.split(b"\r\n")[0])
                assert b"http_requests_in_flight 0\n" in f.read(length)
    assert heads == [b"HTTP/1.1 200 OK"] * 2


def test_taken_metrics_port_does_not_stop_the_function(start_watchdog: StartWatchdog) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        wd = start_watchdog(fprocess="cat", metrics_port=str(port))
        assert request(wd.port, "POST", "/", b"still serving").body == b"still serving"
        assert wd.proc.poll() is None
    logs = wd.logs()
    assert f"Metrics disabled: cannot listen on port {port}: Address already in use" in logs
    assert "Metrics listening" not in logs
