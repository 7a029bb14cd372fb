"""Asynchronous invocations and the cost of metrics, on loopback.

    .venv/bin/python -m bench.async_bench [--calls 2000] [--concurrency 32] [--latency-calls 300]
                                          [--requests 4000] [--repeats 3] [--queue JSON]
                                          [--doc docs/benchmarks.md]

Processes: a private nats-server (JetStream, temporary store), an aiohttp echo server standing in
for a function's watchdog, and gateway processes built like the daemon's (``build_app`` with the
real InvokeProxy, AsyncQueue and GatewayMetrics) over a static provider; this process is the
client and the callback receiver. No containers: the figures are the gateway's and the queue's
own, without a function's run time (see the core benchmark for the hop into a container).

Measures:
1. enqueue rate: ``--calls`` POSTs to /async-function/ with ``--concurrency`` in flight, each
   with an X-Callback-Url; 202s per second, then calls completed (callback received) per second;
2. enqueue → callback latency, one call at a time (``--latency-calls``): p50/p99 from sending
   the POST to the callback's arrival;
3. metrics on the invoke path: two gateways, one with the metrics hooks and one without, sequential
   keep-alive POSTs to /function/ in alternating blocks; p50/mean latency and the gateway's CPU
   per request, plus the hooks alone in-process (ns per invocation).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.static_gateway import StaticProvider, run_echo_upstream
from tests.infra import free_port, wait_port

BODY = b'{"hello": "world"}'
FUNCTION = "bench"


# --- roles (child processes) --------------------------------------------------------------------


def run_gateway(port: int, upstream_port: int, nats_url: str, with_metrics: bool, state_dir: str) -> None:
    from faasd_py.config import Settings
    from faasd_py.gateway.app import INVOKE, build_app, serve
    from faasd_py.gateway.auth import Credentials
    from faasd_py.gateway.metrics import GatewayMetrics
    from faasd_py.provider.queue import AsyncQueue

    settings = Settings(state_dir=Path(state_dir))
    settings.queue.nats_url = nats_url
    for k, v in json.loads(os.environ.get("ASYNC_BENCH_QUEUE", "{}")).items():
        setattr(settings.queue, k, v)
    metrics = GatewayMetrics() if with_metrics else None
    queue = AsyncQueue(settings.queue) if nats_url != "-" else None
    app = build_app(StaticProvider(upstream_port, FUNCTION), settings, Credentials("admin", "bench"),  # type: ignore[arg-type]
                    on_invocation=metrics.finished if metrics else None,
                    on_start=metrics.started if metrics else None, queue=queue)
    if queue is not None:
        queue.invoker = app[INVOKE].invoke_queued

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        runner = await serve(app, "127.0.0.1", port)
        if queue is not None:
            queue.start()
            queue.start_worker()
        try:
            await stop.wait()
        finally:
            if queue is not None:
                await queue.close()
            await runner.cleanup()

    asyncio.run(main())


# --- measurements ------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    from bench.stats import percentile

    return percentile(values, p) * 1000


async def async_figures(port: int, calls: int, concurrency: int, latency_calls: int,
                        pids: dict[str, int]) -> dict[str, float]:
    import aiohttp

    from bench.procstat import cpu_ms
    from tests.callback_receiver import callback_receiver

    url = f"http://127.0.0.1:{port}/async-function/{FUNCTION}"
    out: dict[str, float] = {}
    async with callback_receiver() as receiver, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency)
    ) as session:
        headers = {"X-Callback-Url": receiver.url + "/cb", "Content-Type": "application/json"}
        for _ in range(50):  # warm-up: connections, the stream, the consumer
            async with session.post(url, data=BODY, headers=headers) as r:
                assert r.status == 202, await r.text()
        await receiver.wait_for(50, timeout=60)
        receiver.received.clear()
        receiver.attempts.clear()

        # 1. enqueue rate, and completions
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem, session.post(url, data=BODY, headers=headers) as r:
                assert r.status == 202

        cpu0 = {k: cpu_ms(pid) for k, pid in pids.items()}
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        t_enqueued = time.perf_counter() - t0
        await receiver.wait_for(calls, timeout=300)
        t_done = time.perf_counter() - t0
        out["enqueue_per_s"] = calls / t_enqueued
        out["completed_per_s"] = calls / t_done
        for k, pid in pids.items():
            out[f"{k}_cpu_us_per_call"] = (cpu_ms(pid) - cpu0[k]) * 1000 / calls
        receiver.received.clear()
        receiver.attempts.clear()

        # 2. enqueue -> callback, one at a time
        latencies: list[float] = []
        for i in range(latency_calls):
            t = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers) as r:
                assert r.status == 202
            await receiver.wait_for(i + 1, timeout=30)
            latencies.append(time.perf_counter() - t)
        out["latency_p50_ms"] = pct(latencies, 50)
        out["latency_p99_ms"] = pct(latencies, 99)
    return out


def sequential(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "text/plain"}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", f"/function/{FUNCTION}", BODY, headers)
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
    conn.close()
    return out


def metrics_cost(ports: dict[str, int], pids: dict[str, int], requests: int, block: int) -> dict[str, float]:
    from bench.procstat import cpu_ms

    for port in ports.values():
        sequential(port, 300)  # warm-up
    lat: dict[str, list[float]] = {k: [] for k in ports}
    cpu: dict[str, float] = dict.fromkeys(ports, 0.0)
    for _ in range(max(1, requests // block)):
        for side, port in ports.items():  # alternate, so drift hits both sides alike
            c0 = cpu_ms(pids[side])
            lat[side] += sequential(port, block)
            cpu[side] += cpu_ms(pids[side]) - c0
    out: dict[str, float] = {}
    for side in ports:
        out[f"{side}_p50_ms"] = pct(lat[side], 50)
        out[f"{side}_p99_ms"] = pct(lat[side], 99)
        out[f"{side}_mean_ms"] = statistics.mean(lat[side]) * 1000
        out[f"{side}_cpu_us"] = cpu[side] * 1000 / len(lat[side])
    return out


def hook_cost(n: int = 200_000) -> float:
    """ns per invocation for started() + finished() on a warm series (what the hot path adds)."""
    from faasd_py.gateway.metrics import GatewayMetrics

    m = GatewayMetrics()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(n):
            m.started(FUNCTION, "openfaas-fn")
            m.finished(FUNCTION, "openfaas-fn", 200, (i & 127) / 1000)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e9


# --- the report ---------------------------------------------------------------------------------


def report(a: argparse.Namespace, runs: dict[str, list[float]]) -> str:
    """Cells are ``median [min-max]`` over the repeats, like the core benchmark's."""
    from bench.stats import spread

    def cell(key: str, digits: int) -> str:
        return spread(runs[key], digits)

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = "unknown"
    return f"""
### {when} — async and metrics (`python -m bench.async_bench`)

- Machine: {os.cpu_count()} vCPU, kernel {platform.release()}, Python {platform.python_version()}; git {commit};
  loadavg {a.load_before} before, {" ".join(f"{x:.2f}" for x in os.getloadavg())} after
- Plan: {a.repeats} repeat(s), cells are median [min-max]; each: {a.calls} async calls at concurrency
  {a.concurrency}; {a.latency_calls} calls one at a time; {a.requests} sequential sync calls per gateway (blocks
  of {a.block}, alternating); queue settings: {a.queue or "defaults"} (function_concurrency 4, max_inflight 64)

| metric | value |
|---|---|
| Enqueue rate: `POST /async-function` answered 202 (calls/s, c={a.concurrency}) | {cell("enqueue_per_s", 0)} |
| Completed: invoked and called back (calls/s, same run) | {cell("completed_per_s", 0)} |
| CPU per async call: gateway process (enqueue + worker + callback) (µs) | {cell("gateway_cpu_us_per_call", 0)} |
| CPU per async call: nats-server (µs) | {cell("nats_cpu_us_per_call", 0)} |
| Enqueue → callback latency p50 (ms, one call at a time) | {cell("latency_p50_ms", 2)} |
| Enqueue → callback latency p99 (ms) | {cell("latency_p99_ms", 2)} |
| Sync invoke p50 without / with metrics (ms) | {cell("off_p50_ms", 3)} / {cell("on_p50_ms", 3)} |
| Sync invoke mean without / with metrics (ms) | {cell("off_mean_ms", 3)} / {cell("on_mean_ms", 3)} |
| Sync invoke p99 without / with metrics (ms) | {cell("off_p99_ms", 3)} / {cell("on_p99_ms", 3)} |
| Gateway CPU per sync request without / with metrics (µs) | {cell("off_cpu_us", 0)} / {cell("on_cpu_us", 0)} |
| Metrics hooks alone: `started` + `finished` per invocation (ns, in-process) | {cell("hook_ns", 0)} |
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", nargs="?", default="bench")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queue", default="", metavar="JSON",
                        help='queue settings of the gateway, e.g. \'{"function_concurrency": 64}\' (default: defaults)')
    parser.add_argument("--doc", type=Path, default=None, help="append the results as a section to this file")
    parser.add_argument("args", nargs="*")
    a = parser.parse_args()
    if a.role == "upstream":
        run_echo_upstream(int(a.args[0]))
        return
    if a.role == "gateway":
        run_gateway(int(a.args[0]), int(a.args[1]), a.args[2], a.args[3] == "1", a.args[4])
        return

    from tests.nats_server import NatsServer

    a.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    procs: list[subprocess.Popen[bytes]] = []
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fdpy-async-bench-") as tmp:
        natsd = NatsServer(Path(tmp) / "nats").start()
        try:
            me = [sys.executable, "-m", "bench.async_bench"]
            up, queued, on, off = free_port(), free_port(), free_port(), free_port()
            roles = {
                "upstream": [*me, "upstream", str(up)],
                "queued": [*me, "gateway", str(queued), str(up), natsd.url, "1", str(Path(tmp) / "q")],
                "on": [*me, "gateway", str(on), str(up), "-", "1", str(Path(tmp) / "on")],
                "off": [*me, "gateway", str(off), str(up), "-", "0", str(Path(tmp) / "off")],
            }
            pids = {}
            env = dict(os.environ, ASYNC_BENCH_QUEUE=a.queue or "{}")
            for name, argv in roles.items():
                p = subprocess.Popen(argv, env=env)
                procs.append(p)
                pids[name] = p.pid
            for port in (up, queued, on, off):
                wait_port(port)
            time.sleep(1.0)  # the queued gateway connects to NATS in the background
            for r in range(a.repeats):
                f = asyncio.run(async_figures(queued, a.calls, a.concurrency, a.latency_calls,
                                              {"gateway": pids["queued"], "nats": natsd.pid}))
                f |= metrics_cost({"off": off, "on": on}, pids, a.requests, a.block)
                f["hook_ns"] = hook_cost()
                print(f"repeat {r + 1}/{a.repeats}: " + ", ".join(f"{k} {v:.3g}" for k, v in f.items()), flush=True)
                for k, v in f.items():
                    runs.setdefault(k, []).append(v)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(15)
            natsd.stop()
    text = report(a, runs)
    print(text)
    if a.doc is not None:
        with open(a.doc, "a") as doc:
            doc.write(text)


if __name__ == "__main__":
    main()
