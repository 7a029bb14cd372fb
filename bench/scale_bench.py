"""The scale-to-zero benchmark (issue 4): real containerd, runc, CNI and registry, the daemon as its own process.

    sudo .venv/bin/python -m bench.scale_bench                  # 200 idle functions; adds a run to docs/benchmarks.md
    sudo .venv/bin/python -m bench.scale_bench --functions 20 --samples 10 --no-doc    # a quick look

Side by side per image (echo, http, fast), in one run: a paused function's first call (resume +
invoke, p50/p99), a warm call, and the cold start of a task stopped by the second idle level.
Then density: ``--functions`` more functions deployed and paused, with the daemon's RSS, host
memory per paused function (where it goes: the function's cgroup, its containerd shim, the
rest), ``GET /system/functions`` latency with all of them, and first calls to some of them.
Everything it starts is removed at the end, also on error or Ctrl-C; leftovers make the exit
status non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import http.client
import json
import random
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.daemon import NAMESPACE, DaemonProcess, request
from bench.images import BODY, NAMES, BenchImage, build_and_push
from bench.procstat import rss_mib
from bench.run import delete_all, git_commit, loadavg, machine, other_load, say, teardown, versions
from bench.stats import median, percentile
from faasd_py.runtime.client import ContainerdClient
from tests.infra import TestEnv, missing_prerequisite

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Scale to zero (`bench/scale_bench.py`)"
MARKER = "<!-- scale runs: newest first; `python -m bench.scale_bench` inserts each run below this line -->"
NEVER_IDLE = {"com.openfaas.scale.zero": "false"}  # paused only through the scale API
IDLE_1S = {"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "1s"}
STOP_AFTER = 1.0  # the second idle level in this run: paused 1 s more -> task stopped
CGROUP = Path("/sys/fs/cgroup")

TARGET_RESUME_MS = 15.0
FOLLOW = 10  # calls timed right after a paused function's first call
TARGET_RSS_MIB = 100.0
TARGET_LIST_MS = 50.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--functions", type=int, default=200, help="idle functions deployed and paused for density (200)")
    p.add_argument("--density-image", default="echo", choices=NAMES, help="image of the idle functions (echo)")
    p.add_argument("--images", default="echo,http,fast", help="images measured side by side (echo,http,fast)")
    p.add_argument("--samples", type=int, default=30, help="paused -> first 200 samples per image (30)")
    p.add_argument("--warm", type=int, default=300, help="sequential warm calls per image (300)")
    p.add_argument("--cold", type=int, default=10, help="stopped -> first 200 samples per image (10)")
    p.add_argument("--list-calls", type=int, default=50, help="GET /system/functions calls with all deployed (50)")
    p.add_argument("--wake", type=int, default=30, help="first calls to distinct idle functions of the density set")
    p.add_argument("--doc", type=Path, help=f"markdown file to add the run to (default {DOC.relative_to(REPO)})")
    p.add_argument("--no-doc", action="store_true", help="only print the results")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--dir", default="/tmp/fdpy-n", help="scratch dir for containerd, registry and daemon state")
    p.add_argument("--bridge", default="fdpyn0")
    p.add_argument("--subnet", default="10.105.0.0/16")
    p.add_argument("--netns-prefix", default="fdpyn-")
    return p.parse_args(argv)


# --- talking to the daemon -----------------------------------------------------------------------


class Gateway:
    """One keep-alive connection to the daemon plus its admin credentials."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        password = Path(daemon.config["state_dir"], "secrets", "basic-auth-password").read_text().strip()
        self.auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
        self.conn = daemon.connect(120.0)

    def call(self, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**(self.auth if auth else {}), "Content-Type": "application/json"}
        try:
            reply = request(self.conn, method, path, data, headers)
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = self.daemon.connect(120.0)
            reply = request(self.conn, method, path, data, headers)
        return reply.status, reply.body

    def deploy(self, name: str, img: BenchImage, labels: dict[str, str]) -> None:
        status, body = self.call("POST", "/system/functions", {
            "service": name, "image": img.ref, "namespace": NAMESPACE, "labels": labels,
            "annotations": {}, "envVars": img.env})
        if status not in (200, 202):
            raise RuntimeError(f"deploy {name}: {status} {body[:300]!r}")

    def scale(self, name: str, replicas: int) -> None:
        status, body = self.call("POST", f"/system/scale-function/{name}",
                                 {"serviceName": name, "namespace": NAMESPACE, "replicas": replicas})
        if status != 202:
            raise RuntimeError(f"scale {name} to {replicas}: {status} {body[:300]!r}")

    def describe(self, name: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/system/function/{name}?namespace={NAMESPACE}")
        if status != 200:
            raise RuntimeError(f"describe {name}: {status} {body[:300]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def invoke_ms(self, name: str, img: BenchImage) -> float:
        """One call through the gateway, checked (200 and the body echoed); its latency in ms."""
        t0 = time.perf_counter()
        status, body = self._invoke(name)
        ms = (time.perf_counter() - t0) * 1000
        if status != 200 or img.expect.encode() not in body:
            raise RuntimeError(f"invoke {name}: {status} {body[:200]!r}")
        return ms

    def _invoke(self, name: str) -> tuple[int, bytes]:
        headers = {"Content-Type": "text/plain"}
        try:
            reply = request(self.conn, "POST", f"/function/{name}.{NAMESPACE}", BODY.encode(), headers)
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = self.daemon.connect(120.0)
            reply = request(self.conn, "POST", f"/function/{name}.{NAMESPACE}", BODY.encode(), headers)
        return reply.status, reply.body

    def close(self) -> None:
        self.conn.close()


def instances(daemon: DaemonProcess, name: str) -> list[str]:
    """Container ids of a function's replicas, from their netns names (``<prefix><ns>-<id>``)."""
    prefix = f"{daemon.env.netns_prefix}{NAMESPACE}-"
    return [n[len(prefix):] for n in daemon.netns_of(name)]


def freezer_state(cid: str) -> str:
    try:
        return (CGROUP / "freezer" / NAMESPACE / cid / "freezer.state").read_text().strip()
    except OSError:
        return "gone"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting until {what}")
        time.sleep(every)


class ResumeClock:
    """containerd's ``/tasks/resumed`` events, timestamped by containerd when the resume is done:
    they split a paused call's latency into "until the task runs again" and "the call itself"."""

    def __init__(self, socket: str) -> None:
        self._socket = socket
        self._seen: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="resume-clock", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("containerd event subscription did not start")

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())  # cancels and awaits whatever grpc left running

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        await self._follow()

    async def _follow(self) -> None:
        async with ContainerdClient(self._socket) as client:
            stream = client.subscribe('topic=="/tasks/resumed"')
            await stream.started()
            self._ready.set()
            async for event in stream:
                cid = getattr(event.payload, "container_id", "")
                if event.timestamp is not None:
                    with self._lock:
                        self._seen.setdefault(cid, []).append(event.timestamp.timestamp())

    def resumed_after(self, cid: str, since: float, timeout: float = 2.0) -> float:
        """Seconds from ``since`` (time.time()) to the first resume of ``cid`` at or after it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                later = [t for t in self._seen.get(cid, []) if t >= since]
            if later:
                return min(later) - since
            if time.monotonic() > deadline:
                return float("nan")
            time.sleep(0.005)

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended already (the stream broke)
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(5)


# --- memory accounting ---------------------------------------------------------------------------


def daemon_rss(daemon: DaemonProcess) -> float:
    """The daemon's RSS plus its log helper's: both are what faasd-py costs."""
    helper = daemon.log_helper_pid()
    return rss_mib(daemon.pid) + (rss_mib(helper) if helper is not None else 0.0)


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (a shim's binary, Python's) split among their users."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cgroup_memory(cid: str) -> tuple[float, float, float]:
    """(rss, page cache, kernel memory) charged to an instance's memory cgroup, MiB."""
    stat = {}
    base = CGROUP / "memory" / NAMESPACE / cid
    try:
        for line in (base / "memory.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            stat[k] = int(v)
        kmem = int((base / "memory.kmem.usage_in_bytes").read_text())
    except (OSError, ValueError):
        return float("nan"), float("nan"), float("nan")
    return stat.get("total_rss", 0) / 2**20, stat.get("total_cache", 0) / 2**20, kmem / 2**20


def shim_pids(socket: str) -> dict[str, int]:
    """containerd-shim-runc-v2 processes of our containerd: container id -> pid."""
    out: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"containerd-shim-runc-v2"):
            continue
        args = [a.decode() for a in argv]
        if "-address" in args and args[args.index("-address") + 1] == socket and "-id" in args:
            out[args[args.index("-id") + 1]] = int(proc.name)
    return out


# --- the measurements ----------------------------------------------------------------------------


@dataclass
class Side:
    """One image's figures (ms)."""

    resume: list[float] = field(default_factory=list)  # paused -> first 200
    resumed: list[float] = field(default_factory=list)  # call sent -> containerd: task resumed (the resync)
    follow: list[float] = field(default_factory=list)  # slowest of the FOLLOW calls right after the first
    warm: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)  # stopped task -> first 200


