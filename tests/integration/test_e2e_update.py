"""End to end: ``faas-cli deploy`` of a function that exists (a PUT) replaces it without losing calls.

A bad update must leave the running function exactly as it was; a good one starts the new
instance, switches traffic, drains the old one and removes it, while a client keeps calling.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from faasd_py.types import DEFAULT_NAMESPACE
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import DaemonHandle, Inspector, function_body


async def test_an_update_with_a_bad_image_fails_and_the_old_function_keeps_serving(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    good = function_body("stable", images["sleep"], envVars={"VERSION": "v1", "SLEEP_MS": "1"})
    await daemon.deploy_ok(good)
    before = await inspect.instance("stable")
    task = await inspect.task("stable")
    status, out = await daemon.invoke("stable")
    assert (status, out) == (200, b"slept 1 ms version=v1\n")

    for bad, expect in (
        ({**good, "image": images.missing("stable-v2")}, 400),  # the registry has no such image
        ({**good, "image": images["crash"]}, 500),  # pulls fine, exits at start
        ({**good, "secrets": ["no-such-secret"]}, 400),
    ):
        status, text = await daemon.request("PUT", "/system/functions", json=bad)
        assert status == expect, (bad, status, text)
        await daemon.settle()
        assert [c.id for c in await inspect.containers("stable")] == [before.id], bad
        after = await inspect.task("stable")
        assert after.pid == task.pid
        status, out = await daemon.invoke("stable")
        assert (status, out) == (200, b"slept 1 ms version=v1\n")
        status, described = await daemon.describe("stable")
        assert described["image"] == images["sleep"] and described["envVars"]["VERSION"] == "v1"
    # the failed update's instance left no netns or IP behind
    assert inspect.netns() == [inspect.netns_name(DEFAULT_NAMESPACE, before.id)]
    assert list(inspect.ipam().values()) == inspect.netns()


async def test_an_update_under_load_loses_no_call_and_serves_the_new_version_once_it_returns(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    v1 = function_body("rolling", images["sleep"], envVars={"VERSION": "v1", "SLEEP_MS": "20"})
    await daemon.deploy_ok(v1)
    old = await inspect.instance("rolling")

    results: list[tuple[int, bytes]] = []
    flowing, stop = asyncio.Event(), asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        """faas-cli invoke in a loop: at least 200 calls, and going on until the update is done."""
        url = f"{daemon.url}/function/rolling.openfaas-fn"
        while len(results) < 200 or not stop.is_set():
            async with session.post(url, data=b"", headers={"Content-Type": "text/plain"}) as r:
                results.append((r.status, await r.read()))
            if len(results) >= 40:
                flowing.set()

    async with aiohttp.ClientSession() as session:
        calls = [asyncio.create_task(client(session)) for _ in range(4)]
        await flowing.wait()  # the update starts while calls are flowing
        t0 = time.monotonic()
        status, text = await daemon.request("PUT", "/system/functions", json={**v1, "envVars": {
            "VERSION": "v2", "SLEEP_MS": "20"}})
        took = time.monotonic() - t0
        assert status == 202, text
        during = len(results)
        # from the moment the PUT returned, every new call is answered by v2
        status, out = await daemon.invoke("rolling")
        assert (status, out) == (200, b"slept 20 ms version=v2\n")
        stop.set()
        await asyncio.gather(*calls)

    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} calls failed during the update: {failed[:3]}"
    versions = [out for _, out in results]
    assert set(versions) <= {b"slept 20 ms version=v1\n", b"slept 20 ms version=v2\n"}
    assert b"slept 20 ms version=v1\n" in versions[:during]
    assert versions[-1] == b"slept 20 ms version=v2\n"
    assert len(results) >= 200
    print(f"\nupdate took {took:.2f}s with {len(results)} calls in flight around it, none failed")

    await daemon.settle()
    [new] = await inspect.containers("rolling")
    assert new.id != old.id
    assert await inspect.client.get_task(DEFAULT_NAMESPACE, old.id) is None
    assert inspect.netns_name(DEFAULT_NAMESPACE, old.id) not in inspect.netns()
    assert inspect.netns_name(DEFAULT_NAMESPACE, old.id) not in inspect.ipam().values()
    status, described = await daemon.describe("rolling")
    assert status == 200 and described["envVars"]["VERSION"] == "v2"
    assert (described["replicas"], described["availableReplicas"]) == (1, 1)
