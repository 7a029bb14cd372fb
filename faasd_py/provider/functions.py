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
import dataclasses
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
from faasd_py.provider.usage import FunctionSample, UsageMeter
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.freezer import Freezer
from faasd_py.runtime.images import ImageService
from faasd_py.runtime.model import ContainerInfo, TaskInfo, TaskState
from faasd_py.types import (
    LABEL_SCALE_MAX,
    LABEL_SCALE_MIN,
    LABEL_SCALE_ZERO,
    LABEL_SCALE_ZERO_DURATION,
    FunctionDeployment,
    FunctionStatus,
    RuntimeState,
    ScaleServiceRequest,
    parse_duration,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
MAX_REPLICAS = 20  # per function on one host; a typo of 1000 must not fork-bomb the box
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
BACKOFF_RESET = 120.0  # seconds of healthy running after which the backoff starts over
_INSTANCE_ID = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-[0-9a-f]{8}$")  # new_instance_id()'s shape
RESYNC_QUIET = 0.25  # seconds without a call before containerd is told of a wake through the freezer
RESYNC_WAIT = 5.0  # ... waited for at most this long: a function that is never quiet meets it once


class Idle(enum.Enum):
    """Scale-to-zero levels: paused keeps memory and IP (thawed in < 1 ms); stopped frees memory."""

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
    idle: Idle = Idle.ACTIVE  # the level asked for: resolve() wakes the function unless ACTIVE
    reached: Idle = Idle.ACTIVE  # the level reached: what describe reports as its state
    last_used: float = field(default_factory=time.monotonic)
    waking: asyncio.Future[None] | None = None
    wakes: int = 0  # times woken from zero since the daemon started (describe: faasd.wakes)

    @property
    def deployment(self) -> FunctionDeployment:
        return self.record.deployment

    def refresh_endpoints(self) -> None:
        self.endpoints = [i.endpoint for i in self.instances if i.ready and i.endpoint and not i.stopping]
        if self.endpoints:
            self.became_ready.set()
        else:
            self.became_ready.clear()


def _label_int(dep: FunctionDeployment, label: str, default: int) -> int:
    raw = dep.labels.get(label)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise InvalidRequest(f"label {label} must be an integer, got {raw!r}") from exc


def _min_replicas(dep: FunctionDeployment) -> int:
    return max(1, min(_label_int(dep, LABEL_SCALE_MIN, 1), MAX_REPLICAS))


def _max_replicas(dep: FunctionDeployment) -> int:
    return max(1, min(_label_int(dep, LABEL_SCALE_MAX, MAX_REPLICAS), MAX_REPLICAS))


def _check_replica_labels(dep: FunctionDeployment) -> None:
    """At deploy: a max below 1 or below the min is a mistake to report, not to guess around."""
    low = _label_int(dep, LABEL_SCALE_MIN, 1)
    high = _label_int(dep, LABEL_SCALE_MAX, MAX_REPLICAS)
    if high < 1:
        raise InvalidRequest(f"label {LABEL_SCALE_MAX} must be at least 1, got {high}")
    if low > high:
        raise InvalidRequest(f"label {LABEL_SCALE_MIN} ({low}) must not be greater than {LABEL_SCALE_MAX} ({high})")


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
        usage: UsageMeter | None = None,
        freezer: Freezer | None = None,
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
        self._usage = usage or UsageMeter()
        self._freezer = freezer or Freezer()

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
            runtime=self._runtime(fn),
        )

    @staticmethod
    def _runtime(fn: Function) -> RuntimeState:
        """A crash loop is an instance that crashed again soon after a restart and is down now."""
        live = [i for i in fn.instances if not i.stopping]
        crashloop = any(i.supervised and i.restarts >= 2 for i in live)
        last = max(live, key=lambda i: i.last_exit_at, default=None)
        return RuntimeState(
            state="crashloop" if crashloop else fn.reached.value,
            restarts=sum(i.restart_count for i in live),
            last_exit=last.last_exit if last is not None and last.last_exit_at else "",
            wakes=fn.wakes,
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
        fn = self._get(name, namespace)
        status = self._status(fn)
        if usage:
            status = dataclasses.replace(status, usage=await self._usage.usage(namespace, [i.id for i in fn.instances]))
        return status

    def samples(self) -> builtins.list[FunctionSample]:
        """Every function's replicas, invocations and cgroup totals now (the metrics scrape)."""
        out = []
        for (ns, name), fn in self._table.items():
            totals = self._usage.totals(ns, (i.id for i in fn.instances))
            out.append(FunctionSample(name, ns, self._status(fn).replicas, totals.cpu_seconds, totals.memory_bytes,
                                      fn.invocations))
        return out

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
        _check_replica_labels(dep)
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
            fn.idle = fn.reached = Idle.ACTIVE  # the fresh replicas run, whatever the old ones were
            fn.last_used = time.monotonic()
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
            target = min(request.replicas, _max_replicas(fn.deployment))
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
        while True:
            await asyncio.sleep(self._settings.scaling.sweep_interval)
            if not self._restored:
                continue
            stop_after = self._settings.scaling.stop_after
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
            running = [i for i in fn.instances if i.ready and not i.paused and i.pid]
            results = await asyncio.gather(*(self._pause_one(i) for i in running), return_exceptions=True)
            for inst, result in zip(running, results, strict=True):
                inst.paused = not isinstance(result, BaseException)
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                await self._unpark(fn)
                raise failure
            fn.reached = Idle.PAUSED
            log.info("%s.%s idle: paused %d replica(s)", name, ns, len(running))
            return
        for inst in fn.instances:
            inst.parked = True
        # the label first: a daemon stopped halfway restores the function as stopped, not as crashed
        await asyncio.gather(*(self._launcher.set_parked_label(i, True) for i in fn.instances))
        results = await asyncio.gather(*(self._launcher.stop_task(i, grace=0) for i in fn.instances),
                                       return_exceptions=True)
        fn.refresh_endpoints()
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        fn.reached = Idle.STOPPED
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
            if fn.idle is not Idle.ACTIVE:
                await self._unpark(fn)

    async def _unpark(self, fn: Function) -> None:
        """Resume the frozen instances, cold-start the stopped ones; the caller holds the lock.

        An instance that does not come back is left to the restart loop; the call fails only
        when no instance at all is ready.
        """
        woken = [i for i in fn.instances if (i.paused or i.parked) and not i.stopping]
        results = await asyncio.gather(*(self._wake_one(i) for i in woken), return_exceptions=True)
        fn.idle = fn.reached = Idle.ACTIVE
        if woken:
            fn.wakes += 1
        if any(i.resync for i in woken):
            self._spawn(self._resync(fn))
        failure: Exception | None = None
        for inst, result in zip(woken, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                log.error("%s.%s: instance %s did not wake up: %s", inst.function, inst.namespace, inst.id, result)
                failure = failure or result
                self._schedule_restart(inst, f"did not wake up ({result})")
        fn.refresh_endpoints()
        if failure is not None and not fn.endpoints:
            raise failure

    async def _wake_one(self, inst: Instance) -> None:
        if inst.paused:
            if self._freezer.thaw(inst.cgroup):
                inst.resync = True  # containerd learns it in _resync, once the woken calls are served
            else:
                await self._client.resume_task(inst.namespace, inst.id)
            inst.paused = False
        elif inst.parked:
            await self._cold_start(inst)

    async def _pause_one(self, inst: Instance) -> None:
        if inst.resync:
            # containerd still counts it as paused (no resync yet): freezing makes that true again
            if not await self._freezer.freeze(inst.cgroup):
                raise RuntimeFailure(f"instance {inst.id} could not be frozen")
            inst.resync = False
        else:
            await self._client.pause_task(inst.namespace, inst.id)

    async def _resync(self, fn: Function) -> None:
        """Bring containerd's view in line after a wake through the freezer.

        containerd accepts ``Resume`` only for a frozen task, so each replica is frozen again for
        the ~7 ms the RPC takes. That is done once the function has had no call for RESYNC_QUIET
        (waiting at most RESYNC_WAIT), so the calls that woke it, and the burst that usually
        follows, never pay for it; a call that arrives meanwhile waits those few ms in the
        kernel's accept queue and is served.
        """
        deadline = time.monotonic() + RESYNC_WAIT
        while True:
            now = time.monotonic()
            quiet_for = now - fn.last_used
            busy = any(i.inflight for i in fn.instances if i.resync)
            if now >= deadline or (not busy and quiet_for >= RESYNC_QUIET):
                break
            await asyncio.sleep(min(max(RESYNC_QUIET - quiet_for, 0.01), deadline - now))
        async with self._locks[(fn.deployment.namespace, fn.deployment.service)]:
            for inst in fn.instances:
                if not inst.resync or inst.paused or inst.stopping or fn.removed:
                    continue
                if not await self._freezer.freeze(inst.cgroup):
                    log.warning("%s.%s: instance %s could not be frozen to tell containerd it runs; "
                                "containerd lists it as paused until it idles again", inst.function,
                                inst.namespace, inst.id)
                    continue
                try:
                    await self._client.resume_task(inst.namespace, inst.id)
                    inst.resync = False
                except FaasdError as exc:
                    self._freezer.thaw(inst.cgroup)
                    log.warning("%s.%s: containerd did not take the resume of %s (%s); it lists it as "
                                "paused until it idles again", inst.function, inst.namespace, inst.id, exc)

    async def _cold_start(self, inst: Instance) -> None:
        inst.parked = False  # from here on an exit is a crash again
        await self._launcher.restart(inst)
        await self._launcher.set_parked_label(inst, False)
        if not await self._launcher.wait_ready(inst):
            raise RuntimeFailure(f"instance {inst.id} did not become ready after a cold start"
                                 + (f" ({inst.last_exit})" if inst.exited.is_set() and inst.last_exit else ""))

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
                task = tasks.get((inst.namespace, inst.id))
                if task is not None and task.state in (TaskState.RUNNING, TaskState.PAUSED):
                    inst.pid = task.pid  # so its exit events are recognised as its own
                fn.instances.append(inst)
                self._instances[(inst.namespace, inst.id)] = inst
            self._table[key] = fn
            jobs += [self._recover(fn, inst, tasks.get((inst.namespace, inst.id)), sem) for inst in fn.instances]
        await asyncio.gather(*jobs)
        for fn in self._table.values():
            # scale-to-zero state survives restarts and reboots: a parked function stays parked
            # (a mix, left by a daemon that died while parking, wakes fully on the next call)
            if fn.instances and all(i.parked for i in fn.instances):
                fn.idle = fn.reached = Idle.STOPPED
            elif any(i.paused or i.parked for i in fn.instances):
                fn.idle = fn.reached = Idle.PAUSED
            fn.refresh_endpoints()
        for inst in stale:
            self._spawn(self._discard(inst))
        live = {i.netkey for fn in self._table.values() for i in fn.instances}
        await self._network.gc(live)
        for ns in namespaces:
            await self._remove_orphan_snapshots(ns)
        known = {(i.namespace, i.id) for fn in self._table.values() for i in fn.instances}
        known |= {(i.namespace, i.id) for i in stale}
        self._secrets.gc(known)
        self._launcher.remove_stale_logs(namespaces, known)
        self._restored = True
        log.info("restored %d function(s) in %d namespace(s)", len(self._table), len(namespaces))

    async def purge(self) -> int:
        """Remove every function instance containerd holds (``faasd-py uninstall --purge``).

        Goes through the same Launcher.destroy as a delete, so CNI DEL runs and no IP, netns,
        snapshot or iptables chain is left; returns how many instances were removed.
        """
        removed = 0
        for ns in await self._namespaces.list():
            for c in await self._client.list_containers(ns, f'labels."{LABEL_FUNCTION}"'):
                raw = c.extensions.get(EXTENSION)
                if raw is None:
                    continue
                inst = self._launcher.describe(FunctionRecord.decode(raw), c.id)
                await self._launcher.destroy(inst, grace=0)
                removed += 1
        self._table.clear()
        await self._network.gc(set())
        return removed

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
                if task is not None and task.state is TaskState.STOPPED:  # it died while we were away
                    inst.last_exit = f"exit status {task.exit_status}"
                    inst.last_exit_at = time.monotonic()
                if task is not None and task.state in (TaskState.RUNNING, TaskState.PAUSED):
                    adopted = await self._launcher.adopt(inst)
                    if adopted and task.state == TaskState.PAUSED:
                        inst.paused = True
                        inst.ready = True  # it answered before it was paused; probing would hang
                        inst.endpoint = Endpoint(inst.ip, WATCHDOG_PORT, inst.id)
                        return
                if not adopted:
                    await self._launcher.restart(inst)
                if await self._launcher.wait_ready(inst):
                    fn.refresh_endpoints()
                else:
                    log.warning("restored function %s.%s is not ready yet", inst.function, inst.namespace)
                    self._schedule_restart(inst, "was not ready after the restore")
            except FaasdError as exc:
                log.error("could not restore %s.%s (%s): %s", inst.function, inst.namespace, inst.id, exc)
                self._schedule_restart(inst, f"could not be restored ({exc.message})")

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
            inst.record_oom(time.monotonic())
            return
        if getattr(payload, "id", cid) not in ("", cid):
            return  # an exec process, not the task itself
        pid = getattr(payload, "pid", 0)
        if not inst.pid or (pid and pid != inst.pid):
            return  # the exit of a task we replaced or deleted already: events lag behind our calls
        inst.exited.set()
        inst.ready = False
        expected = inst.stopping or inst.restarting or inst.parked
        if not expected:
            inst.record_exit(getattr(payload, "exit_status", 0), time.monotonic())
        fn = self._table.get((namespace, inst.function))
        if fn is not None and inst in fn.instances:
            fn.refresh_endpoints()
            if not expected and self._restored:
                log.warning("function %s.%s instance %s exited (%s); restarting",
                            inst.function, namespace, cid, inst.last_exit)
                self._schedule_restart(inst, f"exited ({inst.last_exit})")

    def _schedule_restart(self, inst: Instance, reason: str) -> None:
        """Hand a crashed instance to its restart loop (one loop per instance at a time)."""
        if inst.supervised or inst.stopping or inst.parked:
            return
        if inst.ready_since and time.monotonic() - inst.ready_since > BACKOFF_RESET:
            inst.restarts = 0  # it ran fine for a while: an occasional crash is not a crash loop
        inst.supervised = True
        self._spawn(self._supervise(inst, reason))

    async def _supervise(self, inst: Instance, reason: str) -> None:
        """Restart with backoff until the instance is ready again. Every attempt is written into
        the function's own log stream and counted for describe: a crash loop is never silent."""
        key = (inst.namespace, inst.function)
        try:
            while True:
                delay = RESTART_BACKOFF[min(inst.restarts, len(RESTART_BACKOFF) - 1)]
                inst.restarts += 1
                inst.restart_count += 1
                self._launcher.note(inst, f"faasd-py: instance {inst.id} {reason}; "
                                          f"restart #{inst.restart_count} in {delay:g}s")
                await asyncio.sleep(delay)
                fn = self._table.get(key)
                if fn is None or inst.stopping or inst.parked or inst not in fn.instances:
                    return
                async with self._locks[key]:
                    if fn.removed or inst.stopping or inst.parked or inst not in fn.instances:
                        return
                    try:
                        await self._launcher.restart(inst)
                        ready = await self._launcher.wait_ready(inst)
                        if ready and fn.idle is Idle.PAUSED:  # scaled to zero meanwhile: freeze it too
                            await self._client.pause_task(inst.namespace, inst.id)
                            inst.paused = True
                    except FaasdError as exc:
                        log.error("restart of %s.%s (%s) failed: %s", inst.function, inst.namespace, inst.id, exc)
                        ready = False
                    if ready and not inst.exited.is_set():
                        fn.refresh_endpoints()
                        return
                    fn.refresh_endpoints()
                reason = (f"exited again ({inst.last_exit})" if inst.exited.is_set()
                          else f"was not ready {self._settings.timeouts.ready:g}s after its restart")
        finally:
            inst.supervised = False

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
