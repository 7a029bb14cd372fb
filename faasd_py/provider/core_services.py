"""The core services of ``docker-compose.yaml`` as containerd containers, kept running.

Each service is a container in the containerd namespace ``openfaas`` (functions live in
``openfaas-fn``), with its own netns on the functions' CNI bridge, its name in the shared hosts
file, and its published ports served by the daemon (:mod:`faasd_py.network.portproxy`).

What faasd does and what is done here instead:

* faasd recreates every service on every start (30 s SIGTERM wait each) and removes them on
  stop. Here the containers outlive the daemon: at start a container whose configuration hash
  (image digest, the service's keys, bind-source file stamps) is unchanged is adopted, running
  task, IP and all; a changed one is recreated; one no longer in the file is removed. Editing
  the file and restarting the daemon (or :meth:`CoreServices.reload`) therefore applies exactly
  the edits, and a daemon restart never interrupts NATS or Prometheus.
* faasd never restarts a crashed service. Here each service has a supervisor that waits on its
  task (containerd ``Wait``) and applies the ``restart`` policy with a backoff, reusing the
  container and its netns (so the IP stays).
* faasd pulls images at every start. Here a local image is used when present (the defaults are
  built locally by ``faasd-py core-images``); a missing one is pulled once.

The network is a :class:`FunctionNetwork` of its own (see :func:`core_network`): same conflist
and bridge, another netns prefix and cache, so the functions' reconciliation (which releases
every attachment under its prefix that is not a function) never sees the core services.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faasd_py.config import Settings
from faasd_py.errors import (
    Conflict,
    ContainerdNotFound,
    ContainerdUnavailable,
    FaasdError,
    ImageError,
    InvalidRequest,
    RuntimeFailure,
)
from faasd_py.network.cni import Attachment, FunctionNetwork
from faasd_py.network.dns import SharedFiles
from faasd_py.network.portproxy import PortProxy
from faasd_py.network.tenant_firewall import SHARED, TenantFirewall
from faasd_py.provider.compose import ComposeFile, ServiceSpec, load_compose
from faasd_py.provider.log_collector import LogSink, LogTarget
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.images import ImageService
from faasd_py.runtime.model import ContainerInfo, ImageInfo, Mount, TaskState
from faasd_py.runtime.rootfs import resolve_user
from faasd_py.runtime.spec import DEFAULT_CAPABILITIES, KNOWN_CAPABILITIES, BindMount, User, build_spec

log = logging.getLogger(__name__)

CORE_NAMESPACE = "openfaas"
LABEL_SERVICE = "io.faasd-py.core-service"
LABEL_CONFIG = "io.faasd-py.core-config"
GC_ROOT_LABEL = "containerd.io/gc.root"
LOCAL_IMAGE_PREFIX = "localhost/faasd-py/"
CONFIG_FORMAT = 1  # bump when the container layout changes, so every service is recreated once
RESTART_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
HEALTHY_AFTER = 30.0  # a run this long counts as healthy and resets the backoff
KILL_WAIT = 5.0


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"  # waiting for the backoff, or being restarted
    EXITED = "exited"  # stopped and its restart policy says to leave it
    FAILED = "failed"  # could not be started; retried per the restart policy


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    state: str
    image: str
    ip: str
    restarts: int
    last_exit: str
    ports: tuple[str, ...]
    error: str

    def __str__(self) -> str:
        extra = [f"ip {self.ip}"] if self.ip else []
        extra += [f"ports {', '.join(self.ports)}"] if self.ports else []
        extra += [f"restarts {self.restarts}"] if self.restarts else []
        extra += [f"last exit: {self.last_exit}"] if self.last_exit else []
        extra += [f"error: {self.error}"] if self.error else []
        return f"{self.name} {self.state} ({self.image}" + "".join(f"; {e}" for e in extra) + ")"


@dataclass(eq=False)
class _Service:
    spec: ServiceSpec
    state: State = State.STARTING
    ip: str = ""
    image: str = ""
    config_hash: str = ""
    restarts: int = 0
    failures: int = 0  # restarts since the last healthy run: the backoff index
    last_exit: str = ""
    error: str = ""
    started_at: float = 0.0
    supervisor: asyncio.Task[None] | None = None
    proxies: list[PortProxy] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def address(self) -> str | None:
        return self.ip if self.state is State.RUNNING and self.ip else None


def core_netns_prefix(prefix: str) -> str:
    """``faasd-`` -> ``faasdcore-``. Neither prefix may start with the other: the functions'
    reconciliation releases every netns under theirs, ours every one under ours (an empty
    functions prefix claims every netns on the host, and cannot be helped)."""
    for candidate in (prefix.rstrip("-_.") + "core-", "core-" + prefix, "fpcore-" + prefix):
        if not candidate.startswith(prefix) and not prefix.startswith(candidate):
            return candidate
    return "core-"


def core_network(settings: Settings, firewall: TenantFirewall | None = None) -> FunctionNetwork:
    """On the functions' bridge; with the functions' ``firewall``, as the address everyone may reach."""
    net = dataclasses.replace(settings.network, netns_prefix=core_netns_prefix(settings.network.netns_prefix))
    return FunctionNetwork(net, settings.state_dir / "cni", cache_dir=Path(net.ipam_dir).parent / "core-cni-cache",
                           firewall=firewall)


def _reach(spec: ServiceSpec) -> str | None:
    """Who on the bridge may connect to the service: every namespace, or (private) no one."""
    return None if spec.private else SHARED


def capabilities(spec: ServiceSpec) -> tuple[str, ...]:
    """Docker's rule: the default set, plus cap_add, minus cap_drop (``ALL`` in either works)."""
    base = list(DEFAULT_CAPABILITIES)
    if "ALL" in spec.cap_drop:
        base = []
    if "ALL" in spec.cap_add:
        base = sorted(KNOWN_CAPABILITIES)
    caps = [*base, *(c for c in spec.cap_add if c != "ALL")]
    return tuple(dict.fromkeys(c for c in caps if c not in spec.cap_drop))


