"""Asynchronous containerd client: typed wrappers over the gRPC API (grpc.aio on the unix socket).

Callers get the plain dataclasses of :mod:`faasd_py.runtime.model` and the exceptions of
:mod:`faasd_py.errors`, never protobuf messages or ``AioRpcError``. Stubs are built once per
client and every list call is a single round trip (the daemon restores hundreds of containers
at start, so nothing here may fan out per item).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2, timestamp_pb2

from faasd_py.errors import ContainerdAlreadyExists, ContainerdError, ContainerdNotFound, ContainerdUnavailable
from faasd_py.runtime._api.api.events import container_pb2 as container_events
from faasd_py.runtime._api.api.events import content_pb2 as content_events
from faasd_py.runtime._api.api.events import image_pb2 as image_events
from faasd_py.runtime._api.api.events import namespace_pb2 as namespace_events
from faasd_py.runtime._api.api.events import snapshot_pb2 as snapshot_events
from faasd_py.runtime._api.api.events import task_pb2 as task_events
from faasd_py.runtime._api.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from faasd_py.runtime._api.api.services.events.v1 import events_pb2, events_pb2_grpc
from faasd_py.runtime._api.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from faasd_py.runtime._api.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from faasd_py.runtime._api.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from faasd_py.runtime._api.api.services.version.v1 import version_pb2_grpc
from faasd_py.runtime._api.api.types import mount_pb2
from faasd_py.runtime._api.api.types.task import task_pb2
from faasd_py.runtime._api.runc.options import oci_pb2
from faasd_py.runtime.model import ContainerInfo, Event, Mount, TaskInfo, TaskState

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
NAMESPACE_HEADER = "containerd-namespace"
_PROBE_TOPIC_PREFIX = "/faasd-py/subscribed/"
_PROBE_TYPE_URL = "faasd-py.SubscriptionProbe"
_PROBE_NAMESPACE = "faasd-py"  # events need a namespace; publishing one does not create it

# containerd's own limit is 16 MiB; a list of hundreds of containers with large extensions must fit
_MAX_MESSAGE = 64 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]

_TASK_STATES = {
    task_pb2.UNKNOWN: TaskState.UNKNOWN,
    task_pb2.CREATED: TaskState.CREATED,
    task_pb2.RUNNING: TaskState.RUNNING,
    task_pb2.STOPPED: TaskState.STOPPED,
    task_pb2.PAUSED: TaskState.PAUSED,
    task_pb2.PAUSING: TaskState.PAUSING,
}


def _event_types() -> dict[str, Any]:
    """Full protobuf name (what containerd puts in the Any type_url) -> message class."""
    registry: dict[str, Any] = {}
    for module in (task_events, container_events, content_events, image_events, namespace_events, snapshot_events):
        for name, descriptor in module.DESCRIPTOR.message_types_by_name.items():
            registry[descriptor.full_name] = getattr(module, name)
    return registry


_EVENT_TYPES = _event_types()


def decode_event_payload(payload: Any) -> Any:
    """Decode an event ``Any``; unknown types come back as None rather than failing the stream."""
    name = payload.type_url.rsplit("/", 1)[-1]
    cls = _EVENT_TYPES.get(name)
    if cls is None:
        return None
    message = cls()
    message.ParseFromString(payload.value)
    return message


def map_rpc_error(error: grpc.aio.AioRpcError, operation: str) -> ContainerdError:
    """Translate a gRPC failure into the domain error that says which operation failed and why."""
    code = error.code()
    message = f"containerd: {operation}: {error.details() or code.name}"
    if code == grpc.StatusCode.NOT_FOUND:
        return ContainerdNotFound(message, code.name)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return ContainerdAlreadyExists(message, code.name)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ContainerdUnavailable(message, code.name)
    return ContainerdError(message, code.name)


@contextlib.contextmanager
def _rpc(operation: str) -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise map_rpc_error(e, operation) from None


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def _mount(m: Any) -> Mount:
    return Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))


def _mount_pb(m: Mount) -> Any:
    return mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))


def _container(c: Any) -> ContainerInfo:
    return ContainerInfo(
        id=c.id,
        image=c.image,
        labels=dict(c.labels),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        runtime=c.runtime.name,
        created_at=_datetime(c.created_at),
        updated_at=_datetime(c.updated_at),
        spec=json.loads(c.spec.value) if c.spec.value else None,
        extensions={name: ext.value for name, ext in c.extensions.items()},
    )


def _task(p: Any) -> TaskInfo:
    return TaskInfo(
        id=p.container_id or p.id,
        pid=p.pid,
        state=_TASK_STATES.get(p.status, TaskState.UNKNOWN),
        exit_status=p.exit_status,
        exited_at=_datetime(p.exited_at),
    )


class EventStream:
    """One long-lived containerd event subscription, decoded; close it with :meth:`aclose`.

    containerd never acknowledges a subscription (no response headers until the first event),
    so :meth:`started` proves it is live: it publishes a private probe event that the stream's
    filters also match and waits for it to come back. After that, nothing the caller does can
    be missed, which is what a restore (subscribe, then list and reconcile) relies on.
    """

    def __init__(self, call: Any, probe_topic: str, probe: Callable[[], Awaitable[None]], timeout: float) -> None:
        self._call = call
        self._probe = probe
        self._timeout = timeout
        self._iterator: AsyncIterator[Any] = call.__aiter__()
        self._probe_topic = probe_topic
        self._early: collections.deque[Any] = collections.deque()  # events seen while waiting for the probe

    async def started(self) -> None:
        """Return once the subscription is active in containerd (ContainerdUnavailable if it never is)."""
        reader = asyncio.ensure_future(self._read_until_probe())
        prober = asyncio.ensure_future(self._keep_probing())
        try:
            done, _ = await asyncio.wait({reader, prober}, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            prober.cancel()
        if reader in done:
            if isinstance(reader.exception(), StopAsyncIteration):
                raise ContainerdUnavailable("containerd: the event stream closed while subscribing", "CANCELLED")
            reader.result()
            return
        reader.cancel()  # a cancelled read cancels the RPC: this stream is unusable now
        if prober in done:
            prober.result()  # raises the publish error
        raise ContainerdUnavailable(
            f"containerd: event subscription not active after {self._timeout:g}s", "DEADLINE_EXCEEDED"
        )

    async def _read_until_probe(self) -> None:
        while True:
            envelope = await self._receive()
            if envelope.topic == self._probe_topic:
                return
            self._early.append(envelope)

    async def _keep_probing(self) -> None:
        """The first probe can race the subscription itself, so repeat until one comes back."""
        delay = 0.02
        while True:
            await self._probe()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while True:
            envelope = self._early.popleft() if self._early else await self._receive()
            if envelope.topic != self._probe_topic:
                break
        return Event(
            namespace=envelope.namespace,
            topic=envelope.topic,
            timestamp=_datetime(envelope.timestamp),
            payload=decode_event_payload(envelope.event),
        )

    async def _receive(self) -> Any:
        try:
            return await self._iterator.__anext__()
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise map_rpc_error(e, "receive events") from None

    async def aclose(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Stubs:
    """Every service stub, built once per channel."""

    __slots__ = ("containers", "events", "namespaces", "snapshots", "tasks", "version")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.version = version_pb2_grpc.VersionStub(channel)
        self.namespaces = namespace_pb2_grpc.NamespacesStub(channel)
        self.containers = containers_pb2_grpc.ContainersStub(channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self.tasks = tasks_pb2_grpc.TasksStub(channel)
        self.events = events_pb2_grpc.EventsStub(channel)


class ContainerdClient:
    """A connection to one containerd; usable as ``async with ContainerdClient(path) as c``."""

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stubs: _Stubs | None = None

    # --- connection --------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._channel is not None:
            return
        if not await asyncio.to_thread(os.path.exists, self.socket_path):
            raise ContainerdUnavailable(f"containerd socket {self.socket_path} does not exist", "UNAVAILABLE")
        channel = grpc.aio.insecure_channel(f"unix://{self.socket_path}", options=_CHANNEL_OPTIONS)
        self._channel, self._stubs = channel, _Stubs(channel)
        try:
            await self.version()
        except ContainerdError as e:
            await self.close()
            raise ContainerdUnavailable(f"containerd at {self.socket_path} does not answer: {e}", e.code) from None

    async def close(self) -> None:
        channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def channel(self) -> grpc.aio.Channel:
        """The shared channel, for runtime modules that need other services (images, content)."""
        if self._channel is None:
            raise ContainerdUnavailable(f"containerd client for {self.socket_path} is not connected", "UNAVAILABLE")
        return self._channel

    @staticmethod
    def metadata(namespace: str) -> tuple[tuple[str, str], ...]:
        return ((NAMESPACE_HEADER, namespace),)

    @property
    def _s(self) -> _Stubs:
        if self._stubs is None:
            raise ContainerdUnavailable(f"containerd client for {self.socket_path} is not connected", "UNAVAILABLE")
        return self._stubs

    async def version(self) -> str:
        with _rpc("version"):
            response = await self._s.version.Version(empty_pb2.Empty(), timeout=self.timeout)
        return str(response.version)

    # --- namespaces --------------------------------------------------------------------------

    async def list_namespaces(self) -> dict[str, dict[str, str]]:
        with _rpc("list namespaces"):
            response = await self._s.namespaces.List(namespace_pb2.ListNamespacesRequest(), timeout=self.timeout)
        return {n.name: dict(n.labels) for n in response.namespaces}

    async def get_namespace(self, name: str) -> dict[str, str]:
        """The namespace's labels. Goes through List because containerd's Get answers a missing
        namespace with an empty label set instead of NOT_FOUND."""
        namespaces = await self.list_namespaces()
        if name not in namespaces:
            raise ContainerdNotFound(f"containerd: get namespace {name}: namespace {name!r} not found", "NOT_FOUND")
        return namespaces[name]

    # containerd publishes an event for each namespace change and refuses to without a namespace in
    # the request context; the namespace being changed is the natural one to publish it in.

    async def create_namespace(self, name: str, labels: dict[str, str]) -> None:
        request = namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name=name, labels=labels))
        with _rpc(f"create namespace {name}"):
            await self._s.namespaces.Create(request, metadata=self.metadata(name), timeout=self.timeout)

    async def set_namespace_labels(self, name: str, labels: dict[str, str]) -> None:
        """Replace the whole label set (containerd does that when the update has no field mask)."""
        request = namespace_pb2.UpdateNamespaceRequest(namespace=namespace_pb2.Namespace(name=name, labels=labels))
        with _rpc(f"set labels of namespace {name}"):
            await self._s.namespaces.Update(request, metadata=self.metadata(name), timeout=self.timeout)

    async def delete_namespace(self, name: str) -> None:
        with _rpc(f"delete namespace {name}"):
            await self._s.namespaces.Delete(
                namespace_pb2.DeleteNamespaceRequest(name=name), metadata=self.metadata(name), timeout=self.timeout
            )

    # --- containers --------------------------------------------------------------------------

    async def create_container(
        self,
        ns: str,
        id: str,
        *,
        image: str,
        spec: dict[str, Any],
        labels: dict[str, str],
        snapshot_key: str,
        snapshotter: str = "overlayfs",
        runtime: str = "io.containerd.runc.v2",
        extensions: dict[str, bytes] | None = None,
    ) -> ContainerInfo:
        container = containers_pb2.Container(
            id=id,
            image=image,
            labels=labels,
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
            runtime=containers_pb2.Container.Runtime(name=runtime),
            spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(spec, separators=(",", ":")).encode()),
            extensions={k: any_pb2.Any(type_url=k, value=v) for k, v in (extensions or {}).items()},
        )
        with _rpc(f"create container {ns}/{id}"):
            response = await self._s.containers.Create(
                containers_pb2.CreateContainerRequest(container=container),
                metadata=self.metadata(ns),
                timeout=self.timeout,
            )
        return _container(response.container)

    async def get_container(self, ns: str, id: str) -> ContainerInfo:
        with _rpc(f"get container {ns}/{id}"):
            response = await self._s.containers.Get(
                containers_pb2.GetContainerRequest(id=id), metadata=self.metadata(ns), timeout=self.timeout
            )
        return _container(response.container)

    async def list_containers(self, ns: str, *filters: str) -> list[ContainerInfo]:
        """Filters use containerd's syntax and are OR-ed, e.g. ``labels."com.openfaas.function"``.

        ListStream sends one container per message, so the answer is not bound by the
        per-message size limit however many containers (and extensions) there are.
        """
        request = containers_pb2.ListContainersRequest(filters=list(filters))
        with _rpc(f"list containers in {ns}"):
            call = self._s.containers.ListStream(request, metadata=self.metadata(ns), timeout=self.timeout)
            return [_container(message.container) async for message in call]

    async def set_container_labels(self, ns: str, id: str, labels: dict[str, str]) -> None:
        """Set these keys and keep the others; an empty value removes a key."""
        if not labels:
            return
        request = containers_pb2.UpdateContainerRequest(
            container=containers_pb2.Container(id=id, labels=labels),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        with _rpc(f"set labels of container {ns}/{id}"):
            await self._s.containers.Update(request, metadata=self.metadata(ns), timeout=self.timeout)

    async def delete_container(self, ns: str, id: str) -> None:
        with _rpc(f"delete container {ns}/{id}"):
            await self._s.containers.Delete(
                containers_pb2.DeleteContainerRequest(id=id), metadata=self.metadata(ns), timeout=self.timeout
            )

    # --- snapshots ---------------------------------------------------------------------------

    async def prepare_snapshot(
        self, ns: str, key: str, parent: str, snapshotter: str = "overlayfs", labels: dict[str, str] | None = None
    ) -> list[Mount]:
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=labels or {}
        )
        with _rpc(f"prepare snapshot {ns}/{key} ({snapshotter})"):
            response = await self._s.snapshots.Prepare(request, metadata=self.metadata(ns), timeout=self.timeout)
        return [_mount(m) for m in response.mounts]

    async def snapshot_mounts(self, ns: str, key: str, snapshotter: str = "overlayfs") -> list[Mount]:
        with _rpc(f"get mounts of snapshot {ns}/{key} ({snapshotter})"):
            response = await self._s.snapshots.Mounts(
                snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key),
                metadata=self.metadata(ns),
                timeout=self.timeout,
            )
        return [_mount(m) for m in response.mounts]

    async def remove_snapshot(self, ns: str, key: str, snapshotter: str = "overlayfs") -> None:
        with _rpc(f"remove snapshot {ns}/{key} ({snapshotter})"):
            await self._s.snapshots.Remove(
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                metadata=self.metadata(ns),
                timeout=self.timeout,
            )

    async def list_snapshots(self, ns: str, snapshotter: str = "overlayfs") -> list[str]:
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter)
        with _rpc(f"list snapshots in {ns} ({snapshotter})"):
            call = self._s.snapshots.List(request, metadata=self.metadata(ns), timeout=self.timeout)
            return [info.name async for response in call for info in response.info]

    # --- tasks -------------------------------------------------------------------------------

    async def create_task(
        self,
        ns: str,
        id: str,
        *,
        rootfs: list[Mount],
        stdout: str = "",
        stderr: str = "",
        runc_options: dict[str, Any] | None = None,
    ) -> int:
        """Create the task (shim + ``runc create``); returns its pid. ``runc_options`` are the
        fields of the runc shim ``Options`` message, e.g. ``{"root": ..., "binary_name": ...}``."""
        options = None
        if runc_options:
            options = any_pb2.Any(
                type_url=RUNC_OPTIONS_TYPE_URL, value=oci_pb2.Options(**runc_options).SerializeToString()
            )
        request = tasks_pb2.CreateTaskRequest(
            container_id=id, rootfs=[_mount_pb(m) for m in rootfs], stdout=stdout, stderr=stderr, options=options
        )
        with _rpc(f"create task {ns}/{id}"):
            response = await self._s.tasks.Create(request, metadata=self.metadata(ns), timeout=self.timeout)
        return int(response.pid)

    async def start_task(self, ns: str, id: str) -> int:
        with _rpc(f"start task {ns}/{id}"):
            response = await self._s.tasks.Start(
                tasks_pb2.StartRequest(container_id=id), metadata=self.metadata(ns), timeout=self.timeout
            )
        return int(response.pid)

    async def get_task(self, ns: str, id: str) -> TaskInfo | None:
        """The container's task, or None when it has none (or the container does not exist)."""
        try:
            with _rpc(f"get task {ns}/{id}"):
                response = await self._s.tasks.Get(
                    tasks_pb2.GetRequest(container_id=id), metadata=self.metadata(ns), timeout=self.timeout
                )
        except ContainerdNotFound:
            return None
        return _task(response.process)

    async def list_tasks(self, ns: str) -> list[TaskInfo]:
        with _rpc(f"list tasks in {ns}"):
            response = await self._s.tasks.List(
                tasks_pb2.ListTasksRequest(), metadata=self.metadata(ns), timeout=self.timeout
            )
        return [_task(p) for p in response.tasks]

    async def kill_task(self, ns: str, id: str, signal: int, *, all: bool = True) -> None:
        request = tasks_pb2.KillRequest(container_id=id, signal=signal, all=all)
        with _rpc(f"kill task {ns}/{id} with signal {signal}"):
            await self._s.tasks.Kill(request, metadata=self.metadata(ns), timeout=self.timeout)

    async def wait_task(self, ns: str, id: str) -> int:
        """Block (no deadline) until the task exits; returns its exit status."""
        with _rpc(f"wait for task {ns}/{id}"):
            response = await self._s.tasks.Wait(tasks_pb2.WaitRequest(container_id=id), metadata=self.metadata(ns))
        return int(response.exit_status)

    async def delete_task(self, ns: str, id: str) -> int | None:
        """Delete a stopped task; returns its exit status, or None if there was no task."""
        try:
            with _rpc(f"delete task {ns}/{id}"):
                response = await self._s.tasks.Delete(
                    tasks_pb2.DeleteTaskRequest(container_id=id), metadata=self.metadata(ns), timeout=self.timeout
                )
        except ContainerdNotFound:
            return None
        return int(response.exit_status)

    async def pause_task(self, ns: str, id: str) -> None:
        with _rpc(f"pause task {ns}/{id}"):
            await self._s.tasks.Pause(
                tasks_pb2.PauseTaskRequest(container_id=id), metadata=self.metadata(ns), timeout=self.timeout
            )

    async def resume_task(self, ns: str, id: str) -> None:
        with _rpc(f"resume task {ns}/{id}"):
            await self._s.tasks.Resume(
                tasks_pb2.ResumeTaskRequest(container_id=id), metadata=self.metadata(ns), timeout=self.timeout
            )

    async def task_pids(self, ns: str, id: str) -> list[int]:
        with _rpc(f"list processes of task {ns}/{id}"):
            response = await self._s.tasks.ListPids(
                tasks_pb2.ListPidsRequest(container_id=id), metadata=self.metadata(ns), timeout=self.timeout
            )
        return [int(p.pid) for p in response.processes]

    # --- events ------------------------------------------------------------------------------

    def subscribe(self, *filters: str) -> EventStream:
        """Subscribe to events (OR-ed containerd filters, e.g. ``namespace==x,topic~="/tasks/"``).

        The request goes out at once; await ``started()`` on the result to know it is active.
        """
        probe_topic = f"{_PROBE_TOPIC_PREFIX}{uuid.uuid4().hex}"
        all_filters = [*filters, f'topic=="{probe_topic}"'] if filters else []  # no filter matches everything
        call = self._s.events.Subscribe(events_pb2.SubscribeRequest(filters=all_filters))
        return EventStream(call, probe_topic, functools.partial(self._publish_probe, probe_topic), self.timeout)

    async def _publish_probe(self, topic: str) -> None:
        request = events_pb2.PublishRequest(topic=topic, event=any_pb2.Any(type_url=_PROBE_TYPE_URL))
        with _rpc("publish the event subscription probe"):
            await self._s.events.Publish(request, metadata=self.metadata(_PROBE_NAMESPACE), timeout=self.timeout)
