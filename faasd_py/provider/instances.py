"""One replica of a function: a containerd container + task in its own network namespace.

Everything an instance owns (snapshot, container, netns + IP, log FIFOs, secret copies, task)
is created here and released here, in reverse order, on every path: delete, crash, failed
deploy. That single owner is what keeps IPs, netns and snapshots from leaking (faasd leaks
IPs of paused or stopped tasks because teardown lived in two places).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faasd_py.config import Settings
from faasd_py.errors import ContainerdAlreadyExists, ContainerdNotFound, FaasdError, RuntimeFailure
from faasd_py.network.cni import Attachment, FunctionNetwork
from faasd_py.provider.contract import Endpoint
from faasd_py.provider.log_collector import LogSink, LogTarget
from faasd_py.provider.readiness import wait_ready
from faasd_py.provider.secrets import SecretStore
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.model import ImageInfo, Mount, TaskState
from faasd_py.runtime.rootfs import resolve_user
from faasd_py.runtime.spec import BindMount, build_spec
from faasd_py.types import FunctionDeployment, parse_duration

log = logging.getLogger(__name__)

WATCHDOG_PORT = 8080
HEALTH_ANNOTATION = "com.openfaas.health.http.path"
# containerd labels: what restore() filters on; the full deployment lives in an extension
LABEL_FUNCTION = "io.faasd-py.function"
LABEL_GENERATION = "io.faasd-py.generation"
LABEL_DELETING = "io.faasd-py.deleting"
LABEL_PARKED = "io.faasd-py.idle-stopped"
EXTENSION = "faasd-py/function-record"
GC_ROOT_LABEL = "containerd.io/gc.root"
WATCHDOG_LOCK = ".lock"  # in $TMPDIR: the watchdog's (ours and of-watchdog's) "ready" marker


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    """What containerd stores with every instance, so the daemon can rebuild its state from it."""

    deployment: FunctionDeployment
    generation: int
    created_at: datetime

    def encode(self) -> bytes:
        return json.dumps({
            "deployment": self.deployment.to_json(),
            "generation": self.generation,
            "createdAt": self.created_at.astimezone(UTC).isoformat(),
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> FunctionRecord:
        data = json.loads(raw)
        return cls(
            deployment=FunctionDeployment.from_json(data["deployment"]),
            generation=int(data["generation"]),
            created_at=datetime.fromisoformat(data["createdAt"]),
        )


OOM_WINDOW = 2.0  # an exit (137) and an OOM event of the same container this close together: OOMKilled
OOM_KILLED = "OOMKilled"


@dataclass(eq=False)
class Instance:
    namespace: str
    function: str
    id: str
    generation: int
    health_path: str = "/_/health"
    grace: float = 10.0
    tmpdir: str = "/tmp"  # where its watchdog keeps the lock file (the function's TMPDIR)
    ip: str = ""
    ready: bool = False
    stopping: bool = False
    restarting: bool = False  # exits caused by our own restart are not crashes
    parked: bool = False  # stopped on purpose by scale-to-zero: not a crash, not restored at start
    paused: bool = False  # frozen by scale-to-zero (or found frozen at restore)
    resync: bool = False  # thawed through the freezer: containerd still counts it as paused
    pid: int = 0  # the task's init process; 0 without a task. An exit event of another pid is stale
    ready_since: float = 0.0
    oom_at: float = -1e9
    inflight: int = 0
    restarts: int = 0  # consecutive crashes: the backoff step (reset after BACKOFF_RESET of health)
    restart_count: int = 0  # every restart after a crash, for describe
    supervised: bool = False  # crashed: a restart loop owns it until it is ready again
    last_exit: str = ""  # of the last unexpected exit
    last_exit_at: float = 0.0
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when a draining instance has no calls
    endpoint: Endpoint | None = None

    @property
    def netkey(self) -> str:
        return f"{self.namespace}-{self.id}"

    def record_exit(self, status: int, now: float) -> None:
        """An unexpected exit of the task; 137 soon after an OOM event of the container is OOMKilled."""
        oom = status == 137 and now - self.oom_at < OOM_WINDOW
        self.last_exit = OOM_KILLED if oom else f"exit status {status}"
        self.last_exit_at = now

    def record_oom(self, now: float) -> None:
        """An OOM event. The shim reports it and the exit independently, so it may come second."""
        self.oom_at = now
        if self.last_exit == "exit status 137" and now - self.last_exit_at < OOM_WINDOW:
            self.last_exit = OOM_KILLED

    @property
    def cgroup(self) -> str:
        """The task's cgroupsPath: where runc puts it, and where the freezer and usage read it."""
        return f"/{self.namespace}/{self.id}"


