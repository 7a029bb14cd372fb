"""Prometheus metrics on the metrics port (8082), named and labelled like the OpenFaaS gateway's.

Existing OpenFaaS dashboards query these (``function_name`` is always ``name.namespace``):

* ``gateway_function_invocation_total{function_name,code}`` counter, per finished invocation;
* ``gateway_functions_seconds{function_name,code}`` histogram (Go's default buckets);
* ``gateway_function_invocation_started{function_name}`` counter, *without* ``_total`` as in Go;
* ``gateway_service_count{function_name}`` gauge: replicas, read at scrape time.

Chargeback, per function and namespace (``faasdpy_function_*``): CPU seconds and memory bytes
from the instances' cgroups, replicas, invocations and their summed duration.

The hot path only bumps plain dicts (one event loop, no locks): prometheus-client's labelled
children cost several microseconds per call, these a few hundred nanoseconds. The families are
built at scrape time. Always served as the text format 0.0.4, like Go's default handler: the
OpenMetrics format has no counter without ``_total``.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from faasd_py.config import Settings
from faasd_py.gateway.keys import SETTINGS
from faasd_py.network.dns import gateway_ip
from faasd_py.provider.usage import FunctionSample

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # prometheus.DefBuckets
_BUCKET_LABELS = [f"{b:g}" for b in BUCKETS]  # le="1", not "1.0": as Go writes them
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STARTED = "gateway_function_invocation_started"

SampleSource = Callable[[], Iterable[FunctionSample]]


class _Series:
    """Count, sum and (non-cumulative) bucket counts of one (function, namespace, code)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf only
        self.count = 0
        self.sum = 0.0


class GatewayMetrics:
    """The invocation hooks of the gateway and a prometheus-client collector of everything."""

    def __init__(self, samples: SampleSource | None = None) -> None:
        self._started: dict[tuple[str, str], int] = {}
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._samples = samples
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(self)

    # --- the hot path (InvokeProxy's on_start / on_invocation) ----------------------------------

    def started(self, name: str, namespace: str) -> None:
        key = (name, namespace)
        self._started[key] = self._started.get(key, 0) + 1

    def finished(self, name: str, namespace: str, status: int, seconds: float) -> None:
        key = (name, namespace, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.count += 1
        series.sum += seconds
        series.buckets[bisect_left(BUCKETS, seconds)] += 1

    # --- scrape time -------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily("gateway_function_invocation", "Function metrics",
                                    labels=["function_name", "code"])
        seconds = HistogramMetricFamily("gateway_functions_seconds", "Function time taken",
                                        labels=["function_name", "code"])
        spent: dict[tuple[str, str], float] = {}
        for (name, ns, code), s in sorted(self._series.items()):
            labels = [f"{name}.{ns}", str(code)]
            total.add_metric(labels, s.count)
            running = 0
            buckets = []
            for le, n in zip(_BUCKET_LABELS, s.buckets, strict=False):
                running += n
                buckets.append((le, running))
            buckets.append(("+Inf", s.count))
            seconds.add_metric(labels, buckets, s.sum)
            spent[(name, ns)] = spent.get((name, ns), 0.0) + s.sum
        yield total
        yield seconds

        service = GaugeMetricFamily("gateway_service_count", "Current count of replicas for function",
                                    labels=["function_name"])
        chargeback = ["function_name", "namespace"]
        cpu = CounterMetricFamily("faasdpy_function_cpu_seconds",
                                  "CPU time of the function's current instances (cgroup cpuacct)", labels=chargeback)
        memory = GaugeMetricFamily("faasdpy_function_memory_bytes",
                                   "Memory in use by the function's instances (cgroup memory.usage_in_bytes)",
                                   labels=chargeback)
        replicas = GaugeMetricFamily("faasdpy_function_replicas", "Replicas running (0 while scaled to zero)",
                                     labels=chargeback)
        invocations = CounterMetricFamily("faasdpy_function_invocations",
                                          "Invocations since the daemon started (sync and async)", labels=chargeback)
        duration = CounterMetricFamily("faasdpy_function_invocation_seconds",
                                       "Summed duration of the function's invocations", labels=chargeback)
        for sample in sorted(self._samples() if self._samples else (), key=lambda s: (s.namespace, s.name)):
            fn = f"{sample.name}.{sample.namespace}"
            labels = [fn, sample.namespace]
            service.add_metric([fn], sample.replicas)
            cpu.add_metric(labels, sample.cpu_seconds)
            memory.add_metric(labels, sample.memory_bytes)
            replicas.add_metric(labels, sample.replicas)
            invocations.add_metric(labels, sample.invocations)
            duration.add_metric(labels, spent.get((sample.name, sample.namespace), 0.0))
        yield from (service, cpu, memory, replicas, invocations, duration)

    def render(self) -> bytes:
        """The text exposition: prometheus-client's, plus the one counter it cannot name like Go does."""
        lines = [f"# HELP {STARTED} The total number of function HTTP requests started.\n",
                 f"# TYPE {STARTED} counter\n"]
        for (name, ns), n in sorted(self._started.items()):
            lines.append(f'{STARTED}{{function_name="{_escape(f"{name}.{ns}")}"}} {n}\n')
        return generate_latest(self.registry) + "".join(lines).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def build_metrics_app(metrics: GatewayMetrics, settings: Settings,
                      core_addresses: Callable[[], Collection[str]] = frozenset) -> web.Application:
    """``GET /metrics`` and ``GET /healthz``: what the OpenFaaS gateway serves on 8082 (no auth).

    Not to functions, though: the listener is also on the bridge (for the prometheus core
    service), and the metrics list every namespace's functions and invocation counts. A client
    from the functions' subnet gets a 403 unless it is the host itself or a core service
    (``core_addresses``).
    """
    subnet = ipaddress.ip_network(settings.network.subnet, strict=False)
    host = gateway_ip(settings.network.subnet)

    @web.middleware
    async def not_to_functions(request: web.Request, handler: Handler) -> web.StreamResponse:
        remote = request.remote or ""
        try:
            from_functions = ipaddress.ip_address(remote) in subnet
        except ValueError:
            from_functions = False  # a unix socket or the like: not a function
        if from_functions and remote != host and remote not in core_addresses():
            return web.Response(status=403, text="the gateway's metrics are not served to functions\n")
        return await handler(request)

    app = web.Application(middlewares=[not_to_functions])
    app[SETTINGS] = settings

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app
