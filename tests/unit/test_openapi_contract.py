"""Contract tests: the gateway API against the OpenFaaS gateway's OpenAPI spec.

The spec, its errata and our deliberate differences from it are in tests/contract/openapi.py.
Here the gateway runs over the in-memory provider on loopback, in a thread of its own because
schemathesis sends its requests synchronously (``requests``). Generation is derandomized and
bounded, so a run takes a few seconds and is the same every time.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import jsonschema_rs
import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from schemathesis.specs.openapi.checks import status_code_conformance

from faasd_py.gateway.app import build_app
from faasd_py.gateway.auth import Credentials
from faasd_py.gateway.metrics import GatewayMetrics, build_metrics_app
from faasd_py.provider.contract import Endpoint
from faasd_py.provider.queue import QueuedCall
from faasd_py.types import FunctionDeployment, FunctionResources, LogMessage, Secret
from tests.contract.openapi import (
    EXCLUDED_CHECKS,
    FUZZ_CHECKS,
    METRICS_PORT_ONLY,
    OPERATIONS,
    SHARED_SPEC_PATH,
    SPEC,
    SPEC_ERRATA,
    SPEC_PATH,
    STATUS_DEVIATIONS,
    is_documented,
    no_traceback,
    status_is_known,
)
from tests.fakes import FakeProvider
from tests.unit.gateway_support import AUTH, Watchdog, make_settings

T = TypeVar("T")

GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # strconv.ParseBool, as the gateway parses follow
FN = "fn1"
NS = "openfaas-fn"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# Half of the generated names are ones the seeded provider knows, so generated requests get past
# the 404s and reach the handlers' real work; DELETE has a function of its own to remove.
KNOWN = {"probability": 0.5}
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 20, "deterministic": True, "database": "none", "mode": "all"},
        "phases": {"stateful": {"enabled": False}},
        "dictionaries": {
            "functions": {"values": [FN, "undated"]},
            "namespaces": {"values": [NS]},
            "doomed": {"values": ["doomed"]},
            "secrets": {"values": ["s1", "s2"]},
        },
        "parameters": {
            "path.functionName": {"dictionary": "functions", **KNOWN},
            "path.namespace": {"dictionary": "namespaces", **KNOWN},
            "query.name": {"dictionary": "functions", **KNOWN},
            "query.namespace": {"dictionary": "namespaces", **KNOWN},
            "body.service": {"dictionary": "functions", **KNOWN},
            "body.serviceName": {"dictionary": "functions", **KNOWN},
            "body.namespace": {"dictionary": "namespaces", **KNOWN},
            "body.functionName": {"dictionary": "doomed", **KNOWN},
            "body.name": {"dictionary": "secrets", **KNOWN},
            "body.alerts[*].labels.function_name": {"dictionary": "functions", **KNOWN},
        },
    }
)
schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)
generated = schema.exclude(method="GET", path="/metrics")  # METRICS_PORT_ONLY


# --- a gateway on loopback, in its own thread -----------------------------------------------------


class RecordingQueue:
    def __init__(self) -> None:
        self.calls: list[QueuedCall] = []

    async def enqueue(self, call: QueuedCall) -> None:
        self.calls.append(call)


class ErrorLog(logging.Handler):
    """ERROR records (tracebacks the gateway logged instead of showing them) while a case ran."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class LiveGateway:
    url: str
    provider: FakeProvider
    queue: RecordingQueue
    loop: asyncio.AbstractEventLoop
    errors: ErrorLog
    runners: list[web.AppRunner] = field(default_factory=list)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)


def seed(provider: FakeProvider, watchdog: Endpoint) -> None:
    """A function with every optional field set and a ready replica, one with no creation time, a secret, logs."""
    rich = FunctionDeployment(
        service=FN, image="ghcr.io/openfaas/alpine:latest", namespace=NS, env_process="cat",
        env_vars={"A": "1"}, constraints=["node.platform.os == linux"], secrets=["s1"],
        labels={"com.openfaas.scale.max": "3"}, annotations={"topic": "cron"},
        limits=FunctionResources(memory="128Mi", cpu="100m"), requests=FunctionResources(memory="64Mi"),
        read_only_root_filesystem=True,
    )
    provider.fake_functions.add(rich, watchdog)
    provider.fake_functions.add(FunctionDeployment(service="undated", image="alpine:3", namespace=NS), watchdog)
    provider.fake_functions.add(FunctionDeployment(service="doomed", image="alpine:3", namespace=NS))
    del provider.fake_functions.created_at[("undated", NS)]
    provider.fake_secrets.items[("s1", NS)] = Secret("s1", NS, b"v")
    provider.fake_logs.history.append(LogMessage(FN, NS, "fake-instance", CREATED, "hello"))


