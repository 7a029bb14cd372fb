"""End to end: asynchronous invocations (NATS JetStream) with callbacks, and the metrics port.

The real daemon in-process (and, for kill -9, as a separate process), a private nats-server,
real functions; the callback target is an aiohttp server on loopback.

Delivery guarantee, as tested here: **at least once**. A call in progress when its daemon dies
is delivered again after ``queue.ack_wait`` and called back once it completes; a daemon that
died after the callback but before the acknowledgement would call back twice (same X-Call-Id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml

from faasd_py.credentials import ensure_credentials, nats_token
from faasd_py.network.dns import gateway_ip
from faasd_py.runtime.model import TaskState
from tests.callback_receiver import Receiver, callback_receiver
from tests.infra import TestEnv
from tests.integration.conftest import PushedImages, remove_everything
from tests.integration.daemon_harness import DaemonHandle, Inspector, function_body, settings_for
from tests.nats_server import NatsServer, nats_missing

pytestmark = pytest.mark.skipif(nats_missing() is not None, reason=str(nats_missing()))

IDLE_1S = {"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "1s"}
FAIL_PROCESS = "/usr/bin/python3.11 -S /no/such/handler.py"  # the classic watchdog answers 500 (exit status 2)


@pytest.fixture(scope="module")
def natsd(testenv: TestEnv, e2e_state: Path) -> Any:
    """Requiring the token the daemon will find in its state dir, as the shipped nats.conf does."""
    settings = settings_for(testenv, e2e_state)
    ensure_credentials(settings)
    server = NatsServer(testenv.path / "nats-e2e-async", token=nats_token(settings)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def adaemon(testenv: TestEnv, e2e_state: Path, ctd: Any, natsd: NatsServer) -> AsyncIterator[DaemonHandle]:
    settings = settings_for(testenv, e2e_state)
    settings.queue.enabled = True
    settings.queue.nats_url = natsd.url
    settings.queue.ack_wait = 2.0
    settings.queue.backoff = 0.2
    settings.queue.backoff_max = 1.0
    settings.queue.attempts = 4
    handle = DaemonHandle(settings)
    await handle.start()
    await until(lambda: handle.daemon is not None and handle.daemon.queue is not None
                and handle.daemon.queue.connected, "the daemon's NATS connection")
    try:
        yield handle
    finally:
        await remove_everything(handle, Inspector(testenv, handle.settings, ctd))


@pytest.fixture
def ainspect(testenv: TestEnv, adaemon: DaemonHandle, ctd: Any) -> Inspector:
    return Inspector(testenv, adaemon.settings, ctd)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with callback_receiver() as r:
        yield r


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def enqueue(daemon: DaemonHandle, target: str, body: bytes = b"", *, callback: str = "",
                  headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    hdrs = dict(headers or {})
    if callback:
        hdrs["X-Callback-Url"] = callback
    return await daemon.raw(method, f"/async-function/{target}", data=body, headers=hdrs)


# --- enqueue, invoke, call back ---------------------------------------------------------------


async def test_202_with_call_id_then_the_callback_brings_the_function_s_answer(
    adaemon: DaemonHandle, images: PushedImages, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("aecho", images["echo"]))
    status, headers, body = await enqueue(adaemon, "aecho", "grüße async".encode(),
                                          callback=receiver.url + "/result?job=7")
    assert (status, body) == (202, b"")
    call_id = headers["X-Call-Id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", call_id)

    [cb] = await receiver.wait_for(1)
    assert cb.path == "/result?job=7"
    assert cb.body == "grüße async".encode()
    assert cb.headers["X-Function-Status"] == "200"
    assert cb.headers["X-Call-Id"] == call_id
    assert cb.headers["X-Function-Name"] == "aecho"
    assert 0 < float(cb.headers["X-Duration-Seconds"]) < 30

    # counted like a sync call (the worker goes through the same invoke path)
    [listed] = [f for f in await adaemon.list() if f["name"] == "aecho"]
    assert listed["invocationCount"] == 1


async def test_method_path_query_headers_and_body_reach_the_function(
    adaemon: DaemonHandle, images: PushedImages, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("ahttp", images["http"]))
    status, headers, _ = await enqueue(adaemon, "ahttp.openfaas-fn/orders/42?expand=items&x=%20y", b'{"n": 1}',
                                       method="PUT", callback=receiver.url,
                                       headers={"X-Tenant": "acme", "Content-Type": "application/json"})
    assert status == 202
    [cb] = await receiver.wait_for(1)
    seen = json.loads(cb.body)
    assert seen["method"] == "PUT"
    assert seen["path"] == "/orders/42"
    assert seen["query"] == "expand=items&x=%20y"
    assert seen["body"] == '{"n": 1}'
    got = {k.lower(): v for k, v in seen["headers"].items()}
    assert got["x-tenant"] == "acme" and got["content-type"] == "application/json"
    assert got["x-call-id"] == headers["X-Call-Id"]
    assert got["x-callback-url"] == receiver.url
    assert cb.headers["X-Function-Name"] == "ahttp.openfaas-fn"
    assert cb.headers["Content-Type"] == "application/json"  # the function's response headers come along


async def test_bad_callback_url_is_400_and_unknown_function_404(
    adaemon: DaemonHandle, images: PushedImages, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("aecho2", images["echo"]))
    for bad in ("not a url", "ftp://127.0.0.1/x", "/relative"):
        status, _, body = await enqueue(adaemon, "aecho2", b"x", callback=bad)
        assert status == 400, (bad, body)
        assert b"X-Callback-Url" in body
    status, _, _ = await enqueue(adaemon, "missing-fn", b"x", callback=receiver.url)
    assert status == 404
    await asyncio.sleep(0.5)
    assert receiver.attempts == []


async def test_a_callback_failing_twice_is_retried_until_it_succeeds(
    adaemon: DaemonHandle, images: PushedImages, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("aretry", images["echo"]))
    receiver.fail_next = 2
    receiver.fail_status = 503
    status, headers, _ = await enqueue(adaemon, "aretry", b"again", callback=receiver.url)
    assert status == 202
    [cb] = await receiver.wait_for(1)
    assert len(receiver.attempts) == 3
    assert [a.headers["X-Call-Id"] for a in receiver.attempts] == [headers["X-Call-Id"]] * 3
    assert cb.body == b"again"
    [listed] = [f for f in await adaemon.list() if f["name"] == "aretry"]
    assert listed["invocationCount"] == 1  # the function ran once; only the callback was repeated


async def test_a_function_answering_500_is_reported_as_500(
    adaemon: DaemonHandle, images: PushedImages, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("afail", images["echo"], envProcess=FAIL_PROCESS))
    status, _, _ = await enqueue(adaemon, "afail", b"x", callback=receiver.url)
    assert status == 202
    [cb] = await receiver.wait_for(1)
    assert cb.headers["X-Function-Status"] == "500"
    assert b"exit status" in cb.body
    await asyncio.sleep(1.0)
    assert len(receiver.attempts) == 1  # a 500 of the function is an answer, not retried


async def test_a_paused_function_is_resumed_by_the_worker(
    adaemon: DaemonHandle, images: PushedImages, ainspect: Inspector, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("adozer", images["echo"], labels=IDLE_1S))

    async def paused() -> bool:
        return (await ainspect.task("adozer")).state is TaskState.PAUSED

    await eventually(paused, "adozer to be paused")
    status, _, _ = await enqueue(adaemon, "adozer", b"wake up", callback=receiver.url)
    assert status == 202
    [cb] = await receiver.wait_for(1)
    assert (cb.headers["X-Function-Status"], cb.body) == ("200", b"wake up")
    [listed] = [f for f in await adaemon.list() if f["name"] == "adozer"]
    assert listed["invocationCount"] == 1


async def test_nats_down_means_503_and_the_daemon_keeps_serving(
    adaemon: DaemonHandle, images: PushedImages, natsd: NatsServer, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("aoutage", images["echo"]))
    natsd.stop()
    try:
        assert adaemon.daemon is not None and adaemon.daemon.queue is not None
        queue = adaemon.daemon.queue
        await until(lambda: not queue.connected, "the daemon to notice")
        status, _, body = await enqueue(adaemon, "aoutage", b"x", callback=receiver.url)
        assert status == 503 and b"NATS" in body, body
        assert await adaemon.invoke("aoutage", b"sync still works") == (200, b"sync still works")
    finally:
        natsd.start()
    await until(lambda: queue.connected, "the reconnection", timeout=30)
    status, _, _ = await enqueue(adaemon, "aoutage", b"back", callback=receiver.url)
    assert status == 202
    [cb] = await receiver.wait_for(1)
    assert cb.body == b"back"


# --- a daemon that dies mid-call -----------------------------------------------------------------


async def _ack_pending(natsd: NatsServer) -> int:
    nc = await nats.connect(natsd.url, token=natsd.token)
    try:
        info = await nc.jetstream().consumer_info("faas-request", "faasd-py-worker")
        return int(info.num_ack_pending)
    finally:
        await nc.close()


async def test_a_call_in_progress_when_the_daemon_dies_is_delivered_by_the_next_one(
    adaemon: DaemonHandle, images: PushedImages, natsd: NatsServer, receiver: Receiver
) -> None:
    await adaemon.deploy_ok(function_body("aslow", images["sleep"]))
    status, headers, _ = await enqueue(adaemon, "aslow?ms=3000", b"", callback=receiver.url)
    assert status == 202

    async def in_progress() -> bool:
        return await _ack_pending(natsd) == 1

    await eventually(in_progress, "the worker to take the call")
    await asyncio.sleep(0.3)
    await adaemon.stop(crash_queue=True)  # no ack, no nak: what kill -9 leaves behind
    await asyncio.sleep(3.5)  # the interrupted run ends inside the container; its answer goes nowhere
    assert receiver.attempts == []

    await adaemon.start()  # a new daemon on the same state
    [cb] = await receiver.wait_for(1, timeout=30)
    assert cb.headers["X-Call-Id"] == headers["X-Call-Id"]
    assert cb.headers["X-Function-Status"] == "200" and cb.body.startswith(b"slept 3000 ms")
    await asyncio.sleep(adaemon.settings.queue.ack_wait * 2)
    assert len(receiver.attempts) == 1  # exactly once here: the first daemon never called back


def _config(settings: Any) -> dict[str, Any]:
    """Settings as the YAML file ``faasd-py --config`` reads."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(settings).items()}


