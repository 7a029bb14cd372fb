"""End to end: scale to zero, replicas and self-healing (issue 4), against the real daemon.

* idle -> paused through the freezer: same IP, replicas 0/0, no CPU; the next call resumes it,
  and 20 concurrent first calls wake it exactly once (describe's ``faasd.wakes``), through the
  freezer, after which containerd is told with exactly one Resume (its event stream);
* the second idle level stops the task (IP released); the next call is a cold start;
* ``com.openfaas.scale.zero=false`` never pauses;
* POST /system/scale-function: 0 pauses, 1 resumes, 3 runs three instances that share the calls;
  ``com.openfaas.scale.min`` at deploy, ``com.openfaas.scale.max`` clamps, min > max is a 400;
* crash loops and OOM kills: restarted with backoff, visible in describe (``faasd`` field) and
  in the function's own log stream;
* a daemon restart keeps a paused function paused and an idle-stopped one stopped, and one woken
  through the freezer but not yet resynced with containerd is resynced after its next call.

The module runs its own daemon with a fast idle sweep; functions opt in to a 1 s idle time with
the zero-duration label, everything else keeps the (long) defaults.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from faasd_py.build import FunctionSpec, build_function_image, host_python_base, push_layout_async
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.model import TaskState
from faasd_py.types import DEFAULT_NAMESPACE
from tests.images import PY
from tests.infra import TestEnv
from tests.integration.conftest import PushedImages, remove_everything
from tests.integration.daemon_harness import DaemonHandle, Inspector, function_body, settings_for

LABEL_PARKED = "io.faasd-py.idle-stopped"
IDLE_1S = {"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "1s"}
NEVER_IDLE = {"com.openfaas.scale.zero": "false"}
LONG = 3600.0

# A function without a watchdog, so that the server is the task's init process: an OOM kill or
# an exit of it is the task's exit. It answers with its own address (instance-specific),
# optionally burns a little CPU all the time (SPIN=1), and crashes on demand: /crash?loop=1
# leaves a marker in the instance's rootfs (kept across restarts), so every restart crashes too.
PROBE_PY = """\
import json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARK = "/home/app/crash-marker"
if os.path.exists(MARK):
    sys.stderr.write("probe: crash marker present, exiting 1\\n")
    sys.stderr.flush()
    sys.exit(1)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))  # PID 1 has no default action for it

def spin():
    while True:
        t = time.monotonic()
        while time.monotonic() - t < 0.002:
            pass
        time.sleep(0.02)

if os.environ.get("SPIN") == "1":
    threading.Thread(target=spin, daemon=True).start()
hog = []

class Probe(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 0:
            self.rfile.read(n)
        path, _, query = self.path.partition("?")
        q = dict(p.partition("=")[::2] for p in query.split("&") if p)
        if path == "/crash":
            if q.get("loop"):
                open(MARK, "w").close()
            sys.stderr.write("probe: crashing on request\\n")
            sys.stderr.flush()
            os._exit(int(q.get("code", "1")))
        if path == "/hog":
            hog.append(b"\\x01" * (int(q.get("mb", "64")) << 20))
        self._reply({"ip": self.connection.getsockname()[0], "pid": os.getpid()})

    do_GET = do_POST = _any

    def log_message(self, fmt, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 8080), Probe).serve_forever()