@dataclass
class Density:
    functions: int = 0
    image: str = ""
    deploy_s: float = 0.0
    deploy_ms: list[float] = field(default_factory=list)
    pause_ms: list[float] = field(default_factory=list)
    frozen: int = 0
    daemon_rss_before: float = 0.0
    daemon_rss_after: float = 0.0
    daemon_pss_after: float = 0.0
    containerd_rss_before: float = 0.0
    containerd_rss_after: float = 0.0
    host_mib_per_function: float = 0.0
    cgroup_rss_mib: float = 0.0  # per function
    cgroup_cache_mib: float = 0.0
    cgroup_kmem_mib: float = 0.0
    shim_pss_mib: float = 0.0
    list_ms: list[float] = field(default_factory=list)
    listed: int = 0
    wake_ms: list[float] = field(default_factory=list)


@dataclass
class Results:
    sides: dict[str, Side] = field(default_factory=dict)
    density: Density = field(default_factory=Density)


def measure_sides(gw: Gateway, daemon: DaemonProcess, images: dict[str, BenchImage], args: argparse.Namespace,
                  results: Results, clock: ResumeClock) -> None:
    names = list(images)
    for n in names:
        results.sides[n] = Side()
        gw.deploy(f"{n}-z", images[n], NEVER_IDLE)
        gw.deploy(f"{n}-cold", images[n], IDLE_1S)
    for n in names:
        for _ in range(5):  # unmeasured: connections and caches of both paths are warm
            gw.invoke_ms(f"{n}-z", images[n])

    say(f"paused -> first 200: {args.samples} samples per image (paused through POST /system/scale-function)")
    for _ in range(args.samples):
        for n in names:  # interleaved, so drift hits every image alike
            fn = f"{n}-z"
            gw.scale(fn, 0)  # returns once the freezer holds every replica
            [cid] = instances(daemon, fn)
            if freezer_state(cid) != "FROZEN":
                raise RuntimeError(f"{fn} not frozen after scaling to 0: {freezer_state(cid)}")
            time.sleep(0.1)
            sent = time.time()
            results.sides[n].resume.append(gw.invoke_ms(fn, images[n]))
            # the calls right after: one of them may meet the resync (frozen again for containerd's Resume)
            results.sides[n].follow.append(max(gw.invoke_ms(fn, images[n]) for _ in range(FOLLOW)))
            results.sides[n].resumed.append(clock.resumed_after(cid, sent) * 1000)
    for n in names:
        s = results.sides[n]
        told = sum(1 for v in s.resumed if v == v)  # NaN: no resumed event within 2 s
        say(f"  {n}: p50 {percentile(s.resume, 50):.2f} ms, p99 {percentile(s.resume, 99):.2f} ms; "
            f"containerd told after {percentile(s.resumed, 50):.2f} ms p50 ({told}/{len(s.resumed)})")

    say(f"warm: {args.warm} sequential calls per image")
    for n in names:
        results.sides[n].warm = [gw.invoke_ms(f"{n}-z", images[n]) for _ in range(args.warm)]
        s = results.sides[n]
        say(f"  {n}: p50 {percentile(s.warm, 50):.2f} ms, p99 {percentile(s.warm, 99):.2f} ms")

    say(f"stopped task -> first 200: {args.cold} samples per image (idle 1 s -> paused, {STOP_AFTER:g} s more -> "
        "stopped)")
    for _ in range(args.cold):
        for n in names:
            fn = f"{n}-cold"

            def stopped(fn: str = fn) -> bool:
                return bool(gw.describe(fn)["faasd"]["state"] == "stopped" and not instances(daemon, fn))

            wait_until(stopped, f"{fn} is stopped and its netns gone", timeout=30)
        for n in names:
            results.sides[n].cold.append(gw.invoke_ms(f"{n}-cold", images[n]))
    for n in names:
        s = results.sides[n]
        say(f"  {n}: p50 {percentile(s.cold, 50):.0f} ms, p99 {percentile(s.cold, 99):.0f} ms")
    delete_all(daemon, [f"{n}-{kind}" for n in names for kind in ("z", "cold")])


