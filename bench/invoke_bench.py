"""Gateway overhead on the invocation hot path: direct vs through the gateway, on loopback.

    .venv/bin/python -m bench.invoke_bench [--requests 2000] [--wrk-seconds 5] [--raw-upstream]

Starts an upstream "watchdog", two gateways over a static provider (serve() with its front
protocol, and with aiohttp alone) and measures all three side by side: sequential keep-alive
latency (p50/p99) with http.client, then throughput with wrk if it is installed. The default
upstream is an aiohttp echo server; ``--raw-upstream`` uses a minimal asyncio one whose own cost
is small enough that the gateway's shows. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from bench.static_gateway import StaticProvider, run_echo_upstream
from tests.infra import free_port, wait_port

BODY = b'{"hello": "world"}'


def _maybe_uvloop() -> None:
    """``--uvloop`` runs both servers on uvloop (not a project dependency; measured for comparison)."""
    if os.environ.get("INVOKE_BENCH_UVLOOP") == "1":
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()


def run_upstream(port: int) -> None:
    _maybe_uvloop()
    run_echo_upstream(port)


class _RawEcho(asyncio.Protocol):
    """Answers each request with its body (or "hello"); Content-Length framing only, as the bench sends."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length] or b"hello"
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b"
                                 % (len(body), body))


def run_raw_upstream(port: int) -> None:
    async def serve_forever() -> None:
        server = await asyncio.get_running_loop().create_server(_RawEcho, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(serve_forever())


def run_gateway(port: int, upstream_port: int, state_dir: str, front: bool = True) -> None:
    from aiohttp import web

    from faasd_py.config import Settings
    from faasd_py.gateway.app import build_app
    from faasd_py.gateway.auth import Credentials

    _maybe_uvloop()
    settings = Settings(state_dir=Path(state_dir))
    creds = Credentials("admin", "bench")
    app = build_app(StaticProvider(upstream_port), settings, creds)  # type: ignore[arg-type]

    async def main() -> None:
        import signal

        from faasd_py.gateway.app import serve

        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        runner = await serve(app, "127.0.0.1", port, front=front)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    del web
    asyncio.run(main())


def sequential(port: int, path: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "text/plain"}
    for _ in range(200):  # warm-up: pools, caches
        conn.request("POST", path, BODY, headers)
        conn.getresponse().read()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", path, BODY, headers)
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
    conn.close()
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000


def wrk(port: int, path: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", nargs="?", default="bench")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--raw-upstream", action="store_true", help="a minimal asyncio upstream instead of aiohttp")
    parser.add_argument("--uvloop", action="store_true", help="run upstream and gateways on uvloop")
    parser.add_argument("args", nargs="*")
    a = parser.parse_args()
    if a.role == "upstream":
        run_upstream(int(a.args[0]))
        return
    if a.role == "raw-upstream":
        run_raw_upstream(int(a.args[0]))
        return
    if a.role == "gateway":
        run_gateway(int(a.args[0]), int(a.args[1]), a.args[2], front=a.args[3] == "front")
        return

    if a.uvloop:
        os.environ["INVOKE_BENCH_UVLOOP"] = "1"
    up_port = free_port()
    gateways = {"aiohttp only": free_port(), "front": free_port()}
    procs = []
    with tempfile.TemporaryDirectory() as state:
        try:
            me = [sys.executable, "-m", "bench.invoke_bench"]
            procs.append(subprocess.Popen([*me, "raw-upstream" if a.raw_upstream else "upstream", str(up_port)]))
            for label, port in gateways.items():
                mode = "front" if label == "front" else "aiohttp"
                procs.append(subprocess.Popen([*me, "gateway", str(port), str(up_port), state, mode]))
            for port in (up_port, *gateways.values()):
                wait_port(port)
            gw_path = "/function/bench.openfaas-fn"
            for round_ in range(2):
                direct = sequential(up_port, "/", a.requests)
                d50 = pct(direct, .5)
                line = [f"round {round_}: {a.requests} sequential POSTs, direct p50 {d50:.3f} ms p99 "
                        f"{pct(direct, .99):.3f} ms"]
                for label, port in gateways.items():
                    via = sequential(port, gw_path, a.requests)
                    g50 = pct(via, .5)
                    line.append(f"{label}: p50 {g50:.3f} p99 {pct(via, .99):.3f} overhead p50 {g50 - d50:.3f} ms "
                                f"(mean {1000 * (statistics.mean(via) - statistics.mean(direct)):.3f})")
                print(" | ".join(line))
            if shutil.which("wrk"):
                rd = wrk(up_port, "/", a.wrk_seconds, a.connections)
                parts = [f"wrk -c{a.connections} GET: direct {rd:.0f} req/s"]
                for label, port in gateways.items():
                    rg = wrk(port, gw_path, a.wrk_seconds, a.connections)
                    parts.append(f"{label} {rg:.0f} req/s ({100 * rg / rd:.0f} % of direct)")
                print(" | ".join(parts))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)


if __name__ == "__main__":
    main()