def new_instance_id(function: str) -> str:
    """``<name>-<8 hex>``: unique per deploy, so an update's new replica never clashes with the old."""
    return f"{function}-{secrets.token_hex(4)}"


def grace_period(dep: FunctionDeployment, default: float) -> float:
    raw = dep.env_vars.get("grace_period")
    if raw:
        try:
            return parse_duration(raw, "grace_period")
        except FaasdError:
            log.warning("ignoring invalid grace_period %r for %s", raw, dep.service)
    return default


def function_env(dep: FunctionDeployment) -> dict[str, str]:
    """envProcess becomes ``fprocess`` and wins over envVars, as in OpenFaaS on Kubernetes."""
    env = dict(dep.env_vars)
    if dep.env_process:
        env["fprocess"] = dep.env_process
    return env


class Launcher:
    def __init__(
        self,
        settings: Settings,
        client: ContainerdClient,
        network: FunctionNetwork,
        logs: LogSink,
        secrets_store: SecretStore,
        hosts_file: Path,
        resolv_file: Path,
    ) -> None:
        self._settings = settings
        self._client = client
        self._network = network
        self._logs = logs
        self._secrets = secrets_store
        self._hosts = hosts_file
        self._resolv = resolv_file
        self.on_address_released: Callable[[str, int], None] | None = None

    # --- creation ------------------------------------------------------------------------------

    def describe(self, record: FunctionRecord, instance_id: str) -> Instance:
        dep = record.deployment
        return Instance(
            namespace=dep.namespace,
            function=dep.service,
            id=instance_id,
            generation=record.generation,
            health_path=dep.annotations.get(HEALTH_ANNOTATION, "/_/health"),
            grace=grace_period(dep, self._settings.timeouts.stop_grace),
            tmpdir=dep.env_vars.get("TMPDIR") or "/tmp",
        )

    async def create(self, record: FunctionRecord, image: ImageInfo, instance: Instance) -> None:
        """Snapshot + container + network + task, started; everything rolled back on failure."""
        dep = record.deployment
        ns, cid = instance.namespace, instance.id
        undo: list[Callable[[], Awaitable[Any]]] = []
        netns_ready = asyncio.Event()
        net = asyncio.create_task(self._network.setup(instance.netkey, netns_ready, namespace=instance.namespace))
        undo.append(lambda: self._network.teardown(instance.netkey))
        try:
            snapshotter = self._settings.snapshotter
            # A snapshot that no container, image or lease references is removed by containerd's
            # next GC, which can run before create_container below (seen in the e2e tests: the
            # task then fails to mount its rootfs). gc.root keeps it; destroy() removes it.
            mounts = await self._client.prepare_snapshot(ns, cid, image.chain_id, snapshotter,
                                                         labels={GC_ROOT_LABEL: "faasd-py"})
            undo.append(lambda: self._client.remove_snapshot(ns, cid, snapshotter))
            user = resolve_user(image.config.user, mounts)
            secret_mounts = self._secrets.materialize(ns, cid, dep.secrets, user.uid, user.gid)
            undo.append(lambda: _sync(self._secrets.release, ns, cid))
            binds = [
                BindMount(str(self._hosts), "/etc/hosts"),
                BindMount(str(self._resolv), "/etc/resolv.conf"),
                *[BindMount(m.source, m.destination) for m in secret_mounts],
            ]
            spec = build_spec(
                image=image.config,
                user=user,
                hostname=dep.service,
                env=function_env(dep),
                args=None,
                netns_path=self._network.netns_path(instance.netkey),
                cgroups_path=instance.cgroup,
                binds=binds,
                memory_limit=dep.memory_limit_bytes,
                cpu_millis=dep.cpu_limit_millis,
                read_only_rootfs=dep.read_only_root_filesystem,
            )
            labels = {LABEL_FUNCTION: dep.service, LABEL_GENERATION: str(record.generation)}
            await self._client.create_container(
                ns, cid, image=image.name, spec=spec, labels=labels, snapshot_key=cid,
                snapshotter=snapshotter, runtime=self._settings.runtime, extensions={EXTENSION: record.encode()},
            )
            undo.append(lambda: self._client.delete_container(ns, cid))
            await self._start_task_while_wiring(instance, mounts, net, netns_ready)
        except BaseException:
            if not net.done():
                net.cancel()
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    await step()
            self._logs.detach(ns, cid)
            raise

    async def _start_task_while_wiring(
        self, instance: Instance, mounts: list[Any], net: asyncio.Task[Attachment], netns_ready: asyncio.Event
    ) -> None:
        """Create and start the task as soon as its netns exists, while CNI attaches the veth.

        The watchdog binds 0.0.0.0:8080, which works before eth0 appears; readiness is probed only
        once the IP is known. On a CNI failure the started task is killed again.
        """
        waiter = asyncio.create_task(netns_ready.wait())
        try:
            await asyncio.wait({waiter, net}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        failure = net.exception() if net.done() else None
        if failure is not None:
            raise failure
        await self._start_task(instance, mounts)
        try:
            instance.ip = (await net).ip
        except BaseException:
            with contextlib.suppress(Exception):
                await self._client.kill_task(instance.namespace, instance.id, signal.SIGKILL, all=True)
            with contextlib.suppress(Exception):
                await self._delete_task(instance.namespace, instance.id)
            instance.pid = 0
            raise

    async def _start_task(self, instance: Instance, mounts: list[Any]) -> None:
        ns, cid = instance.namespace, instance.id
        stdout, stderr = await self._logs.attach(LogTarget(ns, instance.function, cid))
        instance.exited.clear()
        try:
            try:
                instance.pid = await self._client.create_task(ns, cid, rootfs=mounts, stdout=stdout, stderr=stderr)
            except ContainerdAlreadyExists:
                # a dead task whose delete did not finish (a daemon stopped halfway): finish it, once
                await self._delete_task(ns, cid)
                instance.pid = await self._client.create_task(ns, cid, rootfs=mounts, stdout=stdout, stderr=stderr)
            await self._client.start_task(ns, cid)
        except BaseException:
            instance.pid = 0
            with contextlib.suppress(Exception):
                await self._client.delete_task(ns, cid)
            self._logs.detach(ns, cid)
            raise

    async def restart(self, instance: Instance) -> None:
        """Re-create the task of an existing container (after a crash or a host reboot)."""
        instance.restarting = True
        try:
            await self.stop_task(instance, grace=0)
            netns_ready = asyncio.Event()
            net = asyncio.create_task(self._network.setup(instance.netkey, netns_ready, namespace=instance.namespace))
            try:
                mounts = await self._client.snapshot_mounts(instance.namespace, instance.id, self._settings.snapshotter)
                if clear_stale_lock(mounts, instance.tmpdir):
                    log.debug("%s: removed the stale watchdog lock file before the restart", instance.id)
                await self._start_task_while_wiring(instance, mounts, net, netns_ready)
            except BaseException:
                if not net.done():
                    net.cancel()
                with contextlib.suppress(BaseException):
                    await net
                with contextlib.suppress(Exception):
                    await self._network.teardown(instance.netkey)
                raise
        finally:
            instance.restarting = False

    async def adopt(self, instance: Instance) -> bool:
        """Reattach to a task that kept running while the daemon was away; False if it cannot be."""
        attachment = await self._network.lookup(instance.netkey, namespace=instance.namespace)
        if attachment is None:
            return False
        instance.ip = attachment.ip
        await self._logs.attach(LogTarget(instance.namespace, instance.function, instance.id))
        return True

    def remove_stale_logs(self, namespaces: Iterable[str], keep: Collection[tuple[str, str]]) -> None:
        """Delete the log FIFOs of instances removed while no daemon ran (see remove_stale_fifos)."""
        for path in self._logs.remove_stale(namespaces, keep):
            log.info("removed the log FIFO of a gone instance: %s", path)

    async def wait_ready(self, instance: Instance, timeout: float | None = None) -> bool:
        ok = await wait_ready(
            instance.ip, WATCHDOG_PORT, path=instance.health_path,
            timeout=self._settings.timeouts.ready if timeout is None else timeout,
            failed=instance.exited,
        )
        if ok:
            instance.ready = True
            instance.ready_since = time.monotonic()
            instance.endpoint = Endpoint(instance.ip, WATCHDOG_PORT, instance.id)
        return ok

    # --- teardown ------------------------------------------------------------------------------

    async def stop_task(self, instance: Instance, grace: float) -> None:
        """SIGTERM, wait up to ``grace``, SIGKILL; then delete the task and release its network."""
        ns, cid = instance.namespace, instance.id
        instance.ready = False
        task = await self._client.get_task(ns, cid)
        if task is not None:
            if task.state in (TaskState.PAUSED, TaskState.PAUSING):
                with contextlib.suppress(Exception):
                    await self._client.resume_task(ns, cid)
            if task.state not in (TaskState.STOPPED, TaskState.CREATED) and grace > 0:
                with contextlib.suppress(ContainerdNotFound, RuntimeFailure):
                    await self._client.kill_task(ns, cid, signal.SIGTERM, all=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(instance.exited.wait(), grace)
            if task.state != TaskState.STOPPED and not instance.exited.is_set():
                with contextlib.suppress(ContainerdNotFound, RuntimeFailure):
                    await self._client.kill_task(ns, cid, signal.SIGKILL, all=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(instance.exited.wait(), 5)
            await self._delete_task(ns, cid)
        instance.pid = 0
        instance.paused = instance.resync = False
        self._logs.detach(ns, cid)
        await self._network.teardown(instance.netkey)
        if instance.ip and self.on_address_released is not None:
            # the IP may be handed to another function next: drop pooled connections to it now
            self.on_address_released(instance.ip, WATCHDOG_PORT)

    async def _delete_task(self, ns: str, cid: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                await self._client.delete_task(ns, cid)
                return
            except ContainerdNotFound:
                return
            except RuntimeFailure:
                # the exit may not be processed yet ("task must be stopped"): retry briefly
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def destroy(self, instance: Instance, grace: float | None = None) -> None:
        """Release everything the instance owns; safe to call on a half-created instance."""
        instance.stopping = True
        ns, cid = instance.namespace, instance.id
        await self.stop_task(instance, instance.grace if grace is None else grace)
        with contextlib.suppress(ContainerdNotFound):
            await self._client.delete_container(ns, cid)
        with contextlib.suppress(ContainerdNotFound):
            await self._client.remove_snapshot(ns, cid, self._settings.snapshotter)
        self._secrets.release(ns, cid)

    def note(self, instance: Instance, message: str) -> None:
        """A line from the daemon in the instance's own log stream (what ``faas-cli logs`` shows)."""
        self._logs.note(LogTarget(instance.namespace, instance.function, instance.id), message)

    async def set_parked_label(self, instance: Instance, parked: bool) -> None:
        """Remember across restarts that scale-to-zero stopped this task (restore leaves it stopped)."""
        with contextlib.suppress(ContainerdNotFound):
            await self._client.set_container_labels(instance.namespace, instance.id,
                                                    {LABEL_PARKED: "1" if parked else ""})

    async def mark_deleting(self, instance: Instance) -> None:
        """So a daemon that dies mid-delete finishes the delete at start instead of resurrecting it."""
        with contextlib.suppress(ContainerdNotFound):
            await self._client.set_container_labels(instance.namespace, instance.id, {LABEL_DELETING: "1"})


def clear_stale_lock(mounts: list[Mount], tmpdir: str) -> bool:
    """Remove the watchdog's lock file from an instance's writable layer before its task restarts.

    The watchdog answers /_/health 200 while ``$TMPDIR/.lock`` exists and removes it only on
    SIGTERM. A task that ended otherwise (SIGKILL by the idle stop, a crash, a reboot) leaves it
    behind, so the restarted watchdog would report ready before its upstream listens and the first
    calls of a cold start would get 500s. No symlink is followed (the function owns that layer).
    """
    root = next((o.partition("=")[2] for m in mounts if m.type == "overlay" for o in m.options
                 if o.startswith("upperdir=")), None)
    if root is None:
        root = next((m.source for m in mounts if m.type == "bind"), None)
    parts = [p for p in tmpdir.split("/") if p and p != "."]
    if root is None or ".." in parts:
        return False
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except OSError:
        return False
    try:
        for part in parts:
            inner = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.unlink(WATCHDOG_LOCK, dir_fd=fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


async def _sync(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)