def measure_density(gw: Gateway, daemon: DaemonProcess, env: TestEnv, img: BenchImage, args: argparse.Namespace,
                    results: Results) -> None:
    d = results.density
    d.functions, d.image = args.functions, img.name
    d.daemon_rss_before = daemon_rss(daemon)
    d.containerd_rss_before = rss_mib(env.pids["containerd"])
    host_before = mem_available_mib()
    names = [f"idle-{i:03d}" for i in range(args.functions)]
    say(f"density: deploying {len(names)} {img.name} functions, then pausing each (scale to 0)")
    t0 = time.monotonic()
    for i, name in enumerate(names):
        t = time.perf_counter()
        gw.deploy(name, img, NEVER_IDLE)
        d.deploy_ms.append((time.perf_counter() - t) * 1000)
        if (i + 1) % 50 == 0:
            say(f"  {i + 1} deployed")
    d.deploy_s = time.monotonic() - t0
    for name in names:
        t = time.perf_counter()
        gw.scale(name, 0)
        d.pause_ms.append((time.perf_counter() - t) * 1000)
    cids = {n: instances(daemon, n) for n in names}
    d.frozen = sum(1 for ids in cids.values() for c in ids if freezer_state(c) == "FROZEN")
    time.sleep(3.0)  # let the kernel settle (page cache, slab) before reading memory

    d.daemon_rss_after = daemon_rss(daemon)
    helper = daemon.log_helper_pid()
    d.daemon_pss_after = pss_mib(daemon.pid) + (pss_mib(helper) if helper is not None else 0.0)
    d.containerd_rss_after = rss_mib(env.pids["containerd"])
    d.host_mib_per_function = (host_before - mem_available_mib()) / len(names)
    mems = [cgroup_memory(c) for ids in cids.values() for c in ids]
    d.cgroup_rss_mib = median([m[0] for m in mems])
    d.cgroup_cache_mib = median([m[1] for m in mems])
    d.cgroup_kmem_mib = median([m[2] for m in mems])
    shims = shim_pids(env.containerd_socket)
    d.shim_pss_mib = median([pss_mib(shims[c]) for ids in cids.values() for c in ids if c in shims])
    say(f"  daemon RSS {d.daemon_rss_before:.1f} -> {d.daemon_rss_after:.1f} MiB; host "
        f"{d.host_mib_per_function:.1f} MiB per paused function (cgroup rss {d.cgroup_rss_mib:.1f}, "
        f"cache {d.cgroup_cache_mib:.1f}, kernel {d.cgroup_kmem_mib:.1f}, shim PSS {d.shim_pss_mib:.1f})")

    for _ in range(args.list_calls):
        t = time.perf_counter()
        status, body = gw.call("GET", f"/system/functions?namespace={NAMESPACE}")
        d.list_ms.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise RuntimeError(f"list: {status} {body[:200]!r}")
        d.listed = len(json.loads(body))
    say(f"  GET /system/functions with {d.listed} functions: p50 {percentile(d.list_ms, 50):.1f} ms, "
        f"p99 {percentile(d.list_ms, 99):.1f} ms")

    for name in random.Random(4).sample(names, min(args.wake, len(names))):
        d.wake_ms.append(gw.invoke_ms(name, img))
    say(f"  first call to {len(d.wake_ms)} paused functions among {len(names)}: "
        f"p50 {percentile(d.wake_ms, 50):.2f} ms, p99 {percentile(d.wake_ms, 99):.2f} ms")
    say("  deleting the idle functions")
    delete_all(daemon, names)