async def _start(tmp: Path) -> tuple[str, FakeProvider, RecordingQueue, list[web.AppRunner]]:
    runners = []
    wd_runner = web.AppRunner(Watchdog().app())
    await wd_runner.setup()
    await web.TCPSite(wd_runner, "127.0.0.1", 0).start()
    runners.append(wd_runner)
    wd_port = wd_runner.addresses[0][1]

    settings = make_settings(tmp)
    provider = FakeProvider()
    seed(provider, Endpoint("127.0.0.1", wd_port, "fake-instance"))
    queue = RecordingQueue()
    app = build_app(provider, settings, Credentials.load(settings), queue=queue)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    runners.insert(0, runner)
    return f"http://127.0.0.1:{runner.addresses[0][1]}", provider, queue, runners


@contextmanager
def live_gateway(tmp: Path) -> Iterator[LiveGateway]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="contract-gateway", daemon=True)
    thread.start()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        url, provider, queue, runners = asyncio.run_coroutine_threadsafe(_start(tmp), loop).result(timeout=10)
        gw = LiveGateway(url, provider, queue, loop, errors, runners)
        try:
            yield gw
        finally:
            for runner in runners:
                gw.run(runner.cleanup())
    finally:
        logging.getLogger().removeHandler(errors)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with live_gateway(tmp_path_factory.mktemp("contract")) as gw:
        yield gw


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[LiveGateway]:
    with live_gateway(tmp_path) as gw:
        yield gw


# --- the spec file ------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_SPEC_PATH.exists(), reason="no shared/ beside this checkout")
def test_vendored_spec_is_the_shared_reference() -> None:
    assert SPEC_PATH.read_bytes() == SHARED_SPEC_PATH.read_bytes(), "copy shared/reference's spec again"


def test_errata_and_deviations_name_documented_operations() -> None:
    documented = set(OPERATIONS)
    for method, path, status, _ in SPEC_ERRATA:
        assert (method, path) in documented and status in SPEC["paths"][path][method.lower()]["responses"]
    assert set(STATUS_DEVIATIONS) <= documented
    assert documented >= METRICS_PORT_ONLY
    assert {check.__name__ for check in FUZZ_CHECKS}.isdisjoint(EXCLUDED_CHECKS)
    assert len(OPERATIONS) == 20  # a new spec version with more operations needs a look


# --- routing ------------------------------------------------------------------------------------


def concrete_path(path: str) -> str:
    return path.replace("{functionName}", FN).replace("{namespace}", NS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_every_documented_operation_is_routed(tmp_path: Path, method: str, path: str) -> None:
    settings = make_settings(tmp_path)
    if (method, path) in METRICS_PORT_ONLY:
        app = build_metrics_app(GatewayMetrics(), settings)
    else:
        app = build_app(FakeProvider(), settings, Credentials.load(settings), queue=RecordingQueue())
    match = await app.router.resolve(make_mocked_request(method, concrete_path(path), app=app))
    assert match.http_exception is None, f"{method} {path}: {match.http_exception}"


# --- valid requests: status and body as documented (or as listed) --------------------------------


DEPLOYMENT = {"service": "fn2", "image": "ghcr.io/openfaas/alpine:latest", "namespace": NS, "envProcess": "env",
              "labels": {}, "annotations": {}}
ALERT = {"status": "firing", "receiver": "scale-up",
         "alerts": [{"status": "firing", "labels": {"alertname": "APIHighInvocationRate", "function_name": FN}}]}

# (method, spec path, request overrides, expected status)
VALID_REQUESTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/healthz", {}, 200),
    ("GET", "/system/info", {}, 200),
    ("POST", "/system/alert", {"body": ALERT}, 200),
    ("GET", "/system/functions", {}, 200),
    ("GET", "/system/functions", {"query": {"namespace": NS}}, 200),
    ("PUT", "/system/functions", {"body": {**DEPLOYMENT, "service": FN}}, 202),
    ("PUT", "/system/functions", {"body": DEPLOYMENT}, 404),  # faas-cli POSTs after exactly this
    ("POST", "/system/functions", {"body": DEPLOYMENT}, 202),
    ("DELETE", "/system/functions", {"body": {"functionName": FN, "namespace": NS}}, 202),
    ("DELETE", "/system/functions", {"body": {"functionName": "nope"}}, 404),
    ("POST", "/system/scale-function/{functionName}",
     {"path_parameters": {"functionName": FN}, "body": {"serviceName": FN, "namespace": NS, "replicas": 2}}, 202),
    ("GET", "/system/function/{functionName}", {"path_parameters": {"functionName": FN}}, 200),
    ("GET", "/system/function/{functionName}", {"path_parameters": {"functionName": "undated"},
                                                "query": {"namespace": NS}}, 200),
    ("GET", "/system/function/{functionName}", {"path_parameters": {"functionName": "nope"}}, 404),
    ("GET", "/system/secrets", {}, 200),
    ("PUT", "/system/secrets", {"body": {"name": "s1", "namespace": NS, "value": "new"}}, 202),
    ("POST", "/system/secrets", {"body": {"name": "s2", "value": "v", "rawValue": "dg=="}}, 201),
    ("DELETE", "/system/secrets", {"body": {"name": "s1", "namespace": NS}}, 202),
    ("GET", "/system/logs", {"query": {"name": FN, "tail": 10, "follow": False}}, 200),
    ("GET", "/system/namespaces", {}, 200),
    ("POST", "/async-function/{functionName}", {"path_parameters": {"functionName": FN}, "body": "hi"}, 202),
    ("POST", "/async-function/{functionName}.{namespace}",
     {"path_parameters": {"functionName": FN, "namespace": NS}, "body": "hi"}, 202),
    ("POST", "/function/{functionName}", {"path_parameters": {"functionName": FN}, "body": "hi"}, 200),
    ("POST", "/function/{functionName}.{namespace}",
     {"path_parameters": {"functionName": FN, "namespace": NS}, "body": "hi"}, 200),
]


