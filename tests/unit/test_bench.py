"""The benchmark's own arithmetic and bookkeeping: percentiles, the wrk checker, the report."""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import report, wrk
from bench.measure import ColdCycle, Throughput, Warm
from bench.procstat import cpu_ms, rss_mib
from bench.stats import percentile, spread


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0
    assert math.isnan(percentile([], 50))


def test_spread_shows_median_and_range_over_repeats() -> None:
    assert spread([3.0, 1.0, 2.0]) == "2.0 [1.0-3.0]"
    assert spread([0.25], 2) == "0.25"
    assert spread([math.nan, 4.0, 6.0], 0) == "5 [4-6]"
    assert spread([]) == "n/a"


def test_cpu_and_rss_of_this_process() -> None:
    import os

    before = cpu_ms(os.getpid())
    x = 0
    while cpu_ms(os.getpid()) - before < 30:  # burn CPU until the tick counter moves
        x += sum(range(10000))
    assert cpu_ms(os.getpid()) > before
    assert rss_mib(os.getpid()) > 1
    gone = 2**22 + 1  # above the default pid_max range: never a live process
    assert math.isnan(cpu_ms(gone)) and math.isnan(rss_mib(gone))


# --- wrk: the Lua checker must count wrong answers, not just socket errors -----------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk drops its connections mid-request when the run ends


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"answer": b"hello world"})
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_counts_good_and_wrong_answers(server: tuple[str, type[_Handler]], tmp_path: Path) -> None:
    url, handler = server
    script = wrk.write_script(tmp_path / "post.lua", "hello world", "hello world")
    good = wrk.run(url, script, connections=2, seconds=1)
    assert good.requests > 10 and good.bad == 0 and good.errors == 0
    assert 0 < good.p50_ms <= good.p99_ms
    handler.answer = b"something else"
    bad = wrk.run(url, script, connections=2, seconds=1)
    assert bad.requests > 10 and bad.bad == bad.requests and bad.failures >= bad.requests


# --- the report ------------------------------------------------------------------------------------


def _wrk(rps: float) -> wrk.WrkResult:
    return wrk.WrkResult(requests=int(rps * 10), seconds=10.0, errors=0, bad=0, p50_ms=1, p90_ms=2, p99_ms=3)


def _repeat(first_200_ms: float, gw_ms: float, direct_ms: float, gw_rps: float, direct_rps: float) -> report.Repeat:
    cycle = ColdCycle(post_ms=first_200_ms - 1, first_200_ms=first_200_ms, after_post_ms=1, first_was_200=True,
                      delete_ms=2, gone_ms=100)
    cpu = {"daemon": 0.1, "containerd": 0.0}
    warm = Warm(gateway_ms=[gw_ms] * 10, direct_ms=[direct_ms] * 10, cpu_per_request=cpu)
    tp = {c: Throughput(c, _wrk(gw_rps), _wrk(direct_rps), cpu) for c in (16, 64)}
    return report.Repeat(cold=[cycle], warm=warm, throughput=tp, rss_before={"daemon": 50.0, "containerd": 40.0},
                         rss_after={"daemon": 52.0, "containerd": 40.0})


def test_verdicts_compare_medians_with_the_targets() -> None:
    results: report.Results = {
        "echo": [_repeat(120, 7.2, 7.0, 200, 250), _repeat(130, 7.3, 7.0, 210, 250)],
        "fast": [_repeat(300, 0.9, 0.1, 100, 1000)],
    }
    table = report.rows(results, (16, 64))
    lines = report.verdicts(table, results)

    def verdict(name: str, label: str) -> str:
        [line] = [ln for ln in lines if f" {name}: {label}" in ln]
        return line.split()[0]

    assert verdict("echo", "Deploy POST") == "MET"
    assert verdict("fast", "Deploy POST") == "MISSED"
    assert verdict("echo", "Gateway overhead") == "MET"  # 0.25 ms <= 0.3
    assert verdict("fast", "Gateway overhead") == "MISSED"  # 0.8 ms
    assert verdict("echo", "Throughput gateway / direct c=16") == "MET"  # 0.82
    assert verdict("fast", "Throughput gateway / direct c=64") == "MISSED"  # 0.1
    cells = {row.key: row.cells for row in table}
    assert cells["first_200_ms"]["echo"] == "125 [120-130]"
    assert cells["first_was_200"]["fast"] == "1/1"
    md = report.markdown(table, results, {"echo": "classic", "fast": "asyncio"})
    assert "faasd echo-classic" in md and "172 [168-174]" in md  # the baseline next to ours
    assert "faasd http-of" not in md  # no http column without an http image


def test_insert_puts_the_newest_run_first(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n## Runs\n\n{report.MARKER}\n")
    report.insert_into(doc, "### run one\n")
    report.insert_into(doc, "### run two\n")
    text = doc.read_text()
    assert text.index("intro") < text.index(report.MARKER) < text.index("run two") < text.index("run one")
    fresh = tmp_path / "new.md"
    report.insert_into(fresh, "### only run\n")
    assert report.MARKER in fresh.read_text() and "only run" in fresh.read_text()
