"""``faasd-py up``: wire the layers together and run until SIGTERM.

Start order matters: the API listens first (``/healthz`` answers 503 while restoring, so
``faas-cli ready`` can wait on it), the containerd event stream starts before the restore so no
exit is missed, and systemd hears READY=1 only once every function is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from aiohttp import web

from faasd_py.config import Settings
from faasd_py.credentials import NATS_TOKEN_VARIABLE, ensure_credentials, nats_token
from faasd_py.errors import ContainerdUnavailable, InvalidRequest
from faasd_py.gateway.app import INVOKE, build_app, serve
from faasd_py.gateway.auth import Credentials
from faasd_py.gateway.metrics import GatewayMetrics, build_metrics_app
from faasd_py.network.cni import FunctionNetwork
from faasd_py.network.dns import SharedFiles, gateway_ip
from faasd_py.network.tenant_firewall import TenantFirewall
from faasd_py.provider.core_services import CoreServices, core_network
from faasd_py.provider.functions import FunctionManager
from faasd_py.provider.instances import Launcher
from faasd_py.provider.log_helper import LogHelper
from faasd_py.provider.logs import JournalLogs
from faasd_py.provider.namespaces import NamespaceService
from faasd_py.provider.queue import AsyncQueue
from faasd_py.provider.secrets import SecretStore
from faasd_py.provider.service import ContainerdProvider
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.images import ImageService
from faasd_py.runtime.registry import RegistryClient

log = logging.getLogger("faasd_py")


def _notify(state: str) -> None:
    """sd_notify, a no-op when not started by systemd (NOTIFY_SOCKET unset)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        from systemd import daemon

        daemon.notify(state)
    except (ImportError, OSError) as exc:  # pragma: no cover - depends on the host
        log.warning("sd_notify(%s) failed: %s", state, exc)


async def _watchdog_pings() -> None:
    """Keep-alives from the event loop itself, so a wedged loop gets the daemon restarted."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        return
    while True:
        _notify("WATCHDOG=1")
        await asyncio.sleep(usec / 2e6)


async def connect_containerd(settings: Settings, wait: float = 30.0) -> ContainerdClient:
    """containerd may still be starting when we are (boot, or install.sh starting both)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        client = ContainerdClient(settings.containerd_socket)
        try:
            await client.connect()
            return client
        except ContainerdUnavailable:
            await client.close()
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


@dataclass
class Daemon:
    settings: Settings
    client: ContainerdClient
    registry: RegistryClient
    functions: FunctionManager
    network: FunctionNetwork
    logs: LogHelper  # the log helper process: function output → journald, off this loop
    provider: ContainerdProvider
    core: CoreServices
    app: web.Application
    metrics: GatewayMetrics
    metrics_app: web.Application
    queue: AsyncQueue | None  # None when settings.queue.enabled is false


def metrics_addresses(settings: Settings) -> tuple[str, list[str]]:
    """Where the metrics listener listens: metrics_host, plus the bridge's gateway address when
    that is loopback, so the prometheus core service can scrape ``gateway:8082`` (prometheus.yml)."""
    host = settings.metrics_host
    if host in ("127.0.0.1", "localhost"):
        return host, [gateway_ip(settings.network.subnet)]
    return host, []