class CoreServices:
    """Hook for the daemon: ``await start()`` after connecting to containerd (and before the
    functions' restore, so the first CNI ADDs of the two networks do not race on creating the
    bridge); ``await close()`` at shutdown leaves the containers running for the next start to
    adopt; ``await remove()`` (uninstall, tests) deletes them."""

    def __init__(
        self,
        settings: Settings,
        client: ContainerdClient,
        images: ImageService,
        shared_files: SharedFiles,
        network: FunctionNetwork | None = None,
        logs: LogSink | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._images = images
        self._shared = shared_files
        self._network = network or core_network(settings)
        self._logs = logs
        self._env = env
        self._services: dict[str, _Service] = {}
        self._lock = asyncio.Lock()
        self.compose: ComposeFile | None = None

    @property
    def network(self) -> FunctionNetwork:
        return self._network

    # --- public API --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring every service of the file up, dependencies first. Returns once each one is
        running or has failed (a failed one is retried in the background per its restart
        policy, so a missing image never keeps the daemon or the other services down). A
        compose file that cannot be parsed raises InvalidRequest (and changes nothing); without
        one nothing is started or removed."""
        async with self._lock:
            compose = await self._load()
            if compose is not None:
                await self._apply(compose)

    async def reload(self) -> None:
        """Apply the file as it is now: new services start, removed ones go, changed ones are
        recreated, the rest keep running untouched."""
        await self.start()

    async def close(self) -> None:
        """Stop supervising and publishing; the containers keep running."""
        async with self._lock:
            for svc in self._services.values():
                await self._stop_supervisor(svc)
                await self._close_proxies(svc)
                if self._logs is not None:
                    self._logs.detach(CORE_NAMESPACE, svc.name, remove=False)
            self._services.clear()

    async def remove(self) -> None:
        """Delete every core service container (also those not in the file), with their
        networks and host names."""
        async with self._lock:
            names = set(self._services) | {c.id for c in await self._labelled()}
            for name in sorted(names):
                await self._destroy(name)
            await self._network.gc(set())

    def status(self) -> list[ServiceStatus]:
        return [
            ServiceStatus(
                name=s.name, state=s.state.value, image=s.image or s.spec.image, ip=s.ip, restarts=s.restarts,
                last_exit=s.last_exit, ports=tuple(str(p) for p in s.spec.ports), error=s.error,
            )
            for s in self._services.values()
        ]

    # --- applying the file -------------------------------------------------------------------

    async def _load(self) -> ComposeFile | None:
        path = self._settings.compose_path
        if not await asyncio.to_thread(path.exists):
            # not "remove them all": a mistyped compose_file must not delete running services
            log.warning("no core services: %s does not exist (existing ones are left as they are)", path)
            return None
        compose = await asyncio.to_thread(load_compose, path, self._env)
        for warning in compose.warnings:
            log.warning("%s", warning)
        return compose

    async def _apply(self, compose: ComposeFile) -> None:
        self.compose = compose
        wanted = {s.name: s for s in compose.services}
        existing = {c.id: c for c in await self._labelled()}
        for name in sorted((set(self._services) | set(existing)) - set(wanted)):
            log.info("core service %s is no longer in the compose file: removing it", name)
            await self._destroy(name)
        for spec in wanted.values():
            current = self._services.get(spec.name)
            if current is not None:
                await self._close_proxies(current)  # reopened below, after every service is up
                if current.spec == spec and current.state is State.RUNNING and await self._unchanged(current):
                    continue  # untouched: its supervisor keeps watching it
                await self._stop_supervisor(current)
            svc = _Service(spec)
            self._services[spec.name] = svc
            try:
                await self._bring_up(svc, existing.get(spec.name))
            except FaasdError as exc:
                svc.state, svc.error = State.FAILED, exc.message
                log.error("core service %s could not be started: %s", spec.name, exc.message)
            self._watch(svc)
        await self._network.gc(set(wanted))
        for name in wanted:
            await self._open_proxies(self._services[name])
        log.info("core services: %s", "; ".join(map(str, self.status())) or "none")

    def _watch(self, svc: _Service) -> None:
        svc.supervisor = asyncio.create_task(self._supervise(svc), name=f"core-service-{svc.name}")

    async def _labelled(self) -> list[ContainerInfo]:
        return await self._client.list_containers(CORE_NAMESPACE, f'labels."{LABEL_SERVICE}"')

    # --- one service -------------------------------------------------------------------------

    async def _bring_up(self, svc: _Service, container: ContainerInfo | None) -> None:
        """Adopt, restart or (re)create, whichever the container's state calls for."""
        name = svc.name
        image = await self._image(svc.spec.image)
        svc.image = image.name
        digest = svc.config_hash = await asyncio.to_thread(self._config_hash, svc.spec, image)
        if container is None:
            with contextlib.suppress(ContainerdNotFound):
                container = await self._client.get_container(CORE_NAMESPACE, name)
        if container is not None:
            if container.labels.get(LABEL_SERVICE) != name:
                raise Conflict(
                    f"containerd container {CORE_NAMESPACE}/{name} was not created by faasd-py (faasd's?); "
                    f"remove it first: ctr -n {CORE_NAMESPACE} tasks kill -s SIGKILL {name}; "
                    f"ctr -n {CORE_NAMESPACE} tasks rm {name}; ctr -n {CORE_NAMESPACE} containers rm {name}"
                )
            if container.labels.get(LABEL_CONFIG) == digest:
                if await self._adopt(svc):
                    log.info("core service %s: adopted the running container (%s)", name, svc.ip)
                    return
                await self._restart_task(svc)
                log.info("core service %s: started its existing container (%s)", name, svc.ip)
                return
            log.info("core service %s: configuration changed, recreating it", name)
            await self._remove_container(name, svc.spec.stop_grace_period)
        await self._create(svc, image, digest)
        log.info("core service %s: created (%s, %s)", name, image.name, svc.ip)

    async def _unchanged(self, svc: _Service) -> bool:
        """Same image digest and bind-mounted files as when the container was made."""
        try:
            image = await self._image(svc.spec.image)
        except FaasdError:
            return True  # the running container is the best there is
        return await asyncio.to_thread(self._config_hash, svc.spec, image) == svc.config_hash

    async def _image(self, ref: str) -> ImageInfo:
        info = await self._images.get(ref, CORE_NAMESPACE)
        if info is not None:
            return info
        try:
            return await self._images.ensure(ref, CORE_NAMESPACE, "IfNotPresent")
        except ImageError as exc:
            if ref.startswith(LOCAL_IMAGE_PREFIX):
                raise ImageError(f"{exc.message} (local core image: build it with `faasd-py core-images`)") from exc
            raise

    def _config_hash(self, spec: ServiceSpec, image: ImageInfo) -> str:
        """Everything the container is made from; ports, restart and order are the daemon's
        business and change nothing in it. Bind sources that are files count with their size
        and mtime, so an edited prometheus.yml gets its service recreated at the next start."""
        stamps = {}
        for v in spec.volumes:
            with contextlib.suppress(OSError):
                st = os.stat(v.source)
                if not os.path.isdir(v.source):
                    stamps[v.source] = f"{st.st_size}:{st.st_mtime_ns}"
        data = {
            "format": CONFIG_FORMAT,
            "image": [image.name, image.manifest_digest, image.config_digest],
            "entrypoint": spec.entrypoint,
            "command": spec.command,
            "environment": sorted(spec.environment.items()),
            "volumes": [[v.source, v.target, v.read_only] for v in spec.volumes],
            "stamps": stamps,
            "user": spec.user,
            "capabilities": capabilities(spec),
            "runtime": [self._settings.runtime, self._settings.snapshotter],
            "shared": [str(self._shared.hosts_path), str(self._shared.resolv_path)],
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]

    async def _create(self, svc: _Service, image: ImageInfo, digest: str) -> None:
        """Snapshot + container + network + task; everything rolled back on failure."""
        ns, name, snapshotter = CORE_NAMESPACE, svc.name, self._settings.snapshotter
        undo: list[Callable[[], Awaitable[Any]]] = []
        net = asyncio.create_task(self._network.setup(name, namespace=_reach(svc.spec)))
        undo.append(lambda: self._network.teardown(name))
        try:
            mounts = await self._client.prepare_snapshot(ns, name, image.chain_id, snapshotter,
                                                         labels={GC_ROOT_LABEL: "faasd-py"})
            undo.append(lambda: self._client.remove_snapshot(ns, name, snapshotter))
            user = await asyncio.to_thread(resolve_user, svc.spec.user or image.config.user, mounts)
            binds = await asyncio.to_thread(self._binds, svc.spec, user)
            spec = build_spec(
                image=image.config,
                user=user,
                hostname=name,
                env=dict(svc.spec.environment),
                args=svc.spec.argv(image.config.entrypoint, image.config.cmd),
                netns_path=self._network.netns_path(name),
                cgroups_path=f"/{ns}/{name}",
                binds=binds,
                memory_limit=None,
                cpu_millis=None,
                read_only_rootfs=False,
                capabilities=capabilities(svc.spec),
            )
            await self._client.create_container(
                ns, name, image=image.name, spec=spec, labels={LABEL_SERVICE: name, LABEL_CONFIG: digest},
                snapshot_key=name, snapshotter=snapshotter, runtime=self._settings.runtime,
            )
            undo.append(lambda: self._client.delete_container(ns, name))
            attachment = await net
            svc.ip = attachment.ip
            await self._start_task(svc, mounts)
        except BaseException:
            if not net.done():
                net.cancel()
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    await step()
            raise

    def _binds(self, spec: ServiceSpec, user: User) -> list[BindMount]:
        """The shared hosts/resolv.conf, then the service's volumes. A missing read-write source
        becomes a directory owned by the service's user (as faasd does); a missing read-only one
        is an error, since an empty directory is never the file that was meant."""
        binds = [
            BindMount(str(self._shared.hosts_path), "/etc/hosts"),
            BindMount(str(self._shared.resolv_path), "/etc/resolv.conf"),
        ]
        for v in spec.volumes:
            if v.target in ("/etc/hosts", "/etc/resolv.conf"):
                log.warning("core service %s: ignoring the volume on %s (the shared file is mounted there)",
                            spec.name, v.target)
                continue
            source = Path(v.source)
            if not source.exists():
                if v.read_only:
                    raise InvalidRequest(f"core service {spec.name}: bind source {source} does not exist")
                source.mkdir(parents=True, mode=0o755)
                os.chown(source, user.uid, user.gid)
                log.info("core service %s: created %s for %s", spec.name, source, v.target)
            binds.append(BindMount(str(source), v.target, v.read_only))
        return binds

    async def _start_task(self, svc: _Service, mounts: list[Mount]) -> None:
        ns, name = CORE_NAMESPACE, svc.name
        stdout = stderr = ""
        if self._logs is not None:
            stdout, stderr = await self._logs.attach(LogTarget(ns, name, name))
        try:
            await self._client.create_task(ns, name, rootfs=mounts, stdout=stdout, stderr=stderr)
            await self._client.start_task(ns, name)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._client.delete_task(ns, name)
            if self._logs is not None:
                self._logs.detach(ns, name)
            raise
        await self._running(svc)

    async def _running(self, svc: _Service) -> None:
        svc.state, svc.error, svc.started_at = State.RUNNING, "", time.monotonic()
        await asyncio.to_thread(self._shared.add_host, svc.name, svc.ip)

    async def _adopt(self, svc: _Service) -> bool:
        """Take over a task that kept running while the daemon was away."""
        task = await self._client.get_task(CORE_NAMESPACE, svc.name)
        if task is None or task.state not in (TaskState.RUNNING, TaskState.PAUSED):
            return False
        attachment: Attachment | None = await self._network.lookup(svc.name, namespace=_reach(svc.spec))
        if attachment is None:
            return False
        if task.state is TaskState.PAUSED:
            await self._client.resume_task(CORE_NAMESPACE, svc.name)
        svc.ip = attachment.ip
        if self._logs is not None:
            await self._logs.attach(LogTarget(CORE_NAMESPACE, svc.name, svc.name))
        await self._running(svc)
        return True

    async def _restart_task(self, svc: _Service) -> None:
        """A new task in the existing container: same writable layer, same netns and IP."""
        await self._stop_task(svc.name, grace=0)
        attachment = await self._network.setup(svc.name, namespace=_reach(svc.spec))
        svc.ip = attachment.ip
        mounts = await self._client.snapshot_mounts(CORE_NAMESPACE, svc.name, self._settings.snapshotter)
        await self._start_task(svc, mounts)

    async def _stop_task(self, name: str, grace: float) -> None:
        """SIGTERM, up to ``grace`` seconds, SIGKILL; then delete the task."""
        ns = CORE_NAMESPACE
        task = await self._client.get_task(ns, name)
        if task is None:
            return
        if task.state in (TaskState.PAUSED, TaskState.PAUSING):
            with contextlib.suppress(FaasdError):
                await self._client.resume_task(ns, name)
        if task.state not in (TaskState.STOPPED, TaskState.CREATED):
            exited = False
            if grace > 0:
                exited = await self._signal_and_wait(name, signal.SIGTERM, grace)
            if not exited:
                await self._signal_and_wait(name, signal.SIGKILL, KILL_WAIT)
        deadline = time.monotonic() + 10
        while True:
            try:
                await self._client.delete_task(ns, name)
                return
            except ContainerdNotFound:
                return
            except RuntimeFailure:
                if time.monotonic() > deadline:  # the exit may not be processed yet: retry briefly
                    raise
                await asyncio.sleep(0.05)

    async def _signal_and_wait(self, name: str, sig: int, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                # Wait first: on a task that has already exited it returns at once, so the order
                # of the two calls never matters, but this way no exit can be missed
                waiter = asyncio.create_task(self._client.wait_task(CORE_NAMESPACE, name))
                try:
                    with contextlib.suppress(ContainerdNotFound, RuntimeFailure):
                        await self._client.kill_task(CORE_NAMESPACE, name, sig, all=True)
                    await waiter
                finally:
                    waiter.cancel()
                    await asyncio.gather(waiter, return_exceptions=True)
        except TimeoutError:
            return False
        except ContainerdNotFound:
            return True
        return True

    async def _destroy(self, name: str) -> None:
        """Stop watching and publishing ``name``, then remove its container and all it owns."""
        svc = self._services.pop(name, None)
        if svc is not None:
            await self._stop_supervisor(svc)
            await self._close_proxies(svc)
            svc.ip = ""
        await self._remove_container(name, svc.spec.stop_grace_period if svc else 5.0)

    async def _remove_container(self, name: str, grace: float) -> None:
        """Task, log FIFOs, netns, container, snapshot and host name of ``name``."""
        await self._stop_task(name, grace)
        if self._logs is not None:
            self._logs.detach(CORE_NAMESPACE, name)
        await self._network.teardown(name)
        with contextlib.suppress(ContainerdNotFound):
            await self._client.delete_container(CORE_NAMESPACE, name)
        with contextlib.suppress(ContainerdNotFound):
            await self._client.remove_snapshot(CORE_NAMESPACE, name, self._settings.snapshotter)
        await asyncio.to_thread(self._shared.remove_host, name)

    # --- supervision -------------------------------------------------------------------------

    async def _supervise(self, svc: _Service) -> None:
        """Wait for the task to exit, then apply the restart policy with a backoff."""
        while True:
            if svc.state is State.RUNNING:
                status = await self._wait_exit(svc.name)
                svc.last_exit = f"exit status {status}" if status >= 0 else "task lost"
                if time.monotonic() - svc.started_at >= HEALTHY_AFTER:
                    svc.failures = 0
                if not svc.spec.restart.should_restart(status, svc.failures):
                    svc.state = State.EXITED
                    log.warning("core service %s exited (%s); restart policy %s leaves it stopped",
                                svc.name, svc.last_exit, svc.spec.restart)
                    return
            elif not svc.spec.restart.should_restart(1, svc.failures):
                return
            delay = RESTART_BACKOFF[min(svc.failures, len(RESTART_BACKOFF) - 1)]
            svc.failures += 1
            svc.state = State.RESTARTING
            log.warning("core service %s %s; restarting in %.1f s", svc.name,
                        f"exited ({svc.last_exit})" if not svc.error else f"failed ({svc.error})", delay)
            await asyncio.sleep(delay)
            try:
                await self._bring_up(svc, None)
                svc.restarts += 1
            except FaasdError as exc:
                svc.state, svc.error = State.FAILED, exc.message
                log.error("core service %s: restart failed: %s", svc.name, exc.message)

    async def _wait_exit(self, name: str) -> int:
        """The task's exit status; -1 when the task is gone. Rides out a containerd restart
        (tasks survive it; the Wait call does not)."""
        while True:
            try:
                return await self._client.wait_task(CORE_NAMESPACE, name)
            except ContainerdNotFound:
                return -1
            except (ContainerdUnavailable, RuntimeFailure) as exc:
                log.warning("core service %s: lost the task's Wait (%s); asking again", name, exc.message)
            await asyncio.sleep(1.0)
            try:
                task = await self._client.get_task(CORE_NAMESPACE, name)
            except (ContainerdUnavailable, RuntimeFailure):
                continue
            if task is None:
                return -1
            if task.state is TaskState.STOPPED:
                return task.exit_status

    async def _stop_supervisor(self, svc: _Service) -> None:
        task, svc.supervisor = svc.supervisor, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # --- ports -------------------------------------------------------------------------------

    async def _open_proxies(self, svc: _Service) -> None:
        for p in svc.spec.ports:
            proxy = PortProxy(svc.name, p.host_ip, p.host_port, svc.address, p.container_port)
            try:
                await proxy.start()
            except OSError as exc:
                log.error("core service %s: cannot publish %s: %s", svc.name, p, exc.strerror or exc)
                svc.error = f"port {p}: {exc.strerror or exc}"
                continue
            svc.proxies.append(proxy)

    async def _close_proxies(self, svc: _Service) -> None:
        proxies, svc.proxies = svc.proxies, []
        for proxy in proxies:
            await proxy.close()