def _start_process(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "faasd_py", "--config", str(cfg), "up"], stdout=out,
                                stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])


async def _healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, _tail(log)
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"daemon not healthy: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def test_kill_9_of_the_daemon_process_loses_nothing(
    adaemon: DaemonHandle, images: PushedImages, natsd: NatsServer, receiver: Receiver, testenv: TestEnv,
    ainspect: Inspector,
) -> None:
    """The real thing: ``faasd-py up`` as a process, SIGKILLed while the function runs."""
    await adaemon.deploy_ok(function_body("akill", images["sleep"]))
    await adaemon.stop()  # the process daemons below use the same state, one at a time
    cfg = testenv.path / "async-kill.yaml"
    cfg.write_text(yaml.safe_dump(_config(adaemon.settings)))
    log = testenv.path / "async-kill.log"
    url = adaemon.url
    second: subprocess.Popen[bytes] | None = None
    try:
        first = _start_process(cfg, log)
        try:
            await _healthy(url, first, log)
            deadline = time.monotonic() + 15
            while True:  # /healthz is 200 once restored; the NATS connection may take a moment more
                status, headers, _ = await enqueue(adaemon, "akill?ms=2000", b"", callback=receiver.url)
                if status != 503 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == 202

            async def in_progress() -> bool:
                return await _ack_pending(natsd) == 1

            await eventually(in_progress, "the worker to take the call")
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        assert receiver.attempts == []

        second = _start_process(cfg, log)
        await _healthy(url, second, log)
        [cb] = await receiver.wait_for(1, timeout=30)
        assert cb.headers["X-Call-Id"] == headers["X-Call-Id"]
        assert cb.body.startswith(b"slept 2000 ms")

        # the process daemon also serves the metrics on the bridge's gateway address (prometheus.yml)
        bridge = f"http://{gateway_ip(adaemon.settings.network.subnet)}:{adaemon.settings.metrics_port}"
        async with aiohttp.ClientSession() as s, s.get(bridge + "/metrics") as r:
            assert r.status == 200
            assert 'gateway_function_invocation_started{function_name="akill.openfaas-fn"} 1' in await r.text()
        # ... but not to the functions, which reach that address too: it lists every namespace's functions
        pid = (await ainspect.task("akill")).pid
        fetch = f"import urllib.request as u, urllib.error as e\ntry: u.urlopen('{bridge}/metrics', timeout=5)\n" \
                "except e.HTTPError as x: print(x.code)"
        got = await asyncio.to_thread(subprocess.run, ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", fetch],
                                      capture_output=True, text=True, check=True)
        assert got.stdout.strip() == "403", got
    finally:
        if second is not None and second.poll() is None:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
        await adaemon.start()