@pytest.mark.parametrize(
    ("method", "path", "overrides", "expected"), VALID_REQUESTS,
    ids=[f"{m} {p} {e}" for m, p, _, e in VALID_REQUESTS],
)
def test_valid_requests_match_the_spec(
    gateway: LiveGateway, method: str, path: str, overrides: dict[str, Any], expected: int
) -> None:
    operation = schema[path][method]
    kwargs = copy.deepcopy(overrides)
    if "body" in kwargs and isinstance(kwargs["body"], str):
        kwargs["media_type"] = "text/plain"
    case = operation.Case(**kwargs)
    assert is_documented(method, path, expected), f"{method} {path} {expected} is neither documented nor listed"
    deviation = STATUS_DEVIATIONS.get((method, path))
    excluded = [status_code_conformance] if deviation and deviation[0] == expected else []
    response = case.call_and_validate(base_url=gateway.url, headers=AUTH, excluded_checks=excluded)
    assert response.status_code == expected, response.text
    assert not gateway.errors.records
    if path.startswith("/async-function/"):
        assert [call.name for call in gateway.queue.calls] == [FN]


def test_listed_functions_and_status_decode_the_way_faas_cli_needs(gateway: LiveGateway) -> None:
    """Beyond the schema: createdAt is never null or empty and replicas are integers (faas-cli-contract §0)."""
    listed = requests.get(f"{gateway.url}/system/functions", headers=AUTH, timeout=5).json()
    described = requests.get(f"{gateway.url}/system/function/undated", headers=AUTH, timeout=5).json()
    for status in [*listed, described]:
        datetime.fromisoformat(status["createdAt"])
        assert isinstance(status["replicas"], int) and isinstance(status["availableReplicas"], int)
    assert {s["name"] for s in listed} == {FN, "undated", "doomed"}
    rich = next(s for s in listed if s["name"] == FN)
    assert rich["createdAt"] == "2026-01-02T03:04:05Z"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"serviceName": False, "replicas": 1}, 400),  # was: the path's name, as if serviceName were absent
        ({"serviceName": FN, "replicas": 2**63}, 400),  # was: 202; the spec says int64
        ({"replicas": 2}, 202),  # the OpenFaaS scaler's own request: the path names the function
    ],
)
def test_scale_bodies_found_by_fuzzing(gateway: LiveGateway, body: dict[str, Any], status: int) -> None:
    response = requests.post(f"{gateway.url}/system/scale-function/{FN}", json=body, headers=AUTH, timeout=5)
    assert response.status_code == status, response.text


def test_log_lines_are_log_entries(gateway: LiveGateway) -> None:
    """NDJSON: each line is one LogEntry (schemathesis validates a body, not a stream of them)."""
    validator = jsonschema_rs.validator_for(SPEC["components"]["schemas"]["LogEntry"], validate_formats=True)
    response = requests.get(f"{gateway.url}/system/logs", params={"name": FN}, headers=AUTH, timeout=5)
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines and all(validator.is_valid(line) for line in lines), lines


def test_system_operations_need_credentials(gateway: LiveGateway) -> None:
    """The spec defines basicAuth without applying it; OpenFaaS applies it to /system/* (gateway-behaviour §2)."""
    for method, path in OPERATIONS:
        if (method, path) in METRICS_PORT_ONLY:
            continue
        response = requests.request(method, gateway.url + concrete_path(path), timeout=5)
        if path.startswith("/system/"):
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
        else:
            assert response.status_code != 401, (method, path)


# --- generated requests: never a server error, and answers in the documented shape ----------------


@generated.parametrize()
def test_generated_requests(case: schemathesis.Case[Any], shared_gateway: LiveGateway) -> None:
    shared_gateway.errors.records.clear()
    if case.operation.path == "/system/logs" and case.query and str(case.query.get("follow")) in GO_TRUE:
        case.query["follow"] = "false"  # a followed stream never ends by itself
    case.call_and_validate(
        base_url=shared_gateway.url,
        headers=AUTH,
        checks=FUZZ_CHECKS,
        additional_checks=[status_is_known, no_traceback],
    )
    assert not shared_gateway.errors.records, [r.getMessage() for r in shared_gateway.errors.records]
