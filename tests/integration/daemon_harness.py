"""Run the real daemon in-process against the session's containerd, registry and CNI.

The daemon is built exactly as ``faasd-py up`` builds it (faasd_py.daemon.build); only the
settings point at the test infrastructure. Tests talk to it over HTTP like faas-cli does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from faasd_py.config import Settings
from faasd_py.daemon import Daemon, build
from faasd_py.gateway.app import serve
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.model import ContainerInfo, TaskInfo
from faasd_py.types import DEFAULT_NAMESPACE
from tests.infra import TestEnv, free_port


def settings_for(env: TestEnv, state: Path) -> Settings:
    s = Settings(
        state_dir=state / "state",
        run_dir=state / "run",
        containerd_socket=env.containerd_socket,
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
    )
    s.network.bridge = env.bridge
    s.network.subnet = env.subnet
    s.network.netns_prefix = env.netns_prefix
    s.network.ipam_dir = str(state / "ipam")
    s.network.nameservers = ["127.0.0.1"]  # functions resolve nothing outside in tests
    s.timeouts.stop_grace = 2.0
    s.timeouts.ready = 20.0
    s.timeouts.invoke_wait = 20.0
    s.queue.enabled = False  # no NATS of the host's: tests of async calls point it at their own nats-server
    return s

SMALL = 1 << 20


def function_body(name: str, image: str, **extra: Any) -> dict[str, Any]:
    """The deploy body faas-cli sends: labels and annotations always present (maps behind
    pointers), everything else only when set (omitempty)."""
    body: dict[str, Any] = {"service": name, "image": image, "labels": {}, "annotations": {}}
    body.update({k: v for k, v in extra.items() if v not in (None, "", [], {})})
    return body


@dataclass
class DaemonHandle:
    settings: Settings
    daemon: Daemon | None = None
    runner: web.AppRunner | None = None
    metrics_runner: web.AppRunner | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.metrics_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def auth(self) -> dict[str, str]:
        password = self.settings.password_file.read_text().strip()
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def start(self) -> None:
        self.daemon = await build(self.settings)
        self.runner = await serve(self.daemon.app, self.settings.host, self.settings.port,
                                  front=self.settings.fast_invoke)
        self.metrics_runner = await serve(self.daemon.metrics_app, "127.0.0.1", self.settings.metrics_port)
        if self.daemon.queue is not None:
            self.daemon.queue.start()
        self.tasks = [asyncio.create_task(self.daemon.functions.run_events()),
                      asyncio.create_task(self.daemon.functions.run_idler())]
        await self.daemon.functions.restore()
        if self.daemon.queue is not None:
            self.daemon.queue.start_worker()

    async def stop(self, *, crash_queue: bool = False) -> None:
        """What SIGTERM does: stop serving, leave the functions running.

        ``crash_queue``: queued calls in progress are dropped unacknowledged, as a kill -9 leaves
        them (JetStream redelivers them after ack_wait), instead of being handed back."""
        if self.daemon is not None and self.daemon.queue is not None:
            await self.daemon.queue.close(grace=0 if crash_queue else self.settings.timeouts.stop_grace,
                                          abandon=crash_queue)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
            self.metrics_runner = None
        for t in self.tasks:
            t.cancel()
        if self.daemon is not None:
            await self.daemon.functions.close()
            self.daemon.logs.close()
            with contextlib.suppress(Exception):
                await self.daemon.registry.close()
            await self.daemon.client.close()
        self.daemon = None
        self.runner = None

    async def settle(self) -> None:
        assert self.daemon is not None
        await self.daemon.functions.settle()

    # --- faas-cli's requests ----------------------------------------------------------------

    async def request(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> tuple[int, bytes]:
        headers = dict(kw.pop("headers", {}))
        if auth:
            headers.update(self.auth)
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, headers=headers, **kw) as r:
            return r.status, await r.read()

    async def raw(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        """A request exactly as given (no credentials added, redirects not followed)."""
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, allow_redirects=False,
                                                           **kw) as r:
            return r.status, dict(r.headers), await r.read()

    async def deploy(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """faas-cli deploy: PUT, and POST only if the PUT says 404."""
        status, text = await self.request("PUT", "/system/functions", json=body)
        if status == 404:
            status, text = await self.request("POST", "/system/functions", json=body)
        return status, text

    async def deploy_ok(self, body: dict[str, Any]) -> None:
        """A deploy faas-cli reports as a success (it exits 0 only on 200 or 202; we answer 202)."""
        status, text = await self.deploy(body)
        assert status == 202, (body["service"], status, text)

    async def invoke(self, name: str, body: bytes = b"", *, method: str = "POST", path: str = "",
                     headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
        """faas-cli invoke: ``/function/NAME[.NS]``, no credentials, text/plain unless told."""
        hdrs = {"Content-Type": "text/plain", "User-Agent": "faas-cli/e2e (openfaas; linux; amd64)",
                **(headers or {})}
        data = io.BytesIO(body) if len(body) > SMALL else body  # aiohttp warns about large raw bytes
        return await self.request(method, f"/function/{name}{path}", auth=False, data=data, headers=hdrs,
                                  timeout=aiohttp.ClientTimeout(total=timeout))

    async def describe(self, name: str, namespace: str = "") -> tuple[int, Any]:
        """faas-cli describe's first request: ``GET /system/function/NAME?[namespace=NS&]usage=1``."""
        query = f"namespace={namespace}&usage=1" if namespace else "usage=1"
        status, body = await self.request("GET", f"/system/function/{name}?{query}")
        return status, (json.loads(body) if status == 200 else body)

    async def list(self, namespace: str = "") -> list[dict[str, Any]]:
        status, body = await self.request("GET", "/system/functions" + (f"?namespace={namespace}" if namespace else ""))
        assert status == 200, (status, body)
        result: list[dict[str, Any]] = json.loads(body)
        return result

    async def remove(self, name: str, namespace: str = "") -> tuple[int, bytes]:
        """faas-cli remove: ``DELETE /system/functions`` with a JSON body."""
        body: dict[str, str] = {"functionName": name}
        if namespace:
            body["namespace"] = namespace
        return await self.request("DELETE", "/system/functions", json=body)