"""


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def daemon(testenv: TestEnv, e2e_state: Path, ctd: ContainerdClient) -> AsyncIterator[DaemonHandle]:
    """The e2e daemon with a fast idle sweep; default idle levels long (functions opt in by label)."""
    settings = settings_for(testenv, e2e_state)
    settings.scaling.sweep_interval = 0.1
    settings.scaling.idle_after = LONG
    settings.scaling.stop_after = LONG
    handle = DaemonHandle(settings)
    await handle.start()
    try:
        yield handle
    finally:
        settings.scaling.stop_after = LONG
        await remove_everything(handle, Inspector(testenv, handle.settings, ctd))


@pytest.fixture(scope="module")
async def probe(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> str:
    ref = "localhost/faasd-scaling/probe:v1"
    layout = tmp_path_factory.mktemp("scaling-images") / "probe"
    spec = FunctionSpec(name="probe", entrypoint=[PY, "-S", "-u", "/home/app/probe.py"], files={"probe.py": PROBE_PY})
    await asyncio.to_thread(build_function_image, spec, layout, ref, base=host_python_base())
    destination = f"{testenv.registry}/faasd-scaling/probe:v1"
    await push_layout_async(layout, destination, ref, insecure=True)
    return destination


@pytest.fixture
def stop_after(daemon: DaemonHandle) -> Iterator[Callable[[float], None]]:
    """Set the second idle level for one test (the sweep reads it every time)."""

    def set_(seconds: float) -> None:
        daemon.settings.scaling.stop_after = seconds

    yield set_
    daemon.settings.scaling.stop_after = LONG


# --- helpers -------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting until {what}"
        await asyncio.sleep(0.05)


async def status_of(daemon: DaemonHandle, name: str) -> dict[str, Any]:
    status, body = await daemon.describe(name)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def faasd(status: dict[str, Any]) -> dict[str, Any]:
    extra = status["faasd"]
    assert isinstance(extra, dict)
    return extra


def cgroup_file(controller: str, instance: str, name: str) -> str:
    return Path(f"/sys/fs/cgroup/{controller}/{DEFAULT_NAMESPACE}/{instance}/{name}").read_text().strip()


def freezer(instance: str) -> str:
    return cgroup_file("freezer", instance, "freezer.state")


def cpu_ns(instance: str) -> int:
    return int(cgroup_file("cpuacct", instance, "cpuacct.usage"))


def ip_of(inspect: Inspector, instance: str) -> str | None:
    owner = inspect.netns_name(DEFAULT_NAMESPACE, instance)
    found = [ip for ip, o in inspect.ipam().items() if o == owner]
    assert len(found) <= 1, found
    return found[0] if found else None


async def until_paused(daemon: DaemonHandle, inspect: Inspector, name: str, timeout: float = 15.0) -> str:
    """Wait for the idler to pause the (one-instance) function; its instance id. The API says
    "paused" from the moment the pause starts (calls wait for it), the freezer a moment later."""
    cid = (await inspect.instance(name)).id

    async def paused() -> bool:
        return bool(faasd(await status_of(daemon, name))["state"] == "paused" and freezer(cid) == "FROZEN")

    await eventually(paused, f"{name} is paused", timeout)
    return cid


class EventCounter:
    """containerd task events of some topics, collected by our own subscription from now on."""

    def __init__(self, client: ContainerdClient, *topics: str) -> None:
        self._stream = client.subscribe(*(f'topic=="{t}"' for t in topics))
        self._reader: asyncio.Task[None] | None = None
        self.seen: list[tuple[str, str]] = []  # (topic, container id)

    async def __aenter__(self) -> EventCounter:
        await self._stream.started()
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for event in self._stream:
            self.seen.append((event.topic, getattr(event.payload, "container_id", "")))

    def count(self, topic: str, container: str) -> int:
        return sum(1 for t, c in self.seen if t == topic and c == container)

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.aclose()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


async def scale(daemon: DaemonHandle, name: str, replicas: int) -> None:
    status, body = await daemon.request("POST", f"/system/scale-function/{name}",
                                        json={"serviceName": name, "replicas": replicas})
    assert status == 202, body


async def remove(daemon: DaemonHandle, inspect: Inspector, name: str) -> None:
    status, body = await daemon.remove(name)
    assert status == 202, body
    await daemon.settle()
    assert await inspect.settled(name) == []


# --- scale to zero -------------------------------------------------------------------------------


async def test_an_idle_function_is_paused_keeps_its_ip_and_wakes_on_the_next_call(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, ctd: ContainerdClient
) -> None:
    await daemon.deploy_ok(function_body("dozer", images["echo"], labels=IDLE_1S))
    c = await inspect.instance("dozer")
    ip = ip_of(inspect, c.id)
    assert ip is not None
    assert (await daemon.invoke("dozer", b"awake"))[0] == 200
    running = await status_of(daemon, "dozer")
    assert (running["replicas"], running["availableReplicas"], faasd(running)["state"]) == (1, 1, "active")

    t0 = time.monotonic()
    assert await until_paused(daemon, inspect, "dozer") == c.id
    assert time.monotonic() - t0 >= 0.5  # it idled first (1 s since the last call)
    paused = await status_of(daemon, "dozer")
    assert (paused["replicas"], paused["availableReplicas"]) == (0, 0)
    assert freezer(c.id) == "FROZEN"
    task = await inspect.task("dozer")
    assert task.state is TaskState.PAUSED
    assert ip_of(inspect, c.id) == ip  # the address (and the netns) stay
    assert inspect.netns_name(DEFAULT_NAMESPACE, c.id) in inspect.netns()
    [listed] = [f for f in await daemon.list() if f["name"] == "dozer"]
    assert (listed["replicas"], listed["availableReplicas"], listed["faasd"]["state"]) == (0, 0, "paused")

    t0 = time.monotonic()
    status, out = await daemon.invoke("dozer", b"wake up")
    woke_ms = (time.monotonic() - t0) * 1000
    assert (status, out) == (200, b"wake up")

    async def running() -> bool:  # containerd is told after the call (the resync)
        return (await inspect.task("dozer")).state is TaskState.RUNNING and freezer(c.id) == "THAWED"

    await eventually(running, "dozer thawed and running in containerd's view")
    assert (await inspect.task("dozer")).pid == task.pid  # resumed, not restarted
    awake = await status_of(daemon, "dozer")
    assert (awake["replicas"], awake["availableReplicas"], faasd(awake)["state"]) == (1, 1, "active")
    assert woke_ms < 5000
    await remove(daemon, inspect, "dozer")


async def test_a_paused_function_uses_no_cpu(daemon: DaemonHandle, probe: str, inspect: Inspector) -> None:
    await daemon.deploy_ok(function_body("spinner", probe, labels=IDLE_1S, envVars={"SPIN": "1"}))
    c = await inspect.instance("spinner")
    before = cpu_ns(c.id)
    await asyncio.sleep(0.5)
    assert cpu_ns(c.id) - before > 1_000_000, "the spinning function should use CPU while it runs"

    await until_paused(daemon, inspect, "spinner")
    assert freezer(c.id) == "FROZEN"
    frozen = cpu_ns(c.id)
    await asyncio.sleep(1.5)
    assert cpu_ns(c.id) == frozen  # not a single nanosecond while frozen

    status, out = await daemon.invoke("spinner")
    assert status == 200, out
    await asyncio.sleep(0.3)
    assert cpu_ns(c.id) > frozen  # and it runs again once woken
    await remove(daemon, inspect, "spinner")


async def test_concurrent_first_calls_resume_it_once_and_all_succeed(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, ctd: ContainerdClient
) -> None:
    await daemon.deploy_ok(function_body("crowd", images["echo"], labels=IDLE_1S))
    for round_ in range(2):
        cid = await until_paused(daemon, inspect, "crowd")
        assert (await inspect.task("crowd")).state is TaskState.PAUSED
        wakes = faasd(await status_of(daemon, "crowd"))["wakes"]
        async with EventCounter(ctd, "/tasks/resumed", "/tasks/paused") as events:
            results = await asyncio.gather(*(daemon.invoke("crowd", f"call {i}".encode()) for i in range(20)))
            assert [r for r in results if r[0] != 200] == [], round_
            assert sorted(out for _, out in results) == sorted(f"call {i}".encode() for i in range(20))

            async def told_containerd() -> bool:  # the resync: containerd's Resume after the freezer thaw
                return (await inspect.task("crowd")).state is TaskState.RUNNING

            await eventually(told_containerd, "containerd lists the woken task as running")
            await asyncio.sleep(0.3)  # a second Resume, were there one, would show up by now
        assert faasd(await status_of(daemon, "crowd"))["wakes"] == wakes + 1, round_  # one wake-up for 20 calls
        assert events.count("/tasks/resumed", cid) == 1, (round_, events.seen)
        assert freezer(cid) == "THAWED"
        assert (await daemon.invoke("crowd", b"after"))[0] == 200
    await remove(daemon, inspect, "crowd")


async def test_the_second_idle_level_stops_the_task_and_the_next_call_cold_starts(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, stop_after: Callable[[float], None]
) -> None:
    stop_after(1.0)
    await daemon.deploy_ok(function_body("sleeper", images["echo"], labels=IDLE_1S))
    c = await inspect.instance("sleeper")
    old_ip = ip_of(inspect, c.id)
    await until_paused(daemon, inspect, "sleeper")

    async def stopped() -> bool:
        return bool(faasd(await status_of(daemon, "sleeper"))["state"] == "stopped")

    await eventually(stopped, "sleeper is stopped")
    assert await inspect.client.get_task(DEFAULT_NAMESPACE, c.id) is None  # no task at all
    assert ip_of(inspect, c.id) is None and old_ip not in inspect.ipam()  # the IP is released
    assert inspect.netns_name(DEFAULT_NAMESPACE, c.id) not in inspect.netns()
    kept = await inspect.instance("sleeper")  # the container (and its snapshot) stay
    assert kept.id == c.id and kept.labels.get(LABEL_PARKED)
    st = await status_of(daemon, "sleeper")
    assert (st["replicas"], st["availableReplicas"]) == (0, 0)

    stop_after(LONG)
    status, out = await daemon.invoke("sleeper", b"cold start")
    assert (status, out) == (200, b"cold start")
    assert (await inspect.task("sleeper")).state is TaskState.RUNNING
    assert ip_of(inspect, c.id) is not None
    assert not (await inspect.instance("sleeper")).labels.get(LABEL_PARKED)
    st = await status_of(daemon, "sleeper")
    assert (st["replicas"], st["availableReplicas"], faasd(st)["state"]) == (1, 1, "active")
    await remove(daemon, inspect, "sleeper")


async def test_an_http_mode_function_cold_starts_without_a_failed_call(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, stop_after: Callable[[float], None]
) -> None:
    """Regression: the idle stop kills the task, which leaves the watchdog's /tmp/.lock in the
    instance's writable layer; the restarted watchdog then said "healthy" before its upstream
    listened and the first call got a 500 ("Can't reach service")."""
    stop_after(1.0)
    await daemon.deploy_ok(function_body("sloth", images["http"], labels=IDLE_1S))
    for round_ in range(2):
        async def stopped() -> bool:
            return bool(faasd(await status_of(daemon, "sloth"))["state"] == "stopped")

        await eventually(stopped, "sloth is stopped")
        status, out = await daemon.invoke("sloth", b"first")
        assert status == 200, (round_, out)
        assert json.loads(out)["body"] == "first"
    await remove(daemon, inspect, "sloth")


async def test_paused_and_stopped_functions_are_deleted_without_leftovers(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, stop_after: Callable[[float], None]
) -> None:
    await daemon.deploy_ok(function_body("frozen", images["echo"], labels=NEVER_IDLE))
    await scale(daemon, "frozen", 0)
    assert freezer((await inspect.instance("frozen")).id) == "FROZEN"
    stop_after(1.0)
    await daemon.deploy_ok(function_body("gone", images["echo"], labels=IDLE_1S))

    async def stopped() -> bool:
        return bool(faasd(await status_of(daemon, "gone"))["state"] == "stopped")

    await eventually(stopped, "gone is stopped")
    await remove(daemon, inspect, "frozen")  # a frozen task must be thawed to die
    await remove(daemon, inspect, "gone")  # no task, no netns: only the container and snapshot


async def test_scale_zero_false_never_pauses(daemon: DaemonHandle, images: PushedImages, inspect: Inspector) -> None:
    await daemon.deploy_ok(function_body("insomniac", images["echo"],
                                         labels={**NEVER_IDLE, "com.openfaas.scale.zero-duration": "1s"}))
    await daemon.deploy_ok(function_body("witness", images["echo"], labels=IDLE_1S))
    c = await inspect.instance("insomniac")
    await until_paused(daemon, inspect, "witness")  # the idler ran and paused the other one
    await asyncio.sleep(1.0)
    st = await status_of(daemon, "insomniac")
    assert (st["replicas"], st["availableReplicas"], faasd(st)["state"]) == (1, 1, "active")
    assert freezer(c.id) == "THAWED"
    assert (await inspect.task("insomniac")).state is TaskState.RUNNING
    await remove(daemon, inspect, "insomniac")
    await remove(daemon, inspect, "witness")


# --- replicas ------------------------------------------------------------------------------------


async def addresses(daemon: DaemonHandle, name: str, calls: int) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(calls):
        status, out = await daemon.invoke(name, method="GET")
        assert status == 200, out
        seen[json.loads(out)["ip"]] += 1
    return seen


async def test_scale_api_pauses_resumes_and_runs_several_instances(
    daemon: DaemonHandle, probe: str, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("scaled", probe, labels=NEVER_IDLE))
    [c] = await inspect.containers("scaled")

    await scale(daemon, "scaled", 0)
    st = await status_of(daemon, "scaled")
    assert (st["replicas"], st["availableReplicas"], faasd(st)["state"]) == (0, 0, "paused")
    assert freezer(c.id) == "FROZEN"

    await scale(daemon, "scaled", 1)
    st = await status_of(daemon, "scaled")
    assert (st["replicas"], st["availableReplicas"], faasd(st)["state"]) == (1, 1, "active")
    await daemon.settle()  # the resync: containerd's Resume after the freezer thaw
    assert freezer(c.id) == "THAWED"
    task = await inspect.client.get_task(DEFAULT_NAMESPACE, c.id)
    assert task is not None and task.state is TaskState.RUNNING

    await scale(daemon, "scaled", 3)
    st = await status_of(daemon, "scaled")
    assert (st["replicas"], st["availableReplicas"]) == (3, 3)
    found = await inspect.containers("scaled")
    assert len(found) == 3 and c.id in [f.id for f in found]
    for f in found:
        task = await inspect.client.get_task(DEFAULT_NAMESPACE, f.id)
        assert task is not None and task.state is TaskState.RUNNING
    ips = {ip_of(inspect, f.id) for f in found}
    assert None not in ips and len(ips) == 3
    seen = await addresses(daemon, "scaled", 30)
    assert set(seen) == ips, seen  # every instance serves...
    assert max(seen.values()) - min(seen.values()) <= 1, seen  # ...its share (round robin)

    await scale(daemon, "scaled", 0)  # all three pause, and all three wake on a call
    assert {freezer(f.id) for f in found} == {"FROZEN"}
    assert set(await addresses(daemon, "scaled", 6)) == ips

    await scale(daemon, "scaled", 1)
    await daemon.settle()
    assert len(await inspect.containers("scaled")) == 1
    st = await status_of(daemon, "scaled")
    assert (st["replicas"], st["availableReplicas"]) == (1, 1)
    await remove(daemon, inspect, "scaled")


async def test_scale_min_at_deploy_starts_that_many_instances(
    daemon: DaemonHandle, probe: str, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("pair", probe, labels={**NEVER_IDLE, "com.openfaas.scale.min": "2"}))
    found = await inspect.containers("pair")
    assert len(found) == 2
    st = await status_of(daemon, "pair")
    assert (st["replicas"], st["availableReplicas"]) == (2, 2)
    assert len(await addresses(daemon, "pair", 4)) == 2
    await remove(daemon, inspect, "pair")


async def test_scale_max_clamps_and_a_min_above_the_max_is_rejected(
    daemon: DaemonHandle, probe: str, inspect: Inspector
) -> None:
    for labels in ({"com.openfaas.scale.min": "3", "com.openfaas.scale.max": "2"},
                   {"com.openfaas.scale.max": "0"}, {"com.openfaas.scale.max": "many"}):
        status, body = await daemon.deploy(function_body("capped", probe, labels=labels))
        assert status == 400, (labels, status, body)
        assert b"com.openfaas.scale" in body
        assert await inspect.leftovers("capped") == []

    await daemon.deploy_ok(function_body("capped", probe, labels={**NEVER_IDLE, "com.openfaas.scale.max": "2"}))
    await scale(daemon, "capped", 5)
    st = await status_of(daemon, "capped")
    assert (st["replicas"], st["availableReplicas"]) == (2, 2)
    assert len(await inspect.containers("capped")) == 2
    # an update may not slip past its own max either
    status, body = await daemon.deploy(function_body("capped", probe, labels={
        **NEVER_IDLE, "com.openfaas.scale.min": "3", "com.openfaas.scale.max": "2"}))
    assert status == 400, body
    await remove(daemon, inspect, "capped")


# --- self-healing --------------------------------------------------------------------------------


async def function_logs(daemon: DaemonHandle, name: str) -> list[str]:
    status, body = await daemon.request("GET", f"/system/logs?follow=false&name={name}&tail=200",
                                        headers={"User-Agent": "faas-cli/e2e"})
    assert status == 200, body
    return [json.loads(line)["text"] for line in body.splitlines() if line.strip()]


async def test_a_crash_loop_is_visible_in_describe_and_in_the_logs(
    daemon: DaemonHandle, probe: str, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("looper", probe, labels=NEVER_IDLE))
    c = await inspect.instance("looper")
    status, _ = await daemon.invoke("looper", path="/crash?loop=1")
    assert status >= 500  # the connection died with the task

    async def looping() -> bool:
        extra = faasd(await status_of(daemon, "looper"))
        return bool(extra["state"] == "crashloop" and extra["restarts"] >= 3)

    await eventually(looping, "looper shows a crash loop with 3 restarts", timeout=30)
    st = await status_of(daemon, "looper")
    assert st["availableReplicas"] == 0 and st["replicas"] == 1
    assert faasd(st)["lastExit"] == "exit status 1"
    [listed] = [f for f in await daemon.list() if f["name"] == "looper"]
    assert listed["faasd"]["state"] == "crashloop"
    restarts = faasd(st)["restarts"]

    async def more() -> bool:
        return bool(faasd(await status_of(daemon, "looper"))["restarts"] > restarts)

    await eventually(more, "the restarts keep coming (backoff, not given up)", timeout=20)

    async def logged() -> bool:
        lines = await function_logs(daemon, "looper")
        return all(any(f"faasd-py: instance {c.id} " in ln and f"restart #{n} in" in ln for ln in lines)
                   for n in (1, 2, 3))

    await eventually(logged, "faas-cli logs shows the restarts", timeout=10)
    lines = await function_logs(daemon, "looper")
    assert any(ln == f"faasd-py: instance {c.id} exited (exit status 1); restart #1 in 0.5s" for ln in lines), lines
    assert any("exited again (exit status 1); restart #2 in 1s" in ln for ln in lines), lines
    assert any("probe: crash marker present" in ln for ln in lines), lines  # its own last words too
    assert (await inspect.instance("looper")).id == c.id  # the same container throughout
    await remove(daemon, inspect, "looper")


async def test_an_oom_killed_task_is_restarted_and_says_oomkilled(
    daemon: DaemonHandle, probe: str, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("glutton", probe, labels=NEVER_IDLE, limits={"memory": "48Mi"}))
    c = await inspect.instance("glutton")
    first = await inspect.task("glutton")
    status, _ = await daemon.invoke("glutton", path="/hog?mb=128")
    assert status >= 500  # killed while answering

    async def restarted() -> bool:
        st = await status_of(daemon, "glutton")
        return bool(faasd(st)["lastExit"] == "OOMKilled" and st["availableReplicas"] == 1)

    await eventually(restarted, "glutton is back after the OOM kill", timeout=20)
    st = await status_of(daemon, "glutton")
    assert faasd(st)["restarts"] == 1 and faasd(st)["state"] == "active"
    status, out = await daemon.invoke("glutton", method="GET")
    assert status == 200, out
    assert (await inspect.task("glutton")).pid != first.pid
    assert (await inspect.instance("glutton")).id == c.id
    lines = await function_logs(daemon, "glutton")
    assert any(f"instance {c.id} exited (OOMKilled); restart #1" in ln for ln in lines), lines
    await remove(daemon, inspect, "glutton")


async def test_a_classic_watchdog_survives_the_oom_kill_of_its_handler(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    """The documented limit of the OOM case: the kernel kills the biggest process of the cgroup,
    which is the forked handler, not the watchdog; the call fails, the task lives on."""
    await daemon.deploy_ok(function_body("nibbler", images["mem"], labels=NEVER_IDLE, limits={"memory": "64Mi"}))
    task = await inspect.task("nibbler")
    status, _ = await daemon.invoke("nibbler", method="GET", path="?mb=128")
    assert status == 500
    await asyncio.sleep(0.5)
    st = await status_of(daemon, "nibbler")
    assert (faasd(st)["restarts"], faasd(st)["lastExit"], st["availableReplicas"]) == (0, "", 1)
    assert (await inspect.task("nibbler")).pid == task.pid
    status, out = await daemon.invoke("nibbler", method="GET", path="?mb=1")
    assert status == 200, out
    await remove(daemon, inspect, "nibbler")


# --- restore -------------------------------------------------------------------------------------


async def test_a_paused_function_stays_paused_across_a_daemon_restart(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("hibernate", images["echo"], labels=IDLE_1S))
    cid = await until_paused(daemon, inspect, "hibernate")
    task = await inspect.task("hibernate")

    await daemon.stop()
    await daemon.start()
    st = await status_of(daemon, "hibernate")
    assert (st["replicas"], st["availableReplicas"], faasd(st)["state"]) == (0, 0, "paused")
    assert freezer(cid) == "FROZEN"
    assert (await inspect.task("hibernate")).state is TaskState.PAUSED

    status, out = await daemon.invoke("hibernate", b"good morning")
    assert (status, out) == (200, b"good morning")
    assert (await inspect.task("hibernate")).pid == task.pid  # the same process, thawed
    assert freezer(cid) == "THAWED"
    await remove(daemon, inspect, "hibernate")


async def test_an_idle_stopped_function_stays_stopped_across_a_daemon_restart(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, stop_after: Callable[[float], None]
) -> None:
    stop_after(1.0)
    await daemon.deploy_ok(function_body("bear", images["echo"], labels=IDLE_1S))
    c = await inspect.instance("bear")

    async def stopped() -> bool:
        return bool(faasd(await status_of(daemon, "bear"))["state"] == "stopped")

    await eventually(stopped, "bear is stopped")
    stop_after(LONG)

    await daemon.stop()
    await daemon.start()
    st = await status_of(daemon, "bear")
    assert (st["replicas"], st["availableReplicas"], faasd(st)["state"]) == (0, 0, "stopped")
    assert await inspect.client.get_task(DEFAULT_NAMESPACE, c.id) is None
    assert ip_of(inspect, c.id) is None

    status, out = await daemon.invoke("bear", b"spring")
    assert (status, out) == (200, b"spring")
    assert (await inspect.task("bear")).state is TaskState.RUNNING
    await remove(daemon, inspect, "bear")


async def test_a_wake_containerd_was_not_told_of_yet_survives_a_daemon_restart(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stops between a wake through the freezer and the resync: containerd still lists
    the task as paused while it runs. The next daemon trusts containerd (paused), its first call's
    thaw is a no-op, and the resync then makes containerd's view true."""
    monkeypatch.setattr("faasd_py.provider.functions.RESYNC_QUIET", 60.0)  # no resync before the stop
    monkeypatch.setattr("faasd_py.provider.functions.RESYNC_WAIT", 60.0)
    await daemon.deploy_ok(function_body("insomniac", images["echo"], labels=NEVER_IDLE))
    c = await inspect.instance("insomniac")
    pid = (await inspect.task("insomniac")).pid
    await scale(daemon, "insomniac", 0)
    assert freezer(c.id) == "FROZEN"
    assert await daemon.invoke("insomniac", b"up") == (200, b"up")
    await daemon.stop()
    assert freezer(c.id) == "THAWED"
    assert (await inspect.task("insomniac")).state is TaskState.PAUSED  # containerd was not told

    monkeypatch.setattr("faasd_py.provider.functions.RESYNC_QUIET", 0.25)
    monkeypatch.setattr("faasd_py.provider.functions.RESYNC_WAIT", 5.0)
    await daemon.start()
    st = await status_of(daemon, "insomniac")
    assert (st["replicas"], faasd(st)["state"]) == (0, "paused")
    assert await daemon.invoke("insomniac", b"again") == (200, b"again")
    await daemon.settle()  # the resync
    task = await inspect.task("insomniac")
    assert (task.state, task.pid, freezer(c.id)) == (TaskState.RUNNING, pid, "THAWED")
    await remove(daemon, inspect, "insomniac")
