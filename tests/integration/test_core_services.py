"""Core services (docker-compose.yaml) on real containerd + CNI, with images built from the host.

One scenario, in order, because each step builds on the state the previous one left (as on a
real host): start the shipped compose file (ports moved to free loopback ports) -> NATS
JetStream and Prometheus answer through the daemon's published ports -> SIGKILL NATS, it comes
back with its JetStream data -> the daemon stops and a new one adopts the running containers ->
a service added to the file starts, one removed goes -> remove() leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml
from aiohttp import web

from faasd_py.build import FunctionSpec, build_function_image
from faasd_py.build.coreimages import build_core_images
from faasd_py.config import RegistrySettings, Settings
from faasd_py.credentials import NATS_TOKEN_VARIABLE
from faasd_py.network import netns
from faasd_py.network.cni import FunctionNetwork
from faasd_py.network.dns import SharedFiles
from faasd_py.network.tenant_firewall import SHARED, TenantFirewall
from faasd_py.provider.core_services import CORE_NAMESPACE, CoreServices, core_netns_prefix, core_network
from faasd_py.provider.log_collector import LogCollector
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.images import ImageService
from faasd_py.runtime.model import TaskState
from faasd_py.runtime.registry import RegistryClient
from tests.infra import TestEnv, free_port
from tests.integration.daemon_harness import settings_for

REPO = Path(__file__).resolve().parents[2]
WEB_IMAGE = "localhost/faasd-py-test/web:1"
NATS_TOKEN = "core-services-test-token"

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/nats-server").exists() or not Path("/usr/bin/prometheus").exists(),
    reason="the nats-server and prometheus Debian packages are needed to build the core images",
)


@dataclass
class Core:
    settings: Settings
    client: ContainerdClient
    images: ImageService
    shared: SharedFiles
    logs: LogCollector
    ports: dict[str, int]
    firewall: TenantFirewall

    made: list[CoreServices] = field(default_factory=list)

    def services(self, env: dict[str, str] | None = None) -> CoreServices:
        """A new "daemon" (its supervisors stop at module teardown even when the test failed)."""
        env = {NATS_TOKEN_VARIABLE: NATS_TOKEN, **(env or {})}  # as the daemon hands it over
        services = CoreServices(self.settings, self.client, self.images, self.shared, logs=self.logs, env=env,
                                network=core_network(self.settings, self.firewall))
        self.made.append(services)
        return services

    async def pid(self, name: str) -> int:
        task = await self.client.get_task(CORE_NAMESPACE, name)
        assert task is not None and task.state is TaskState.RUNNING, (name, task)
        return task.pid


def write_compose(path: Path, services: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump({"services": services}, sort_keys=False))


def shipped_compose(ports: dict[str, int]) -> dict[str, Any]:
    """The repository's docker-compose.yaml with its host ports moved to free ones."""
    data = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services: dict[str, Any] = data["services"]
    services["nats"]["ports"] = [f"127.0.0.1:{ports['nats']}:4222", f"127.0.0.1:{ports['nats-monitor']}:8222"]
    services["prometheus"]["ports"] = [f"127.0.0.1:{ports['prometheus']}:9090"]
    return services


@pytest.fixture(scope="module")
async def core(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Core]:
    settings = settings_for(testenv, testenv.path / "core")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    client = ContainerdClient(testenv.containerd_socket)
    await client.connect()
    registry = RegistryClient(RegistrySettings(insecure=[testenv.registry]), settings.docker_config_path)
    images = ImageService(client.channel, registry, snapshotter=settings.snapshotter)
    cache = tmp_path_factory.mktemp("core-build-cache")
    t0 = time.monotonic()
    built = await build_core_images(images, namespace=CORE_NAMESPACE, cache_dir=cache)
    assert {b.name for b in built} == {"nats", "prometheus"}
    print(f"core images built and imported in {time.monotonic() - t0:.1f} s")
    shared = SharedFiles(settings.state_dir / "network", settings.network)
    shared.write()
    logs = LogCollector(settings.run_dir / "fifo", journald=False)
    ports = {name: free_port() for name in ("nats", "nats-monitor", "prometheus", "web", "metrics")}
    # the shipped prometheus.yml, scraping every second and the daemon's metrics on a free port
    prom = yaml.safe_load((REPO / "prometheus.yml").read_text())
    prom["global"]["scrape_interval"] = "1s"
    for job in prom["scrape_configs"]:
        for sc in job["static_configs"]:
            sc["targets"] = [t.replace(":8082", f":{ports['metrics']}") for t in sc["targets"]]
    (settings.state_dir / "prometheus.yml").write_text(yaml.safe_dump(prom))
    shutil.copy(REPO / "nats.conf", settings.state_dir / "nats.conf")
    write_compose(settings.compose_path, shipped_compose(ports))
    firewall = TenantFirewall(settings.network.bridge)  # as the daemon shares it with its functions
    await firewall.start()
    made = Core(settings, client, images, shared, logs, ports, firewall)
    try:
        yield made
    finally:
        for services in made.made:
            await services.close()
        with contextlib.suppress(Exception):
            await CoreServices(settings, client, images, shared, logs=logs).remove()
        for name in core_netns(settings):  # whatever a failed test left
            await asyncio.to_thread(netns.remove, name)
        logs.close()
        await registry.close()
        await client.close()


