"""The metrics endpoint as a real Prometheus (Debian's 2.42) scrapes it: every family is ingested
under the name OpenFaaS dashboards query, including the counter without ``_total``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from faasd_py.config import Settings
from faasd_py.gateway.app import serve
from faasd_py.gateway.metrics import GatewayMetrics, build_metrics_app
from faasd_py.provider.usage import FunctionSample
from tests.infra import free_port

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")


def start_prometheus(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    with open(workdir / "prometheus.log", "ab") as log:
        return subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
async def scraped(tmp_path: Path) -> AsyncIterator[tuple[str, GatewayMetrics]]:
    metrics = GatewayMetrics(lambda: [FunctionSample("echo", "openfaas-fn", 2, 3.25, 8 << 20, 5)])
    for code, secs in ((200, 0.02), (200, 0.2), (200, 0.02), (500, 3.0)):
        metrics.started("echo", "openfaas-fn")
        metrics.finished("echo", "openfaas-fn", code, secs)
    port, prom_port = free_port(), free_port()
    runner: web.AppRunner = await serve(build_metrics_app(metrics, Settings(state_dir=tmp_path)), "127.0.0.1", port)
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    proc = start_prometheus(tmp_path, prom_port)
    try:
        yield f"http://127.0.0.1:{prom_port}", metrics
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        await runner.cleanup()


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/api/v1/query", params={"query": promql}) as r:
        if r.status != 200:
            return []
        body = await r.json()
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


async def until_present(base: str, promql: str, timeout: float = 40.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = await query(base, promql)
        except aiohttp.ClientError:
            found = []
        if found:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus never had {promql}")


@pytest.mark.timeout(120)
async def test_prometheus_ingests_the_openfaas_names(scraped: tuple[str, GatewayMetrics]) -> None:
    base, _ = scraped
    [started] = await until_present(base, 'gateway_function_invocation_started{function_name="echo.openfaas-fn"}')
    assert started["value"][1] == "4"
    totals = await query(base, "gateway_function_invocation_total")
    assert {(r["metric"]["code"], r["value"][1]) for r in totals} == {("200", "3"), ("500", "1")}
    [count] = await query(base, 'gateway_service_count{function_name="echo.openfaas-fn"}')
    assert count["value"][1] == "2"
    # what dashboards compute: quantiles from the buckets, averages from sum/count
    [p50] = await query(base, 'histogram_quantile(0.5, sum by (le) (gateway_functions_seconds_bucket{code="200"}))')
    assert 0.01 < float(p50["value"][1]) <= 0.025
    [avg] = await query(base, "sum(gateway_functions_seconds_sum) / sum(gateway_functions_seconds_count)")
    assert abs(float(avg["value"][1]) - 3.24 / 4) < 1e-9
    [cpu] = await query(base, 'faasdpy_function_cpu_seconds_total{namespace="openfaas-fn"}')
    assert cpu["value"][1] == "3.25"
    [mem] = await query(base, 'sum by (namespace) (faasdpy_function_memory_bytes)')
    assert mem["value"][1] == str(8 << 20)
    [up] = await query(base, 'up{job="gateway"}')
    assert up["value"][1] == "1"
