"""containerd's content store and leases, as image pulls and imports use them.

Every write happens under a lease so containerd's garbage collector cannot remove a blob or
snapshot between its commit and the moment an image record (and the GC labels on the blobs)
makes it reachable. The lease expires by itself should the daemon die mid-pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from faasd_py.errors import ContainerdUnavailable, FaasdError, ImageError
from faasd_py.runtime._api.api.services.content.v1 import content_pb2, content_pb2_grpc
from faasd_py.runtime._api.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from faasd_py.runtime.oci import Descriptor

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
LEASE_TTL = timedelta(hours=24)  # what containerd's own client uses for pulls
LOCK_WAIT = 600.0  # how long to wait for another process writing the same blob

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    """A namespace plus the lease that protects what this pull writes."""

    namespace: str
    lease: str = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        md = ((NAMESPACE_HEADER, self.namespace),)
        return (*md, (LEASE_HEADER, self.lease)) if self.lease else md


def rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None


def rpc_failure(exc: grpc.aio.AioRpcError, what: str) -> FaasdError:
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return ContainerdUnavailable(f"containerd: {what}: {exc.details()}", exc.code().name)
    return ImageError(f"containerd: {what}: {exc.details() or exc.code().name}")


@contextlib.contextmanager
def translate_rpc_errors(what: str) -> Iterator[None]:
    """Turn any gRPC error that escaped the specific handlers into a domain error."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise rpc_failure(exc, what) from exc


@contextlib.asynccontextmanager
async def leased(channel: grpc.aio.Channel, namespace: str) -> AsyncIterator[Session]:
    stub = leases_pb2_grpc.LeasesStub(channel)
    lease_id = f"faasd-py-{uuid.uuid4().hex}"
    expire = (datetime.now(UTC) + LEASE_TTL).strftime("%Y-%m-%dT%H:%M:%SZ")
    md = Session(namespace).metadata
    with translate_rpc_errors("creating a lease"):
        await stub.Create(leases_pb2.CreateRequest(id=lease_id, labels={"containerd.io/gc.expire": expire}),
                          metadata=md)
    try:
        yield Session(namespace, lease_id)
    finally:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Delete(leases_pb2.DeleteRequest(id=lease_id), metadata=md)


async def lease_resource(channel: grpc.aio.Channel, session: Session, kind: str, ident: str) -> None:
    """Put something that already existed under the session's lease (as containerd's writer does)."""
    if not session.lease:
        return
    stub = leases_pb2_grpc.LeasesStub(channel)
    request = leases_pb2.AddResourceRequest(id=session.lease, resource=leases_pb2.Resource(id=ident, type=kind))
    await stub.AddResource(request, metadata=Session(session.namespace).metadata)


class SingleFlight(Generic[T]):
    """Concurrent callers with the same key share one run; the result says who did the work."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[T]] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running), False
        task: asyncio.Future[T] = asyncio.ensure_future(work())
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task), True


class ContentStore:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stub = content_pb2_grpc.ContentStub(channel)

    async def labels(self, digest: str, session: Session) -> dict[str, str] | None:
        """The blob's labels, or None if this namespace does not have it."""
        try:
            resp = await self._stub.Info(content_pb2.InfoRequest(digest=digest), metadata=session.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return dict(resp.info.labels)

    async def read(self, digest: str, session: Session) -> bytes | None:
        """A whole (small) blob, or None if it is not there."""
        try:
            parts = [r.data async for r in self._stub.Read(content_pb2.ReadContentRequest(digest=digest),
                                                             metadata=session.metadata)]
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return b"".join(parts)

    async def add_labels(self, digest: str, labels: Mapping[str, str], current: Mapping[str, str],
                         session: Session) -> None:
        missing = {k: v for k, v in labels.items() if current.get(k) != v}
        if not missing:
            return
        info = content_pb2.Info(digest=digest, labels=missing)
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in missing])
        await self._stub.Update(content_pb2.UpdateRequest(info=info, update_mask=mask), metadata=session.metadata)

    async def ensure(self, desc: Descriptor, labels: Mapping[str, str], session: Session,
                     source: Callable[[], AsyncGenerator[bytes, None]]) -> bool:
        """Make the blob present with ``labels``; stream it from ``source`` only if missing.

        Returns True if it was written now. A blob another writer holds the ingest lock for is
        waited for, since that writer will commit it.
        """
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.05
        # under the lease *before* looking: an unreferenced blob found by the look could be garbage
        # collected before it was leased, and unpacking would then fail with "content digest not
        # found" (seen in CI when an earlier test's deleted image had left the layer behind)
        await lease_resource(self._channel, session, "content", desc.digest)
        while True:
            current = await self.labels(desc.digest, session)
            if current is not None:
                await self.add_labels(desc.digest, labels, current, session)
                return False
            try:
                await self._write(desc, labels, session, source)
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    continue  # someone committed it meanwhile: go and label it
                # another writer holds the ingest: it will commit, so wait for that
                locked = exc.code() == grpc.StatusCode.UNAVAILABLE and "locked" in (exc.details() or "")
                if not locked or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _write(self, desc: Descriptor, labels: Mapping[str, str], session: Session,
                     source: Callable[[], AsyncGenerator[bytes, None]]) -> None:
        ref = f"faasd-py-{desc.digest}"
        call: Any = self._stub.Write(metadata=session.metadata)
        try:
            await call.write(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref, total=desc.size,
                                                             expected=desc.digest))
            status = await _response(call)
            offset = status.offset
            if offset != desc.size:  # a complete ingest (or the blob in another namespace) needs no data
                offset = 0  # the first write at offset 0 truncates a stale partial ingest
                stream = source()
                async with contextlib.aclosing(stream):
                    async for chunk in stream:
                        await call.write(content_pb2.WriteContentRequest(action=content_pb2.WRITE, offset=offset,
                                                                         data=chunk))
                        offset = (await _response(call)).offset
            await call.write(content_pb2.WriteContentRequest(action=content_pb2.COMMIT, total=desc.size,
                                                             offset=offset, expected=desc.digest, labels=labels))
            committed = await _response(call)
            if committed.digest and committed.digest != desc.digest:
                raise ImageError(f"content store committed {committed.digest} instead of {desc.digest}")
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:  # the server echoes a last status on close
                pass
        except BaseException as exc:
            call.cancel()
            if rpc_code(exc) not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAVAILABLE):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._stub.Abort(content_pb2.AbortRequest(ref=ref), metadata=session.metadata)
            raise


async def _response(call: Any) -> Any:
    resp = await call.read()
    if resp is grpc.aio.EOF:
        await call  # raises the RPC's error status
        raise ImageError("containerd closed the content write stream early")
    return resp