def core_netns(settings: Settings) -> list[str]:
    return netns.list_names(core_netns_prefix(settings.network.netns_prefix))


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except Exception as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.text()


async def jetstream_roundtrip(port: int, payload: bytes, create: bool) -> tuple[bytes, int]:
    """Publish one message to a JetStream stream and consume it; returns it and the stream's count."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2, allow_reconnect=False, token=NATS_TOKEN)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name="CORE", subjects=["core.>"])
        await js.publish("core.test", payload)
        sub = await js.pull_subscribe("core.>", durable="tester")
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()
        info = await js.stream_info("CORE")
        return msg.data, int(info.state.messages)
    finally:
        await nc.close()


async def nats_connect_answer(port: int, token: str | None) -> bytes:
    """What NATS answers a client's CONNECT (+ PING), in the protocol itself: nats-py leaves its
    socket open when the server refuses it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        info = json.loads((await reader.readline()).removeprefix(b"INFO "))
        assert info["auth_required"] is True
        connect = {"verbose": False, "pedantic": False} | ({"auth_token": token} if token else {})
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        return (await asyncio.wait_for(reader.readline(), 5)).rstrip()
    finally:
        writer.close()


def status_of(services: CoreServices) -> dict[str, Any]:
    return {s.name: s for s in services.status()}