# --- the report ----------------------------------------------------------------------------------


def verdicts(results: Results) -> list[str]:
    out = []
    for n, s in results.sides.items():
        v = percentile(s.resume, 50)
        out.append(f"{'MET   ' if v <= TARGET_RESUME_MS else 'MISSED'} {n}: paused -> first 200 p50 = {v:.2f} ms "
                   f"(target ≤ {TARGET_RESUME_MS:g})")
        told = sum(1 for t in s.resumed if t == t)
        if told < len(s.resumed):  # the wake went through the freezer, but containerd was not told
            out.append(f"MISSED {n}: containerd saw the task resumed after {told}/{len(s.resumed)} wakes")
    d = results.density
    if d.functions:
        out.append(f"{'MET   ' if d.daemon_rss_after <= TARGET_RSS_MIB else 'MISSED'} daemon + log helper RSS with "
                   f"{d.functions} paused functions = {d.daemon_rss_after:.1f} MiB (target ≤ {TARGET_RSS_MIB:g})")
        v = percentile(d.list_ms, 50)
        out.append(f"{'MET   ' if v <= TARGET_LIST_MS else 'MISSED'} GET /system/functions with {d.listed} "
                   f"functions p50 = {v:.1f} ms (target ≤ {TARGET_LIST_MS:g})")
    return out


