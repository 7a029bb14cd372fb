"""The measurements, one function per benchmark; each returns plain per-repeat figures.

Every response is checked (status 200 and the body echoed); a wrong answer counts as an error,
never as a fast request.
"""

from __future__ import annotations

import http.client
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import wrk
from bench.daemon import DaemonProcess, request
from bench.images import BODY, BenchImage
from bench.procstat import CpuMeter
from bench.stats import median, percentile

HEADERS = {"Content-Type": "text/plain"}
POLL_INTERVAL = 0.005  # between invocation attempts after a deploy
GONE_TIMEOUT = 60.0  # a deleted function's netns must disappear within this
WRK_WARMUP_S = 2.0


def invoke_path(name: str) -> str:
    return f"/function/{name}.openfaas-fn"


# --- 1. deploy -> first 200 --------------------------------------------------------------------


@dataclass
class ColdCycle:
    post_ms: float  # POST /system/functions returned
    first_200_ms: float  # POST sent -> first 200 from the function
    after_post_ms: float  # POST returned -> first 200
    first_was_200: bool
    delete_ms: float  # DELETE /system/functions returned
    gone_ms: float  # DELETE sent -> the replica's netns is gone
    failures: int = 0  # non-200 answers before the first 200


def cold_cycle(daemon: DaemonProcess, img: BenchImage, timeout: float = 60.0) -> ColdCycle:
    conn = daemon.connect()
    try:
        t0 = time.perf_counter()
        reply = daemon.deploy(conn, img.name, img.ref, img.env)
        t1 = time.perf_counter()
        if reply.status not in (200, 202):
            raise RuntimeError(f"deploy {img.name}: {reply.status} {reply.body[:300]!r}")
        failures = 0
        first = True
        first_was_200 = False
        while True:
            r = request(conn, "POST", invoke_path(img.name), BODY.encode(), HEADERS)
            ok = r.status == 200 and img.expect.encode() in r.body
            if ok:
                first_was_200 = first
                break
            failures += 1
            first = False
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{img.name}: no 200 within {timeout:g}s (last {r.status} {r.body[:200]!r})")
            time.sleep(POLL_INTERVAL)
        t2 = time.perf_counter()
        d0 = time.perf_counter()
        reply = daemon.delete(conn, img.name)
        d1 = time.perf_counter()
        if reply.status not in (200, 202):
            raise RuntimeError(f"delete {img.name}: {reply.status} {reply.body[:300]!r}")
    finally:
        conn.close()
    wait_gone(daemon, img.name)
    d2 = time.perf_counter()
    return ColdCycle(post_ms=(t1 - t0) * 1000, first_200_ms=(t2 - t0) * 1000, after_post_ms=(t2 - t1) * 1000,
                     first_was_200=first_was_200, delete_ms=(d1 - d0) * 1000, gone_ms=(d2 - d0) * 1000,
                     failures=failures)


def wait_gone(daemon: DaemonProcess, name: str) -> None:
    """Deletes finish in the background: wait, so the next cycle does not pay for this one's teardown."""
    deadline = time.monotonic() + GONE_TIMEOUT
    while daemon.netns_of(name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: netns still there {GONE_TIMEOUT:g}s after delete")
        time.sleep(0.005)


# --- 2. warm invocations at c=1 ----------------------------------------------------------------


@dataclass
class Warm:
    gateway_ms: list[float] = field(default_factory=list)
    direct_ms: list[float] = field(default_factory=list)
    failures: int = 0
    cpu_per_request: dict[str, float] = field(default_factory=dict)  # via the gateway, ms

    def p(self, which: str, q: float) -> float:
        return percentile(self.gateway_ms if which == "gateway" else self.direct_ms, q)


def _series(conn: http.client.HTTPConnection, path: str, n: int, expect: bytes, out: list[float] | None) -> int:
    """``n`` sequential keep-alive POSTs; appends each latency (ms) to ``out``; returns failures."""
    failures = 0
    body = BODY.encode()
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", path, body, HEADERS)
        resp = conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200 or expect not in data:
            failures += 1
        elif out is not None:
            out.append(elapsed * 1000)
    return failures


def warm(daemon: DaemonProcess, img: BenchImage, address: str, requests: int, meter: CpuMeter,
         block: int = 100, warmup: int = 100) -> Warm:
    """Alternate blocks of ``block`` requests via the gateway and direct, so drift (other load on
    the host, CPU frequency) hits both sides alike; CPU is metered over the gateway blocks only."""
    gw = daemon.connect()
    direct = http.client.HTTPConnection(address, 8080, timeout=30)
    result = Warm()
    expect = img.expect.encode()
    try:
        result.failures += _series(gw, invoke_path(img.name), warmup, expect, None)
        result.failures += _series(direct, "/", warmup, expect, None)
        done = 0
        while done < requests:
            n = min(block, requests - done)
            meter.start()
            result.failures += _series(gw, invoke_path(img.name), n, expect, result.gateway_ms)
            meter.stop()
            result.failures += _series(direct, "/", n, expect, result.direct_ms)
            done += n
    finally:
        gw.close()
        direct.close()
    result.cpu_per_request = meter.per_request(requests)
    return result


# --- 3. throughput with wrk --------------------------------------------------------------------


@dataclass
class Throughput:
    connections: int
    gateway: wrk.WrkResult
    direct: wrk.WrkResult
    cpu_per_request: dict[str, float]  # via the gateway, ms

    @property
    def ratio(self) -> float:
        return self.gateway.rps / self.direct.rps if self.direct.rps else math.nan


def throughput(daemon: DaemonProcess, img: BenchImage, address: str, connections: int, seconds: float,
               script_dir: Path, meter: CpuMeter) -> Throughput:
    """Each side gets an unmeasured warm-up at the same concurrency first: connection pools (client
    → gateway → watchdog → handler) grow to ``connections`` there, not in the measured run."""
    script = wrk.write_script(script_dir / f"post-{img.name}.lua", BODY, img.expect)
    via_url = f"http://127.0.0.1:{daemon.port}{invoke_path(img.name)}"
    direct_url = f"http://{address}:8080/"
    warmup = min(WRK_WARMUP_S, seconds)
    wrk.run(via_url, script, connections, warmup)
    meter.start()
    via = wrk.run(via_url, script, connections, seconds)
    meter.stop()
    wrk.run(direct_url, script, connections, warmup)
    direct = wrk.run(direct_url, script, connections, seconds)
    return Throughput(connections, via, direct, meter.per_request(via.requests))


def summarize_cold(cycles: list[ColdCycle]) -> dict[str, float]:
    return {
        "post_ms": median([c.post_ms for c in cycles]),
        "first_200_ms": median([c.first_200_ms for c in cycles]),
        "after_post_ms": median([c.after_post_ms for c in cycles]),
        "delete_ms": median([c.delete_ms for c in cycles]),
        "gone_ms": median([c.gone_ms for c in cycles]),
    }