async def build(settings: Settings) -> Daemon:
    for d in (settings.state_dir, settings.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    client = await connect_containerd(settings)
    registry = RegistryClient(settings.registry, settings.docker_config_path)
    images = ImageService(client.channel, registry, snapshotter=settings.snapshotter)
    shared = SharedFiles(settings.state_dir / "network", settings.network)
    shared.write()
    network = FunctionNetwork(settings.network, settings.state_dir / "cni")
    if settings.network.isolate_namespaces:
        network.firewall = TenantFirewall(network.bridge)
        await network.firewall.start()  # before any replica is wired or adopted
    else:
        await TenantFirewall(network.bridge).remove()  # one from when it was on would go stale
    # One helper process drains every function's FIFOs, also with journald off (then it only
    # drains): reading the pipes here would wake this loop on every line a function writes.
    collector = LogHelper(settings.run_dir / "fifo", journald=settings.journald)
    collector.start()
    store = SecretStore(settings.state_dir / "function-secrets", settings.state_dir / "secret-mounts")
    namespaces = NamespaceService(client, snapshotters=(settings.snapshotter,))
    launcher = Launcher(settings, client, network, collector, store, shared.hosts_path, shared.resolv_path)
    functions = FunctionManager(settings, client, images, launcher, network, namespaces, store)
    namespaces.set_occupants(
        lambda ns: [f"function {n}" for n in functions.names(ns)] + [f"secret {s}" for s in store.names(ns)]
    )
    provider = ContainerdProvider(functions, namespaces, store, JournalLogs())
    ensure_credentials(settings)
    metrics = GatewayMetrics(functions.samples)
    token = nats_token(settings)
    queue = AsyncQueue(settings.queue, token=token) if settings.queue.enabled else None
    app = build_app(provider, settings, Credentials.load(settings), on_invocation=metrics.finished,
                    on_start=metrics.started, queue=queue)
    launcher.on_address_released = app[INVOKE].pool.drop
    if queue is not None:
        queue.invoker = app[INVOKE].invoke_queued  # queued calls take the /function path: resume, pool, metrics
    # the compose file hands the token to the nats service (nats.conf) as ${FAASD_PY_NATS_TOKEN}
    core = CoreServices(settings, client, images, shared, network=core_network(settings, network.firewall),
                        logs=collector, env={**os.environ, NATS_TOKEN_VARIABLE: token})
    return Daemon(settings, client, registry, functions, network, collector, provider, core, app, metrics,
                  build_metrics_app(metrics, settings, lambda: {s.ip for s in core.status() if s.ip}), queue)


async def run(settings: Settings) -> None:
    daemon = await build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(daemon.app, settings.host, settings.port, front=settings.fast_invoke)
    log.info("gateway listening on %s:%d", settings.host, settings.port)
    metrics_host, also = metrics_addresses(settings)
    metrics_runner = await serve(daemon.metrics_app, metrics_host, settings.metrics_port, also=also)
    log.info("metrics listening on %s:%d", ", ".join([metrics_host, *also]), settings.metrics_port)
    if daemon.queue is not None:
        daemon.queue.start()  # in the background: NATS (a core service) may not be up yet
    events = asyncio.create_task(daemon.functions.run_events())
    idler = asyncio.create_task(daemon.functions.run_idler())
    pings = asyncio.create_task(_watchdog_pings())
    try:
        # core services first: they and the functions share the bridge, whose first ADD creates it
        try:
            await daemon.core.start()
        except InvalidRequest as exc:
            log.error("core services not started: %s (fix %s; functions are unaffected)",
                      exc.message, settings.compose_path)
        await daemon.functions.restore()
        if daemon.queue is not None:
            daemon.queue.start_worker()  # only now: queued calls need the restored routing table
        _notify("READY=1")
        log.info("ready")
        await stop.wait()
        log.info("shutting down: draining in-flight requests; functions keep running")
        _notify("STOPPING=1")
    finally:
        if daemon.queue is not None:  # before the gateway: its calls use the gateway's upstream pool
            await daemon.queue.close(grace=settings.timeouts.stop_grace)
        await runner.cleanup()
        await metrics_runner.cleanup()
        for task in (events, idler, pings):
            task.cancel()
        await daemon.functions.close()
        await daemon.core.close()
        daemon.logs.close()
        with contextlib.suppress(Exception):
            await daemon.registry.close()
        await daemon.client.close()



async def uninstall(settings: Settings, *, purge: bool) -> list[str]:
    """Remove the core services (and with ``purge`` every function) the way the daemon would.

    The daemon must not be running. Without ``purge`` functions stay in containerd, so a later
    install brings them back.
    """
    daemon = await build(settings)
    done: list[str] = []
    try:
        await daemon.core.remove()
        done.append("removed the core services")
        if purge:
            count = await daemon.functions.purge()
            await daemon.network.remove_all()
            await daemon.core.network.remove_all()
            done.append(f"removed {count} function instance(s), the bridge and its CNI chains")
    finally:
        await daemon.core.close()
        daemon.logs.close()
        with contextlib.suppress(Exception):
            await daemon.registry.close()
        await daemon.client.close()
    return done