async def test_core_services_lifecycle(core: Core) -> None:
    ports = core.ports
    services = core.services()
    t0 = time.monotonic()
    await services.start()
    print(f"started in {time.monotonic() - t0:.2f} s: {[str(s) for s in services.status()]}")
    status = status_of(services)
    assert [s.name for s in services.status()] == ["nats", "prometheus"]
    assert all(s.state == "running" for s in status.values()), status
    subnet = ipaddress.ip_network(core.settings.network.subnet)
    hosts = core.shared.hosts()
    assert set(hosts) == {"nats", "prometheus"}
    assert all(ipaddress.ip_address(ip) in subnet for ip in hosts.values())
    assert hosts["nats"] == status["nats"].ip
    # every namespace's functions may reach NATS (the shared set); Prometheus is private (no set)
    assert core.firewall.members() == {status["nats"].ip: SHARED}
    # the data volume was created for the service's user (nobody)
    assert (core.settings.state_dir / "nats").stat().st_uid == 65534

    # --- NATS JetStream and Prometheus answer through the daemon's published ports
    data, count = await eventually(lambda: jetstream_roundtrip(ports["nats"], b"first", create=True), "nats")
    assert data == b"first" and count == 1
    # ... only with the token: a function on the bridge cannot read or forge queued invocations
    assert await nats_connect_answer(ports["nats"], None) == b"-ERR 'Authorization Violation'"
    assert await nats_connect_answer(ports["nats"], "a-guess") == b"-ERR 'Authorization Violation'"
    assert await nats_connect_answer(ports["nats"], NATS_TOKEN) == b"PONG"
    code, _ = await eventually(lambda: http_get(f"http://127.0.0.1:{ports['nats-monitor']}/healthz?js-enabled-only=true"),
                               "nats monitor")
    assert code == 200

    async def prometheus_ready() -> bool:
        code, _ = await http_get(f"http://127.0.0.1:{ports['prometheus']}/-/ready")
        return code == 200

    await eventually(prometheus_ready, "prometheus /-/ready", timeout=60)

    async def prometheus_scrapes_itself() -> bool:
        code, body = await http_get(f"http://127.0.0.1:{ports['prometheus']}/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"]
        return code == 200 and any(t["labels"]["job"] == "prometheus" and t["health"] == "up" for t in targets)

    await eventually(prometheus_scrapes_itself, "prometheus scraping itself", timeout=40)

    # ... and the daemon's metrics listener on the host, by the name "gateway" (the bridge address)
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="faasd_py_test_metric 1\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, core.shared.gateway, ports["metrics"]).start()
    try:
        async def gateway_scraped() -> bool:
            code, body = await http_get(f"http://127.0.0.1:{ports['prometheus']}/api/v1/query?query=faasd_py_test_metric")
            result = json.loads(body)["data"]["result"]
            return code == 200 and bool(result) and result[0]["metric"]["job"] == "gateway"

        await eventually(gateway_scraped, "prometheus scraping gateway:<metrics port>", timeout=30)
    finally:
        await runner.cleanup()

    # --- a crashed core service is restarted, keeps its IP and its JetStream data
    pid = await core.pid("nats")
    ip = status["nats"].ip
    await core.client.kill_task(CORE_NAMESPACE, "nats", signal.SIGKILL)

    async def restarted() -> bool:
        s = status_of(services)["nats"]
        return bool(s.restarts == 1 and s.state == "running")

    await eventually(restarted, "nats to be restarted", timeout=20)
    nats_status = status_of(services)["nats"]
    assert "137" in nats_status.last_exit and nats_status.ip == ip
    assert await core.pid("nats") != pid
    data, count = await eventually(lambda: jetstream_roundtrip(ports["nats"], b"second", create=False),
                                   "nats after restart")
    assert data == b"second" and count == 2  # the first message survived on the data volume

    # --- the daemon goes away: the services keep running; the next daemon adopts them
    pids = {n: await core.pid(n) for n in ("nats", "prometheus")}
    await services.close()
    assert pids == {n: await core.pid(n) for n in ("nats", "prometheus")}
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", ports["nats"])  # nobody publishes while no daemon runs

    # --- editing the file: a service added (built from host files), another one that cannot start
    web_image = build_function_image(
        FunctionSpec(name="web", watchdog=False, entrypoint=["/usr/bin/python3.11", "-m", "http.server", "8000",
                                                             "--directory", "/srv"],
                     files={"/srv/index.html": "hello from a core service\n"}, exposed_ports=("8000/tcp",)),
        core.settings.state_dir / "web-layout", WEB_IMAGE)
    await core.images.import_archive(web_image.layout, CORE_NAMESPACE)
    compose = shipped_compose(ports)
    compose["web"] = {
        "image": WEB_IMAGE,
        "depends_on": ["nats"],
        "environment": {"NATS_URL": "nats://nats:4222", "GREETING": "${GREETING:-hi}"},
        "volumes": ["./web-data:/data"],
        "ports": [f"127.0.0.1:{ports['web']}:8000"],
        "restart": "on-failure",
    }
    compose["broken"] = {"image": "localhost/faasd-py-test/missing:1", "restart": "no"}
    write_compose(core.settings.compose_path, compose)

    services = core.services()
    await services.start()
    status = status_of(services)
    assert pids == {n: await core.pid(n) for n in ("nats", "prometheus")}, "unchanged services were recreated"
    assert status["web"].state == "running" and status["broken"].state == "failed"
    assert "missing" in status["broken"].error
    assert set(core.shared.hosts()) == {"nats", "prometheus", "web"}
    assert (core.settings.state_dir / "web-data").stat().st_uid == 12000  # the image's non-root user
    code, body = await eventually(lambda: http_get(f"http://127.0.0.1:{ports['web']}/"), "web")
    assert (code, body) == (200, "hello from a core service\n")
    data, _ = await eventually(lambda: jetstream_roundtrip(ports["nats"], b"third", create=False), "nats adopted")
    assert data == b"third"
    container = await core.client.get_container(CORE_NAMESPACE, "web")
    assert container.spec is not None
    env = container.spec["process"]["env"]
    assert "NATS_URL=nats://nats:4222" in env and "GREETING=hi" in env
    assert container.spec["hostname"] == "web"

    # --- changed services are recreated (a key in the file; a bind-mounted file's content), a
    # removed one goes, the others are untouched
    compose["web"]["environment"]["GREETING"] = "hello"
    del compose["broken"]
    compose["nats"]["x-faasd-py-private"] = True  # nothing in the container changes: kept, but evicted
    write_compose(core.settings.compose_path, compose)
    with (core.settings.state_dir / "prometheus.yml").open("a") as f:
        f.write("# edited\n")
    web_pid = await core.pid("web")
    await services.reload()
    assert await core.pid("web") != web_pid
    assert await core.pid("prometheus") != pids["prometheus"]
    assert await core.pid("nats") == pids["nats"]
    assert core.firewall.members() == {status_of(services)["web"].ip: SHARED}
    assert [s.name for s in services.status()] == ["nats", "prometheus", "web"]
    code, _ = await eventually(lambda: http_get(f"http://127.0.0.1:{ports['web']}/"), "web recreated")
    assert code == 200
    await eventually(prometheus_ready, "prometheus recreated", timeout=60)

    del compose["web"]
    write_compose(core.settings.compose_path, compose)
    await services.reload()
    assert await core.client.get_task(CORE_NAMESPACE, "web") is None
    assert set(core.shared.hosts()) == {"nats", "prometheus"}
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", ports["web"])

    # --- the functions' network reconciliation (restore at start) never touches core services
    functions_network = FunctionNetwork(core.settings.network, core.settings.state_dir / "cni")
    keys = await services.network.list_keys()
    assert keys == {"nats", "prometheus"}
    await functions_network.gc(set())
    assert await services.network.list_keys() == keys
    data, _ = await jetstream_roundtrip(ports["nats"], b"fourth", create=False)
    assert data == b"fourth"

    # --- remove(): nothing left (containers, snapshots, netns, IPs, host names, ports)
    await services.remove()
    assert await core.client.list_containers(CORE_NAMESPACE) == []
    assert not {"nats", "prometheus", "web"} & set(await core.client.list_snapshots(CORE_NAMESPACE))
    assert core.shared.hosts() == {}
    assert await services.network.list_keys() == set()
    assert core_netns(core.settings) == []
    assert core.firewall.members() == {}  # evicted before their addresses were released
    for port in (ports["nats"], ports["prometheus"]):
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    await services.close()
