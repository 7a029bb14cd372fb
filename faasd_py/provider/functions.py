"""Functions: deploy, update, delete, scale, status, and the routing table the invoke path reads.

containerd is the source of truth (every instance carries its FunctionRecord), and this module
keeps an in-memory view of it: ``_table`` maps ``(namespace, name)`` to the function and its
ready endpoints, so an invocation costs a dict lookup, never a containerd round trip. The view
is rebuilt from containerd at start (:meth:`restore`) and kept current by containerd's task
events (:meth:`run_events`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import logging
import re
import time
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from faasd_py.config import Settings
from faasd_py.errors import (
    Conflict,
    ContainerdUnavailable,
    FaasdError,
    InvalidRequest,
    NotFound,
    RuntimeFailure,
    Unavailable,
)
from faasd_py.network.cni import FunctionNetwork
from faasd_py.provider.contract import Endpoint
from faasd_py.provider.instances import (
    EXTENSION,
    LABEL_DELETING,
    LABEL_FUNCTION,
    LABEL_PARKED,
    WATCHDOG_PORT,
    FunctionRecord,
    Instance,
    Launcher,
    new_instance_id,
)
from faasd_py.provider.namespaces import NamespaceService
from faasd_py.provider.secrets import SecretStore
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.images import ImageService
from faasd_py.runtime.model import ContainerInfo, TaskInfo, TaskState
from faasd_py.types import (
    LABEL_SCALE_MIN,
    LABEL_SCALE_ZERO,
    LABEL_SCALE_ZERO_DURATION,
    FunctionDeployment,
    FunctionStatus,
    ScaleServiceRequest,
    parse_duration,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
MAX_REPLICAS = 20  # per function on one host; a typo of 1000 must not fork-bomb the box
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
BACKOFF_RESET = 120.0  # seconds of healthy running after which the backoff starts over
_INSTANCE_ID = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-[0-9a-f]{8}$")  # new_instance_id()'s shape
OOM_WINDOW = 2.0  # an exit this soon after an OOM event of the same container counts as OOMKilled


class Idle(enum.Enum):
    """Scale-to-zero levels: paused keeps memory and IP (resume ~10 ms); stopped frees memory."""

    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(eq=False)
class Function:
    record: FunctionRecord
    instances: builtins.list[Instance] = field(default_factory=list)
    endpoints: builtins.list[Endpoint] = field(default_factory=list)
    desired: int = 1
    rr: int = 0
    invocations: int = 0
    removed: bool = False
    became_ready: asyncio.Event = field(default_factory=asyncio.Event)
    idle: Idle = Idle.ACTIVE
    last_used: float = field(default_factory=time.monotonic)
    waking: asyncio.Future[None] | None = None

    @property
    def deployment(self) -> FunctionDeployment:
        return self.record.deployment

    def refresh_endpoints(self) -> None:
        self.endpoints = [i.endpoint for i in self.instances if i.ready and i.endpoint and not i.stopping]
        if self.endpoints:
            self.became_ready.set()
        else:
            self.became_ready.clear()


def _min_replicas(dep: FunctionDeployment) -> int:
    raw = dep.labels.get(LABEL_SCALE_MIN, "1")
    try:
        return max(1, min(int(raw), MAX_REPLICAS))
    except ValueError as exc:
        raise InvalidRequest(f"label {LABEL_SCALE_MIN} must be an integer, got {raw!r}") from exc


class FunctionManager:
    def __init__(
        self,
        settings: Settings,
        client: ContainerdClient,
        images: ImageService,
        launcher: Launcher,
        network: FunctionNetwork,
        namespaces: NamespaceService,
        secrets_store: SecretStore,
    ) -> None:
        self._settings = settings
        self._client = client
        self._images = images
        self._launcher = launcher
        self._network = network
        self._namespaces = namespaces
        self._secrets = secrets_store
        self._table: dict[Key, Function] = {}
        self._instances: dict[Key, Instance] = {}  # (namespace, instance id)
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._background: set[asyncio.Task[Any]] = set()
        self._restored = False

    # --- queries ---------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._restored

    def names(self, namespace: str) -> builtins.list[str]:
        return sorted(name for ns, name in self._table if ns == namespace)

    def _status(self, fn: Function) -> FunctionStatus:
        return FunctionStatus(
            deployment=fn.deployment,
            replicas=fn.desired if fn.idle is Idle.ACTIVE else 0,
            available_replicas=len(fn.endpoints) if fn.idle is Idle.ACTIVE else 0,
            invocation_count=float(fn.invocations),
            created_at=fn.record.created_at,
        )

    def _get(self, name: str, namespace: str) -> Function:
        fn = self._table.get((namespace, name))
        if fn is None:
            raise NotFound(f"function: {name}.{namespace} not found")
        return fn

    async def list(self, namespace: str) -> builtins.list[FunctionStatus]:
        await self._namespaces.require(namespace)
        return [self._status(fn) for (ns, _), fn in sorted(self._table.items()) if ns == namespace]

    async def get(self, name: str, namespace: str, usage: bool = False) -> FunctionStatus:
        await self._namespaces.require(namespace)
        return self._status(self._get(name, namespace))

    # --- the hot path ------------------------------------------------------------------------

    async def resolve(self, name: str, namespace: str) -> Endpoint:
        fn = self._table.get((namespace, name))
        if fn is None:
            raise NotFound(f"function {name}.{namespace} not found")
        fn.last_used = time.monotonic()
        if fn.idle is not Idle.ACTIVE:
            await self._wake(fn)
        if not fn.endpoints:
            await self._wait_for_endpoint(fn, name, namespace)
        fn.rr += 1
        endpoint = fn.endpoints[fn.rr % len(fn.endpoints)]
        inst = self._instances.get((namespace, endpoint.instance))
        if inst is not None:
            inst.inflight += 1
        return endpoint

    async def _wait_for_endpoint(self, fn: Function, name: str, namespace: str) -> None:
        deadline = time.monotonic() + self._settings.timeouts.invoke_wait
        while not fn.endpoints:
            if fn.removed:
                raise NotFound(f"function {name}.{namespace} not found")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"No endpoints available for: {name}.{namespace}.")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fn.became_ready.wait(), remaining)

    def release(self, name: str, namespace: str, endpoint: Endpoint) -> None:
        inst = self._instances.get((namespace, endpoint.instance))
        if inst is not None and inst.inflight > 0:
            inst.inflight -= 1
            if inst.inflight == 0 and inst.stopping:
                inst.idle.set()
        fn = self._table.get((namespace, name))
        if fn is not None:
            fn.invocations += 1
            fn.last_used = time.monotonic()

    # --- deploy / update / delete / scale -------------------------------------------------

    async def _validate(self, dep: FunctionDeployment) -> None:
        await self._namespaces.require(dep.namespace)
        self._secrets.check(dep.namespace, dep.secrets)

    async def deploy(self, dep: FunctionDeployment) -> None:
        key = (dep.namespace, dep.service)
        async with self._locks[key]:
            if key in self._table:
                raise Conflict(f"function {dep.service} already exists in namespace {dep.namespace}")
            await self._validate(dep)
            replicas = _min_replicas(dep)
            image = await self._images.ensure(dep.image, dep.namespace, self._settings.registry.pull_policy)
            record = FunctionRecord(dep, generation=1, created_at=datetime.now(UTC))
            fn = Function(record=record, desired=replicas)
            self._table[key] = fn  # invocations that arrive now wait for the first replica
            try:
                fn.instances = await self._start_replicas(record, image, replicas)
            except BaseException:
                fn.removed = True
                fn.became_ready.set()
                self._table.pop(key, None)
                raise
            fn.refresh_endpoints()

    async def _start_replicas(self, record: FunctionRecord, image: Any, count: int) -> builtins.list[Instance]:
        """Start ``count`` instances and wait until each is ready; on any failure none remain."""
        instances = [self._launcher.describe(record, new_instance_id(record.deployment.service))
                     for _ in range(count)]
        for inst in instances:
            self._instances[(inst.namespace, inst.id)] = inst
        results = await asyncio.gather(*(self._start_one(record, image, i) for i in instances),
                                       return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(self._discard(i) for i in instances), return_exceptions=True)
            raise failure
        return instances

    async def _start_one(self, record: FunctionRecord, image: Any, inst: Instance) -> None:
        await self._launcher.create(record, image, inst)
        if not await self._launcher.wait_ready(inst):
            if inst.exited.is_set():
                raise RuntimeFailure(
                    f"function {inst.function} exited during start ({inst.last_exit or 'no exit status'}); "
                    f"see: faas-cli logs {inst.function} --namespace {inst.namespace}"
                )
            raise RuntimeFailure(
                f"function {inst.function} did not become ready within {self._settings.timeouts.ready:g}s "
                f"(no answer on :8080{inst.health_path})"
            )

    async def _discard(self, inst: Instance, graceful: bool = False) -> None:
        """Remove an instance for good; ``graceful`` gives it its grace period to finish."""
        inst.stopping = True
        try:
            await self._launcher.destroy(inst, grace=None if graceful else 0)
        finally:
            self._instances.pop((inst.namespace, inst.id), None)

    async def update(self, dep: FunctionDeployment) -> None:
        """Pull, start the new replicas, switch traffic, then drain and remove the old ones.

        Any failure before the switch leaves the running function exactly as it was.
        """
        key = (dep.namespace, dep.service)
        async with self._locks[key]:
            fn = self._get(dep.service, dep.namespace)
            await self._validate(dep)
            replicas = _min_replicas(dep)
            image = await self._images.ensure(dep.image, dep.namespace, self._settings.registry.pull_policy)
            record = FunctionRecord(dep, generation=fn.record.generation + 1, created_at=fn.record.created_at)
            fresh = await self._start_replicas(record, image, max(replicas, fn.desired))
            old = fn.instances
            fn.record, fn.instances = record, fresh
            fn.desired = max(replicas, fn.desired)
            fn.refresh_endpoints()
            for inst in old:
                inst.stopping = True
                self._spawn(self._drain_and_destroy(inst))

    async def _drain_and_destroy(self, inst: Instance) -> None:
        if inst.inflight > 0:
            inst.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inst.idle.wait(), self._settings.timeouts.upstream)
        await self._discard(inst, graceful=True)

    async def delete(self, name: str, namespace: str) -> None:
        key = (namespace, name)
        async with self._locks[key]:
            await self._namespaces.require(namespace)
            fn = self._get(name, namespace)
            del self._table[key]
            fn.removed = True
            fn.endpoints = []
            fn.became_ready.set()  # wake waiting invocations: they now get 404
            await asyncio.gather(*(self._launcher.mark_deleting(i) for i in fn.instances))
            for inst in fn.instances:
                inst.stopping = True
                self._spawn(self._drain_and_destroy(inst))

    async def scale(self, request: ScaleServiceRequest) -> None:
        key = (request.namespace, request.service_name)
        async with self._locks[key]:
            await self._namespaces.require(request.namespace)
            fn = self._get(request.service_name, request.namespace)
            target = min(request.replicas, MAX_REPLICAS)
            if target == 0:
                await self._park(fn, Idle.PAUSED)
                return
            if fn.idle is not Idle.ACTIVE:
                await self._unpark(fn)
            current = [i for i in fn.instances if not i.stopping]
            if target > len(current):
                info = await self._images.get(fn.deployment.image, fn.deployment.namespace)
                if info is None:
                    info = await self._images.ensure(fn.deployment.image, fn.deployment.namespace, "IfNotPresent")
                fresh = await self._start_replicas(fn.record, info, target - len(current))
                fn.instances = current + fresh
            else:
                for inst in current[target:]:
                    inst.stopping = True
                    self._spawn(self._drain_and_destroy(inst))
                fn.instances = current[:target]
            fn.desired = target
            fn.refresh_endpoints()

    # --- scale to zero -----------------------------------------------------------------------

    def _idle_after(self, dep: FunctionDeployment) -> float | None:
        """Seconds of idleness before pausing, or None if the function never scales to zero."""
        raw = dep.labels.get(LABEL_SCALE_ZERO)
        enabled = self._settings.scaling.zero_by_default if raw is None else raw.strip().lower() == "true"
        if not enabled:
            return None
        duration = dep.labels.get(LABEL_SCALE_ZERO_DURATION)
        if duration:
            try:
                return parse_duration(duration, LABEL_SCALE_ZERO_DURATION)
            except FaasdError:
                log.warning("%s.%s: ignoring invalid %s=%r", dep.service, dep.namespace,
                            LABEL_SCALE_ZERO_DURATION, duration)
        return self._settings.scaling.idle_after

    async def run_idler(self) -> None:
        """Pause functions idle past their zero-duration; stop those paused for much longer."""
        stop_after = self._settings.scaling.stop_after
        while True:
            await asyncio.sleep(self._settings.scaling.sweep_interval)
            if not self._restored:
                continue
            now = time.monotonic()
            due: builtins.list[tuple[Function, Idle, float]] = []
            for (ns, name), fn in self._table.items():
                idle_after = self._idle_after(fn.deployment)
                if idle_after is None or self._locks[(ns, name)].locked():
                    continue
                if any(i.inflight for i in fn.instances):
                    continue
                idle_for = now - fn.last_used
                if fn.idle is Idle.ACTIVE and fn.endpoints and idle_for >= idle_after:
                    due.append((fn, Idle.PAUSED, fn.last_used))
                elif fn.idle is Idle.PAUSED and idle_for >= idle_after + stop_after:
                    due.append((fn, Idle.STOPPED, fn.last_used))
            for fn, level, seen in due:
                try:
                    async with self._locks[(fn.deployment.namespace, fn.deployment.service)]:
                        if not fn.removed and fn.last_used == seen:  # no call since we looked
                            await self._park(fn, level)
                except FaasdError as exc:
                    log.error("could not scale %s.%s to zero: %s", fn.deployment.service,
                              fn.deployment.namespace, exc)

    async def _park(self, fn: Function, level: Idle) -> None:
        """Pause (freezer) or stop every instance; the caller holds the function's lock."""
        if fn.idle is level or (fn.idle is Idle.STOPPED and level is Idle.PAUSED):
            return
        if any(i.inflight for i in fn.instances):
            return  # a call arrived meanwhile: not idle after all
        ns, name = fn.deployment.namespace, fn.deployment.service
        fn.idle = level  # from here on resolve() wakes it first (it waits for our lock)
        if level is Idle.PAUSED:
            try:
                await asyncio.gather(*(self._client.pause_task(ns, i.id) for i in fn.instances if i.ready))
            except FaasdError:
                await asyncio.gather(*(self._client.resume_task(ns, i.id) for i in fn.instances if i.ready),
                                     return_exceptions=True)
                fn.idle = Idle.ACTIVE
                raise
            log.info("%s.%s idle: paused %d replica(s)", name, ns, len(fn.instances))
            return
        for inst in fn.instances:
            inst.parked = True
        await asyncio.gather(*(self._launcher.stop_task(i, grace=0) for i in fn.instances))
        await asyncio.gather(*(self._launcher.set_parked_label(i, True) for i in fn.instances))
        fn.refresh_endpoints()
        log.info("%s.%s idle: stopped %d replica(s) to free memory", name, ns, len(fn.instances))

    async def _wake(self, fn: Function) -> None:
        """Single-flight: concurrent first calls share one resume (or cold start)."""
        if fn.waking is None or fn.waking.done():
            fn.waking = asyncio.ensure_future(self._wake_locked(fn))
        try:
            await asyncio.shield(fn.waking)
        except FaasdError as exc:
            raise Unavailable(f"function {fn.deployment.service}.{fn.deployment.namespace} could not be "
                              f"woken up: {exc.message}") from exc

    async def _wake_locked(self, fn: Function) -> None:
        async with self._locks[(fn.deployment.namespace, fn.deployment.service)]:
            await self._unpark(fn)

    async def _unpark(self, fn: Function) -> None:
        ns = fn.deployment.namespace
        if fn.idle is Idle.PAUSED:
            await asyncio.gather(*(self._client.resume_task(ns, i.id) for i in fn.instances if i.ready))
        elif fn.idle is Idle.STOPPED:
            await asyncio.gather(*(self._cold_start(i) for i in fn.instances))
        fn.idle = Idle.ACTIVE
        fn.refresh_endpoints()

    async def _cold_start(self, inst: Instance) -> None:
        await self._launcher.restart(inst)
        inst.parked = False
        await self._launcher.set_parked_label(inst, False)
        if not await self._launcher.wait_ready(inst):
            raise RuntimeFailure(f"instance {inst.id} did not become ready after a cold start")

    # --- restore at start ------------------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild the table from containerd; restart every instance whose task is gone."""
        namespaces = await self._namespaces.list()
        records: dict[Key, list[tuple[ContainerInfo, FunctionRecord]]] = defaultdict(list)
        tasks: dict[Key, TaskInfo] = {}
        stale: builtins.list[Instance] = []
        for ns in namespaces:
            containers = await self._client.list_containers(ns, f'labels."{LABEL_FUNCTION}"')
            for t in await self._client.list_tasks(ns):
                tasks[(ns, t.id)] = t
            for c in containers:
                raw = c.extensions.get(EXTENSION)
                if raw is None:
                    continue
                try:
                    rec = FunctionRecord.decode(raw)
                except (ValueError, KeyError, FaasdError) as exc:
                    log.error("container %s/%s has an unreadable function record: %s", ns, c.id, exc)
                    continue
                inst = self._launcher.describe(rec, c.id)
                if c.labels.get(LABEL_DELETING):
                    stale.append(inst)
                else:
                    records[(ns, rec.deployment.service)].append((c, rec))
        sem = asyncio.Semaphore(8)
        jobs = []
        for key, items in records.items():
            newest = max(r.generation for _, r in items)
            current = [(c, r) for c, r in items if r.generation == newest]
            stale += [self._launcher.describe(r, c.id) for c, r in items if r.generation != newest]
            fn = Function(record=current[0][1], desired=len(current))
            for c, r in current:
                inst = self._launcher.describe(r, c.id)
                inst.parked = bool(c.labels.get(LABEL_PARKED))
                fn.instances.append(inst)
                self._instances[(inst.namespace, inst.id)] = inst
            self._table[key] = fn
            jobs += [self._recover(fn, inst, tasks.get((inst.namespace, inst.id)), sem) for inst in fn.instances]
        await asyncio.gather(*jobs)
        for fn in self._table.values():
            # scale-to-zero state survives restarts and reboots: a parked function stays parked
            if fn.instances and all(i.parked for i in fn.instances):
                fn.idle = Idle.STOPPED
            elif fn.instances and all(i.paused_at_restore for i in fn.instances):
                fn.idle = Idle.PAUSED
            fn.refresh_endpoints()
        for inst in stale:
            self._spawn(self._discard(inst))
        live = {i.netkey for fn in self._table.values() for i in fn.instances}
        await self._network.gc(live)
        for ns in namespaces:
            await self._remove_orphan_snapshots(ns)
        self._secrets.gc({(i.namespace, i.id) for fn in self._table.values() for i in fn.instances}
                         | {(i.namespace, i.id) for i in stale})
        self._restored = True
        log.info("restored %d function(s) in %d namespace(s)", len(self._table), len(namespaces))

    async def _remove_orphan_snapshots(self, namespace: str) -> None:
        """Instance snapshots carry gc.root, so one whose container is gone (the daemon died between
        deleting the two) would never be collected: remove those explicitly."""
        snapshotter = self._settings.snapshotter
        try:
            containers = {c.id for c in await self._client.list_containers(namespace)}
            keys = await self._client.list_snapshots(namespace, snapshotter)
        except FaasdError as exc:
            log.warning("snapshot cleanup in %s skipped: %s", namespace, exc)
            return
        for key in keys:
            if _INSTANCE_ID.match(key) and key not in containers:
                log.info("removing orphaned snapshot %s/%s", namespace, key)
                with contextlib.suppress(FaasdError):
                    await self._client.remove_snapshot(namespace, key, snapshotter)

    async def _recover(self, fn: Function, inst: Instance, task: TaskInfo | None, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                if inst.parked:
                    if task is not None:  # a parked instance has no task; a reboot-era leftover goes
                        await self._launcher.stop_task(inst, grace=0)
                    return
                adopted = False
                if task is not None and task.state in (TaskState.RUNNING, TaskState.PAUSED):
                    adopted = await self._launcher.adopt(inst)
                    if adopted and task.state == TaskState.PAUSED:
                        inst.paused_at_restore = True
                        inst.ready = True  # it answered before it was paused; probing would hang
                        inst.endpoint = Endpoint(inst.ip, WATCHDOG_PORT, inst.id)
                        return
                if not adopted:
                    await self._launcher.restart(inst)
                if await self._launcher.wait_ready(inst):
                    fn.refresh_endpoints()
                else:
                    log.warning("restored function %s.%s is not ready yet", inst.function, inst.namespace)
                    self._spawn(self._restart_later(inst))
            except FaasdError as exc:
                log.error("could not restore %s.%s (%s): %s", inst.function, inst.namespace, inst.id, exc)
                self._spawn(self._restart_later(inst))

    # --- events: crashes and restarts ------------------------------------------------------

    async def run_events(self) -> None:
        """Follow containerd's task events forever (reconnecting), restarting crashed instances."""
        delay = 0.5
        while True:
            try:
                async for event in self._client.subscribe('topic~="/tasks/exit"', 'topic~="/tasks/oom"'):
                    delay = 0.5
                    self._on_event(event.namespace, event.topic, event.payload)
            except (ContainerdUnavailable, RuntimeFailure) as exc:
                log.warning("containerd event stream broke (%s); reconnecting", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    def _on_event(self, namespace: str, topic: str, payload: Any) -> None:
        cid = getattr(payload, "container_id", "")
        inst = self._instances.get((namespace, cid))
        if inst is None:
            return
        if topic.endswith("/oom"):
            # cgroup v1 reports OOM per container: a killed child (a classic fprocess) is not the task
            inst.oom_at = time.monotonic()
            return
        if getattr(payload, "id", cid) not in ("", cid):
            return  # an exec process, not the task itself
        status = getattr(payload, "exit_status", 0)
        oom = status == 137 and time.monotonic() - inst.oom_at < OOM_WINDOW
        inst.last_exit = "OOMKilled" if oom else f"exit status {status}"
        inst.exited.set()
        inst.ready = False
        fn = self._table.get((namespace, inst.function))
        if fn is not None and inst in fn.instances:
            fn.refresh_endpoints()
            if not inst.stopping and not inst.restarting and not inst.parked and self._restored:
                log.warning("function %s.%s instance %s exited (%s); restarting",
                            inst.function, namespace, cid, inst.last_exit)
                self._spawn(self._restart_later(inst))

    async def _restart_later(self, inst: Instance) -> None:
        if inst.ready_since and time.monotonic() - inst.ready_since > BACKOFF_RESET:
            inst.restarts = 0  # it ran fine for a while: an occasional crash is not a crash loop
        delay = RESTART_BACKOFF[min(inst.restarts, len(RESTART_BACKOFF) - 1)]
        inst.restarts += 1
        await asyncio.sleep(delay)
        fn = self._table.get((inst.namespace, inst.function))
        if fn is None or inst.stopping or inst not in fn.instances:
            return
        async with self._locks[(inst.namespace, inst.function)]:
            if inst.stopping or inst not in fn.instances:
                return
            try:
                await self._launcher.restart(inst)
                ready = await self._launcher.wait_ready(inst)
            except FaasdError as exc:
                log.error("restart of %s.%s failed: %s", inst.function, inst.namespace, exc)
                ready = False
            if ready:
                fn.refresh_endpoints()
            elif not inst.exited.is_set():
                self._spawn(self._restart_later(inst))
            # else: the exit event schedules the next attempt

    # --- housekeeping ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", task.exception())

    async def settle(self) -> None:
        """Wait for background teardowns (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*list(self._background), return_exceptions=True)