# --- metrics and usage --------------------------------------------------------------------------


async def _scrape(daemon: DaemonHandle) -> str:
    async with aiohttp.ClientSession() as s, s.get(daemon.metrics_url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return await r.text()


async def test_metrics_count_invocations_with_the_openfaas_names(
    adaemon: DaemonHandle, images: PushedImages
) -> None:
    await adaemon.deploy_ok(function_body("counted", images["echo"]))
    for i in range(3):
        assert await adaemon.invoke("counted", f"call {i}".encode()) == (200, f"call {i}".encode())
    assert (await adaemon.invoke("counted.openfaas-fn", b"x", path="/x"))[0] == 200
    text = await _scrape(adaemon)
    fn = 'function_name="counted.openfaas-fn"'
    lines = text.splitlines()
    assert f'gateway_function_invocation_total{{code="200",{fn}}} 4.0' in lines
    assert f"gateway_function_invocation_started{{{fn}}} 4" in lines
    assert f'gateway_functions_seconds_count{{code="200",{fn}}} 4.0' in lines
    assert f'gateway_functions_seconds_bucket{{code="200",{fn},le="+Inf"}} 4.0' in lines
    assert f"gateway_service_count{{{fn}}} 1.0" in lines
    charge = f'{fn},namespace="openfaas-fn"'
    assert f"faasdpy_function_invocations_total{{{charge}}} 4.0" in lines
    assert f"faasdpy_function_replicas{{{charge}}} 1.0" in lines
    [memory] = [float(ln.split()[-1]) for ln in lines if ln.startswith(f"faasdpy_function_memory_bytes{{{charge}}}")]
    assert memory > 1 << 20  # a python watchdog: megabytes
    [cpu] = [float(ln.split()[-1]) for ln in lines if ln.startswith(f"faasdpy_function_cpu_seconds_total{{{charge}}}")]
    assert cpu > 0
    [listed] = [f for f in await adaemon.list() if f["name"] == "counted"]
    assert listed["invocationCount"] == 4  # without Prometheus
    assert "# TYPE gateway_functions_seconds histogram" in text


async def test_usage_1_reports_memory_and_cpu_of_a_running_function(
    adaemon: DaemonHandle, images: PushedImages
) -> None:
    await adaemon.deploy_ok(function_body("aburn", images["cpu"]))
    burner = asyncio.ensure_future(adaemon.invoke("aburn", path="?ms=1500"))
    await asyncio.sleep(0.3)
    status, described = await adaemon.describe("aburn")
    await burner
    assert status == 200
    usage = described["usage"]
    assert usage["totalMemoryBytes"] > 1 << 20
    assert 0.2 < usage["cpu"] < 3.0, usage  # about one core while the handler spins (2 vCPU here)
    status, plain = await adaemon.request("GET", "/system/function/aburn")
    assert "usage" not in json.loads(plain)
