"""gateway/metrics.py: the exposition OpenFaaS dashboards read, exactly, and the metrics app."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from faasd_py.config import Settings
from faasd_py.gateway.metrics import CONTENT_TYPE, GatewayMetrics, build_metrics_app
from faasd_py.provider.usage import FunctionSample
from tests.unit.gateway_support import running_gateway, running_watchdog

FN = "/function/fn1.openfaas-fn"


def gateway_lines(text: str) -> list[str]:
    """The sample lines of the gateway_* and faasdpy_* families, in order."""
    return [ln for ln in text.splitlines() if re.match(r"(gateway|faasdpy)_", ln)]


def test_exposition_names_labels_types_and_values() -> None:
    samples = [FunctionSample("echo", "openfaas-fn", 1, 1.5, 4096, 3), FunctionSample("idle", "dev", 0, 0.0, 0, 0)]
    m = GatewayMetrics(lambda: samples)
    m.started("echo", "openfaas-fn")
    m.started("echo", "openfaas-fn")
    m.started("echo", "openfaas-fn")
    m.finished("echo", "openfaas-fn", 200, 0.003)
    m.finished("echo", "openfaas-fn", 200, 1.0)  # le is inclusive: counted in le="1"
    m.finished("echo", "openfaas-fn", 500, 20.0)
    text = m.render().decode()

    assert "# TYPE gateway_function_invocation_total counter" in text
    assert "# TYPE gateway_functions_seconds histogram" in text
    assert "# TYPE gateway_function_invocation_started counter" in text  # no _total, as in Go
    assert "# TYPE gateway_service_count gauge" in text
    lines = gateway_lines(text)
    assert 'gateway_function_invocation_total{code="200",function_name="echo.openfaas-fn"} 2.0' in lines
    assert 'gateway_function_invocation_total{code="500",function_name="echo.openfaas-fn"} 1.0' in lines
    assert 'gateway_function_invocation_started{function_name="echo.openfaas-fn"} 3' in lines
    ok = "code=\"200\",function_name=\"echo.openfaas-fn\""
    assert f'gateway_functions_seconds_bucket{{{ok},le="0.005"}} 1.0' in lines
    assert f'gateway_functions_seconds_bucket{{{ok},le="0.5"}} 1.0' in lines
    assert f'gateway_functions_seconds_bucket{{{ok},le="1"}} 2.0' in lines
    assert f'gateway_functions_seconds_bucket{{{ok},le="+Inf"}} 2.0' in lines
    assert f"gateway_functions_seconds_count{{{ok}}} 2.0" in lines
    assert f"gateway_functions_seconds_sum{{{ok}}} 1.003" in lines
    bad = "code=\"500\",function_name=\"echo.openfaas-fn\""
    assert f'gateway_functions_seconds_bucket{{{bad},le="10"}} 0.0' in lines
    assert f'gateway_functions_seconds_bucket{{{bad},le="+Inf"}} 1.0' in lines
    les = re.findall(rf'gateway_functions_seconds_bucket{{{re.escape(ok)},le="([^"]+)"}}', text)
    assert les == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
    assert 'gateway_service_count{function_name="echo.openfaas-fn"} 1.0' in lines
    assert 'gateway_service_count{function_name="idle.dev"} 0.0' in lines
    # chargeback
    fn = 'function_name="echo.openfaas-fn",namespace="openfaas-fn"'
    assert f"faasdpy_function_cpu_seconds_total{{{fn}}} 1.5" in lines
    assert f"faasdpy_function_memory_bytes{{{fn}}} 4096.0" in lines
    assert f"faasdpy_function_replicas{{{fn}}} 1.0" in lines
    assert f"faasdpy_function_invocations_total{{{fn}}} 3.0" in lines
    assert f"faasdpy_function_invocation_seconds_total{{{fn}}} 21.003" in lines
    assert 'faasdpy_function_memory_bytes{function_name="idle.dev",namespace="dev"} 0.0' in lines
    # the Python equivalents of Go's go_*/process_* families are there too
    assert "process_resident_memory_bytes" in text and "python_info" in text
    # and it all parses as the Prometheus text format
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"gateway_function_invocation", "gateway_functions_seconds", "gateway_service_count"} <= names


def test_no_invocations_no_series_but_the_families_are_declared() -> None:
    text = GatewayMetrics().render().decode()
    assert gateway_lines(text) == []
    assert "# TYPE gateway_function_invocation_started counter" in text


async def test_metrics_app_serves_text_format_and_healthz(tmp_path: Path) -> None:
    m = GatewayMetrics()
    m.finished("fn", "ns", 200, 0.1)
    client = TestClient(TestServer(build_metrics_app(m, Settings(state_dir=tmp_path)), host="127.0.0.1"))
    await client.start_server()
    try:
        # Prometheus asks for OpenMetrics first; it gets the 0.0.4 text format, like from Go's handler
        resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"})
        assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPE
        assert 'gateway_function_invocation_total{code="200",function_name="fn.ns"} 1.0' in await resp.text()
        resp = await client.get("/healthz")
        assert (resp.status, await resp.text()) == (200, "OK")
        assert (await client.post("/metrics")).status == 405
    finally:
        await client.close()


async def test_the_invoke_path_feeds_the_metrics(tmp_path: Path) -> None:
    m = GatewayMetrics()
    async with running_watchdog() as (_, endpoint), running_gateway(tmp_path, on_invocation=m.finished) as gw:
        gw.deploy("fn1", endpoint=endpoint)
        for _ in range(3):
            assert (await gw.client.get(FN)).status == 200
        assert (await gw.client.get("/function/unknown")).status == 404  # not a function: not counted
    lines = gateway_lines(m.render().decode())
    assert 'gateway_function_invocation_total{code="200",function_name="fn1.openfaas-fn"} 3.0' in lines
    assert not any("unknown" in ln for ln in lines)


def test_hot_path_cost_is_small() -> None:
    """Not a benchmark (bench/async_bench.py is): a guard against an accidental slow path."""
    import time

    m = GatewayMetrics()
    n = 20000
    t0 = time.perf_counter()
    for i in range(n):
        m.started("fn", "openfaas-fn")
        m.finished("fn", "openfaas-fn", 200, (i % 100) / 1000)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 20e-6, per_call  # measured ~0.5 µs; 40x headroom for a loaded CI machine


async def test_serve_also_listens_on_addresses_that_may_not_exist_yet(tmp_path: Path) -> None:
    """The daemon adds the bridge's gateway address for the prometheus core service; the bridge
    may appear only with the first container, hence IP_FREEBIND."""
    import aiohttp

    from faasd_py.gateway.app import serve
    from tests.infra import free_port

    port = free_port()
    app = build_metrics_app(GatewayMetrics(), Settings(state_dir=tmp_path))
    # 192.0.2.0/24 is TEST-NET-1: not configured here; binding works, nothing is ever sent there
    runner = await serve(app, "127.0.0.1", port, also=["127.0.0.2", "192.0.2.77"])
    try:
        async with aiohttp.ClientSession() as s:
            for host in ("127.0.0.1", "127.0.0.2"):
                async with s.get(f"http://{host}:{port}/healthz") as r:
                    assert (r.status, await r.text()) == (200, "OK")
        assert len(runner.addresses) == 3
    finally:
        await runner.cleanup()


async def test_functions_are_refused_the_metrics_but_the_host_and_core_services_are_not(tmp_path: Path) -> None:
    """The listener is on the bridge too, and the metrics name every namespace's functions. Here
    the "functions' subnet" is 127.0.0.0/24, so a loopback client stands for a function."""
    import aiohttp

    from faasd_py.config import NetworkSettings
    from faasd_py.gateway.app import serve
    from tests.infra import free_port

    core: set[str] = set()
    port = free_port()
    settings = Settings(state_dir=tmp_path, network=NetworkSettings(subnet="127.0.0.0/24"))
    runner = await serve(build_metrics_app(GatewayMetrics(), settings, lambda: core), "127.0.0.1", port,
                         also=["127.0.0.2", "127.0.1.1"])

    async def status_from(source: str) -> tuple[int, str]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as s, s.get(f"http://{source}:{port}/metrics") as r:
            return r.status, await r.text()

    try:
        assert await status_from("127.0.0.2") == (403, "the gateway's metrics are not served to functions\n")
        assert (await status_from("127.0.0.1"))[0] == 200  # the bridge's own address: the host
        assert (await status_from("127.0.1.1"))[0] == 200  # outside the subnet (metrics_host 0.0.0.0)
        core.add("127.0.0.2")  # a core service (prometheus) at that address
        assert (await status_from("127.0.0.2"))[0] == 200
    finally:
        await runner.cleanup()