# --- what a function leaves in containerd and the kernel -----------------------------------------

LABEL_FUNCTION = "io.faasd-py.function"


def instance_pattern(name: str) -> re.Pattern[str]:
    """Instance ids are ``<name>-<8 hex>`` (provider.instances.new_instance_id)."""
    return re.compile(rf"^{re.escape(name)}-[0-9a-f]{{8}}$")


@dataclass
class Inspector:
    """Looks at containerd, /run/netns, the IPAM directory and the bridge directly (not through
    the daemon), so a test sees what is really there."""

    env: TestEnv
    settings: Settings
    client: ContainerdClient

    @property
    def ipam_dir(self) -> Path:
        return Path(self.settings.network.ipam_dir) / self.settings.network.network_name

    def netns_name(self, namespace: str, instance: str) -> str:
        return f"{self.settings.network.netns_prefix}{namespace}-{instance}"

    async def containers(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> list[ContainerInfo]:
        found = await self.client.list_containers(namespace, f'labels."{LABEL_FUNCTION}"=="{name}"')
        return sorted(found, key=lambda c: c.created_at or datetime.min.replace(tzinfo=UTC))

    async def instance(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> ContainerInfo:
        """The only instance of a one-replica function."""
        found = await self.containers(name, namespace)
        assert len(found) == 1, [c.id for c in found]
        return found[0]

    async def task(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> TaskInfo:
        c = await self.instance(name, namespace)
        task = await self.client.get_task(namespace, c.id)
        assert task is not None, f"{c.id} has no task"
        return task

    def ipam(self) -> dict[str, str]:
        """host-local's reservations: ip -> owner (the CNI container id, i.e. the netns name)."""
        out: dict[str, str] = {}
        if self.ipam_dir.is_dir():
            for p in self.ipam_dir.iterdir():
                with contextlib.suppress(ValueError):
                    ipaddress.ip_address(p.name)
                    out[p.name] = p.read_text().splitlines()[0].strip()
        return out

    def netns(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        prefix = self.settings.network.netns_prefix
        return [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0].startswith(prefix)]

    def veths(self) -> list[str]:
        """Interfaces enslaved to the test bridge (one host-side veth per running instance)."""
        bridge = Path(f"/sys/class/net/{self.env.bridge}/brif")
        return sorted(p.name for p in bridge.iterdir()) if bridge.is_dir() else []

    async def leftovers(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
        """Everything of function ``name`` still present: empty once it is really gone."""
        pat = instance_pattern(name)
        found = [f"container {c.id}" for c in await self.client.list_containers(namespace) if pat.match(c.id)]
        found += [f"task {t.id}" for t in await self.client.list_tasks(namespace) if pat.match(t.id)]
        found += [f"snapshot {s}" for s in await self.client.list_snapshots(namespace, self.settings.snapshotter)
                  if pat.match(s)]
        ns_prefix = f"{self.settings.network.netns_prefix}{namespace}-"
        found += [f"netns {n}" for n in self.netns() if n.startswith(ns_prefix) and pat.match(n[len(ns_prefix):])]
        found += [f"ipam {ip} ({owner})" for ip, owner in self.ipam().items()
                  if owner.startswith(ns_prefix) and pat.match(owner[len(ns_prefix):])]
        fifo_dir = self.settings.run_dir / "fifo" / namespace
        found += [f"fifo {p.name}" for p in (fifo_dir.iterdir() if fifo_dir.is_dir() else [])
                  if pat.match(p.name.rpartition(".")[0])]
        return found

    async def settled(self, name: str, namespace: str = DEFAULT_NAMESPACE, timeout: float = 20.0) -> list[str]:
        """Wait (bounded) until nothing of ``name`` is left; returns what is left at the end."""
        deadline = time.monotonic() + timeout
        while True:
            left = await self.leftovers(name, namespace)
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.1)


def proc_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status of a task's init process, read from the host."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def proc_environ(pid: int) -> list[str]:
    """The raw environment block (duplicates stay visible, unlike os.environ)."""
    return [e.decode() for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e]


def task_file(pid: int, path: str) -> str:
    """A file as the task sees it (through its root), read from the host."""
    return Path(f"/proc/{pid}/root{path}").read_text()


def task_hostname(pid: int) -> str:
    """The hostname in the task's UTS namespace."""
    return subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True,
                          check=True).stdout.strip()


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)


def proc_mounts(pid: int) -> dict[str, list[str]]:
    """Mount point (inside the task) -> its per-mount options, from /proc/<pid>/mountinfo."""
    out: dict[str, list[str]] = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = fields[5].split(",")
    return out