def markdown(results: Results, images: dict[str, BenchImage]) -> str:
    names = list(results.sides)
    head = "| metric (ms) | " + " | ".join(f"**{n}**" for n in names) + " | target |"
    lines = [head, "|---|" + "---|" * len(names) + "---|"]

    def row(label: str, f: Callable[[Side], float], fmt: str = ".2f", target: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(format(f(results.sides[n]), fmt) for n in names)
                     + f" | {target} |")

    row("paused → first 200, p50", lambda s: percentile(s.resume, 50), target=f"≤ {TARGET_RESUME_MS:g}")
    row("paused → first 200, p99", lambda s: percentile(s.resume, 99))
    row("warm call, p50", lambda s: percentile(s.warm, 50))
    row("warm call, p99", lambda s: percentile(s.warm, 99))
    row("resume cost: paused p50 - warm p50", lambda s: percentile(s.resume, 50) - percentile(s.warm, 50))
    row(f"slowest of the {FOLLOW} calls right after it (one may meet the resync), p50",
        lambda s: percentile(s.follow, 50))
    row(f"slowest of the {FOLLOW} calls right after it, max", lambda s: max(s.follow, default=float("nan")))
    row("containerd told (its `/tasks/resumed` event) after the call was sent, p50",
        lambda s: percentile([v for v in s.resumed if v == v], 50))
    lines.append("| … samples where containerd was told within 2 s | " + " | ".join(
        f"{sum(1 for v in results.sides[n].resumed if v == v)}/{len(results.sides[n].resumed)}" for n in names)
        + " | all |")
    row("stopped task → first 200 (cold start), p50", lambda s: percentile(s.cold, 50), ".0f")
    row("stopped task → first 200 (cold start), max", lambda s: max(s.cold, default=float("nan")), ".0f")
    lines.append("| samples: paused / warm / cold | " + " | ".join(
        f"{len(results.sides[n].resume)} / {len(results.sides[n].warm)} / {len(results.sides[n].cold)}"
        for n in names) + " | |")
    d = results.density
    if d.functions:
        lines += [
            "",
            f"Density: {d.functions} **{d.image}** functions deployed, then each paused (`scale-function` 0)",
            "",
            "| metric | value | target |",
            "|---|---|---|",
            f"| deploy, all {d.functions} one after the other (s) / per deploy p50 (ms) | {d.deploy_s:.0f} / "
            f"{percentile(d.deploy_ms, 50):.0f} | |",
            f"| pause (`scale-function` 0 → 202) p50 (ms) | {percentile(d.pause_ms, 50):.1f} | |",
            f"| replicas FROZEN in the freezer | {d.frozen}/{d.functions} | |",
            f"| daemon + its log helper RSS before → after (MiB) | {d.daemon_rss_before:.1f} → "
            f"{d.daemon_rss_after:.1f} "
            f"(PSS {d.daemon_pss_after:.1f}) | ≤ {TARGET_RSS_MIB:g} |",
            f"| daemon RSS per function (KiB) | "
            f"{(d.daemon_rss_after - d.daemon_rss_before) * 1024 / d.functions:.0f} | |",
            f"| containerd RSS before → after (MiB) | {d.containerd_rss_before:.1f} → {d.containerd_rss_after:.1f} | |",
            f"| host memory per paused function: MemAvailable drop / N (MiB) | {d.host_mib_per_function:.1f} | |",
            f"| … its cgroup: rss / page cache / kernel, median (MiB) | {d.cgroup_rss_mib:.1f} / "
            f"{d.cgroup_cache_mib:.1f} / {d.cgroup_kmem_mib:.1f} | |",
            f"| … its containerd shim, PSS median (MiB) | {d.shim_pss_mib:.1f} | |",
            f"| `GET /system/functions` with {d.listed} functions p50 / p99 (ms) | "
            f"{percentile(d.list_ms, 50):.1f} / {percentile(d.list_ms, 99):.1f} | ≤ {TARGET_LIST_MS:g} (p50) |",
            f"| first call to {len(d.wake_ms)} distinct paused functions p50 / p99 (ms) | "
            f"{percentile(d.wake_ms, 50):.2f} / {percentile(d.wake_ms, 99):.2f} | |",
        ]
    from bench.images import KINDS

    lines += ["", "Images: " + "; ".join(f"**{n}**: {KINDS[n]}" for n in dict.fromkeys([*names, d.image]) if n)
              + "."]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    image_names = tuple(dict.fromkeys(n.strip() for n in args.images.split(",") if n.strip()))
    unknown = set(image_names) - set(NAMES)
    if unknown:
        raise SystemExit(f"unknown image(s) {sorted(unknown)}; have {', '.join(NAMES)}")
    why = missing_prerequisite()
    if why:
        print(f"bench: cannot run: {why}", file=sys.stderr)
        return 2
    command = "sudo .venv/bin/python -m bench.scale_bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)
    load_before, others_before = loadavg(), other_load()
    env = TestEnv(dir=args.dir, bridge=args.bridge, subnet=args.subnet, netns_prefix=args.netns_prefix)
    daemon: DaemonProcess | None = None
    results = Results()
    error: BaseException | None = None
    t0 = time.monotonic()
    try:
        say(f"starting containerd, registry, journald under {env.dir}")
        env.up()
        say("building and pushing the images")
        images = build_and_push(tuple(dict.fromkeys([*image_names, args.density_image])), env.path / "images",
                                env.registry)
        daemon = DaemonProcess(env, env.path / "daemon", "IfNotPresent")
        daemon.config["scaling"] = {"stop_after": STOP_AFTER}
        say(f"starting the daemon: {daemon.command}")
        daemon.start()
        gw = Gateway(daemon)
        clock = ResumeClock(env.containerd_socket)
        clock.start()
        try:
            measure_sides(gw, daemon, {n: images[n] for n in image_names}, args, results, clock)
            if args.functions > 0:
                measure_density(gw, daemon, env, images[args.density_image], args, results)
        finally:
            clock.stop()
            gw.close()
    except BaseException as exc:  # reported below, after the teardown
        error = exc
        traceback.print_exc()
        if daemon is not None:
            print(f"daemon log (tail):\n{daemon.log_tail()}", file=sys.stderr)
    finally:
        leaks = teardown(env, daemon)
    elapsed = time.monotonic() - t0
    if error is not None:
        return report.failed(error, leaks)

    verdict_lines = verdicts(results)
    meta = [
        f"- Machine: {machine()}",
        f"- Software: {versions()}",
        f"- Git commit: {git_commit()}",
        f"- Command: `{command}`",
        f"- Plan: per image {args.samples} paused → first 200 samples, {args.warm} warm calls, {args.cold} cold "
        f"starts; density {args.functions} {args.density_image} functions; daemon `scaling.stop_after: "
        f"{STOP_AFTER:g}`, other settings production defaults; took {elapsed / 60:.1f} min",
        f"- Host load: loadavg {load_before} at start, {loadavg()} at the end; other busy processes at start: "
        f"{others_before}",
    ]
    text = "\n".join([
        f"### {started:%Y-%m-%d %H:%M} UTC — scale to zero, {args.functions} idle functions",
        "", *meta, "", markdown(results, images), "", "Targets:", "", "```", *verdict_lines, "```", "",
    ])
    print()
    print(text)
    doc = None if args.no_doc else (args.doc or DOC)
    if doc is not None:
        report.insert_into(doc, text, MARKER, SECTION)
        say(f"added to {doc}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=1))
    if leaks:
        report.print_leaks(leaks)
        return 1
    missed = [v for v in verdict_lines if v.startswith("MISSED")]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
