"""End to end: deploy, list, describe, invoke and delete a function the way faas-cli does.

Readiness is part of the contract here: once the deploy answered, the function is listed with
one available replica and the very first invocation is a 200, and an invocation that arrives
while a function is still starting waits for it instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator

import aiohttp

from faasd_py.types import DEFAULT_NAMESPACE
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import DaemonHandle, Inspector, function_body

BIG_ANNOTATION = json.dumps({"items": [{"id": i, "note": "ünïcødé ✓ 雪"} for i in range(300)]})


# --- 2. deploy, list, describe, invoke -----------------------------------------------------------


async def test_deploy_is_put_404_then_post_202_and_the_function_is_ready_when_it_returns(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    labels = {"com.openfaas.scale.min": "1", "team": "e2e", "emoji": "🚀"}
    annotations = {"topic": "cron", "big": BIG_ANNOTATION, "unicode": "Grüße, 世界 — \"quoted\" \\ back\nline"}
    assert len(BIG_ANNOTATION) > 10 * 1024
    body = function_body("echo", images["echo"], labels=labels, annotations=annotations)

    status, text = await daemon.request("PUT", "/system/functions", json=body)
    assert status == 404, text  # faas-cli then POSTs
    status, text = await daemon.request("POST", "/system/functions", json=body)
    assert status == 202, text

    # right after the deploy returned: listed, one replica, available, and the first call is a 200
    [listed] = await daemon.list()
    assert (listed["name"], listed["replicas"], listed["availableReplicas"]) == ("echo", 1, 1)
    status, out = await daemon.invoke("echo.openfaas-fn", b"first call")
    assert (status, out) == (200, b"first call")

    status, described = await daemon.describe("echo")
    assert status == 200
    assert described["name"] == "echo" and described["image"] == images["echo"]
    assert described["namespace"] == DEFAULT_NAMESPACE
    assert described["labels"] == labels
    assert described["annotations"] == annotations
    assert described["annotations"]["big"] == BIG_ANNOTATION  # byte for byte, 10+ KiB
    assert (described["replicas"], described["availableReplicas"]) == (1, 1)
    assert described["createdAt"]

    # a second POST of the same function is a conflict, not a second instance
    status, text = await daemon.request("POST", "/system/functions", json=body)
    assert status == 409, text
    assert len(await inspect.containers("echo")) == 1


async def test_invoke_echoes_the_body_with_and_without_namespace(daemon: DaemonHandle) -> None:
    front = getattr(daemon.runner, "front", None)
    assert front is not None  # the daemon's default: plain calls go through gateway/front.py
    served = front.served
    for target in ("echo.openfaas-fn", "echo"):
        status, out = await daemon.invoke(target, "grüß dich".encode())
        assert (status, out) == (200, "grüß dich".encode()), target
    status, out = await daemon.invoke("echo.openfaas-fn", b"")
    assert (status, out) == (200, b"")
    status, out = await daemon.invoke("nope.openfaas-fn", b"x")
    assert status == 404, out
    status, out = await daemon.invoke("echo.other-ns", b"x")
    assert status == 404, out
    assert front.served - served == 5


async def test_a_10_mib_body_streams_through(daemon: DaemonHandle) -> None:
    payload = os.urandom(10 << 20)
    status, out = await daemon.invoke("echo", payload, headers={"Content-Type": "application/octet-stream"})
    assert status == 200
    assert len(out) == len(payload) and out == payload

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(payload), 1 << 20):
            yield payload[i:i + (1 << 20)]
            await asyncio.sleep(0)

    async with aiohttp.ClientSession() as s, s.post(f"{daemon.url}/function/echo.openfaas-fn", data=chunks(),
                                                    headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 200
        assert await r.read() == payload


async def test_sub_paths_queries_and_methods_reach_an_http_mode_function(
    daemon: DaemonHandle, images: PushedImages
) -> None:
    await daemon.deploy_ok(function_body("web", images["http"]))
    status, out = await daemon.invoke("web.openfaas-fn", b"payload", path="/some/sub/path?a=1&b=two%20words",
                                      headers={"X-Custom": "yes"})
    assert status == 200, out
    seen = json.loads(out)
    assert seen["method"] == "POST"
    assert seen["path"] == "/some/sub/path"
    assert seen["query"] == "a=1&b=two%20words"
    assert seen["body"] == "payload"
    assert seen["headers"].get("X-Custom") == "yes"

    status, out = await daemon.invoke("web", path="/?k=v")
    assert status == 200 and json.loads(out)["query"] == "k=v"

    for method in ("GET", "PUT", "DELETE", "PATCH"):
        body = b"" if method == "GET" else f"{method} body".encode()
        status, out = await daemon.invoke("web", body, method=method, path="/m")
        assert status == 200, (method, out)
        seen = json.loads(out)
        assert (seen["method"], seen["path"], seen["body"]) == (method, "/m", body.decode()), method


# --- 5. delete -----------------------------------------------------------------------------------


async def test_delete_then_describe_delete_and_update_are_404_and_nothing_is_left(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("doomed", images["echo"]))
    c = await inspect.instance("doomed")
    task = await inspect.task("doomed")
    netns = inspect.netns_name(DEFAULT_NAMESPACE, c.id)
    assert netns in inspect.netns()
    assert netns in inspect.ipam().values()
    veths_before = inspect.veths()
    cmdline = _cmdline(task.pid)
    assert cmdline

    status, body = await daemon.remove("doomed")
    assert status == 202, body
    status, body = await daemon.describe("doomed")
    assert status == 404, body  # faas-cli: "No such function: doomed"
    assert "doomed" not in [f["name"] for f in await daemon.list()]
    status, body = await daemon.remove("doomed")
    assert status == 404, body  # faas-cli: "No existing function to remove"
    status, body = await daemon.request("PUT", "/system/functions", json=function_body("doomed", images["echo"]))
    assert status == 404, body
    status, out = await daemon.invoke("doomed")
    assert status == 404, out

    await daemon.settle()
    assert await inspect.settled("doomed") == []
    assert netns not in inspect.ipam().values()
    assert len(inspect.veths()) == len(veths_before) - 1
    assert _cmdline(task.pid) != cmdline, "the task's process is still running"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


# --- 7. readiness --------------------------------------------------------------------------------


async def test_a_server_without_a_health_route_is_ready_once_it_accepts(
    daemon: DaemonHandle, images: PushedImages
) -> None:
    await daemon.deploy_ok(function_body("plain", images["nohealth"]))
    [fn] = [f for f in await daemon.list() if f["name"] == "plain"]
    assert fn["availableReplicas"] == 1
    status, out = await daemon.invoke("plain", method="GET", path="/hello")
    assert (status, out) == (200, b"nohealth GET /hello\n")


async def test_an_invocation_during_the_start_waits_for_the_function(
    daemon: DaemonHandle, images: PushedImages
) -> None:
    images["sleep"]  # pushed before the clock starts
    deploy = asyncio.create_task(daemon.deploy(function_body("late", images["sleep"])))
    deadline = time.monotonic() + 30
    listed = None
    while listed is None and time.monotonic() < deadline:
        listed = next((f for f in await daemon.list() if f["name"] == "late"), None)
        if listed is None:
            await asyncio.sleep(0.002)
    assert listed is not None, "the function was never listed"
    started_before_ready = not deploy.done()
    status, out = await daemon.invoke("late", b"10")
    assert (status, out) == (200, b"slept 10 ms version=\n")
    status, text = await deploy
    assert status == 202, text
    assert started_before_ready, "the deploy finished before the invocation was sent; nothing was tested"
    assert listed["replicas"] == 1 and listed["availableReplicas"] == 0
