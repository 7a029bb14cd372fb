"""Empty a containerd namespace of what it keeps besides containers, so that it can be deleted.

containerd refuses to delete a namespace that still holds images, content or snapshots. Function
images are pulled per namespace, so a namespace whose functions are all gone still has them:
deleting the images (with a synchronous garbage collection) releases their content and layer
snapshots; whatever is still left after that (an orphaned snapshot, a blob of an interrupted
pull) is removed one by one. The caller makes sure no container is left first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import grpc

from faasd_py.errors import ContainerdError, ContainerdNotFound
from faasd_py.runtime._api.api.services.content.v1 import content_pb2, content_pb2_grpc
from faasd_py.runtime._api.api.services.images.v1 import images_pb2, images_pb2_grpc
from faasd_py.runtime._api.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from faasd_py.runtime.client import ContainerdClient, map_rpc_error

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# containerd 1.6 hard-codes the runc shim's root per namespace (it ignores the state= setting)
RUNC_ROOT = Path("/run/containerd/runc")


async def purge_namespace(client: ContainerdClient, namespace: str, snapshotters: Iterable[str]) -> None:
    """Delete every lease, image, snapshot and blob of ``namespace`` (not its containers)."""
    channel, md = client.channel, client.metadata(namespace)
    leases = leases_pb2_grpc.LeasesStub(channel)
    images = images_pb2_grpc.ImagesStub(channel)
    try:
        # a pull's lease would keep its blobs alive through the collection below
        for lease in (await leases.List(leases_pb2.ListRequest(), metadata=md, timeout=client.timeout)).leases:
            await _unless_gone(leases.Delete(leases_pb2.DeleteRequest(id=lease.id), metadata=md,
                                             timeout=client.timeout))
        names = [i.name for i in (await images.List(images_pb2.ListImagesRequest(), metadata=md,
                                                    timeout=client.timeout)).images]
        for n, name in enumerate(names):
            # one synchronous GC, after the last image: it removes the content and snapshots they held
            request = images_pb2.DeleteImageRequest(name=name, sync=n == len(names) - 1)
            await _unless_gone(images.Delete(request, metadata=md, timeout=client.timeout))
    except grpc.aio.AioRpcError as exc:
        raise map_rpc_error(exc, f"empty namespace {namespace}") from None
    for snapshotter in snapshotters:
        await _remove_snapshots(client, namespace, snapshotter)
    await _remove_content(client, namespace)


async def _unless_gone(call: Awaitable[Any]) -> None:
    """Await a delete; something already gone (a concurrent GC) is not an error."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise


async def _remove_snapshots(client: ContainerdClient, namespace: str, snapshotter: str) -> None:
    """Children before parents: a snapshot with children refuses removal, so go round until done."""
    left = await client.list_snapshots(namespace, snapshotter)
    while left:
        failed: list[str] = []
        for key in left:
            try:
                await client.remove_snapshot(namespace, key, snapshotter)
            except ContainerdNotFound:
                pass
            except ContainerdError:
                failed.append(key)
        if len(failed) == len(left):
            log.warning("namespace %s: cannot remove snapshots %s", namespace, ", ".join(failed))
            return
        left = failed


async def _remove_content(client: ContainerdClient, namespace: str) -> None:
    stub = content_pb2_grpc.ContentStub(client.channel)
    md = client.metadata(namespace)
    try:
        digests = [info.digest async for response in stub.List(content_pb2.ListContentRequest(), metadata=md,
                                                                timeout=client.timeout)
                   for info in response.info]
        for digest in digests:
            await _unless_gone(stub.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=md,
                                           timeout=client.timeout))
    except grpc.aio.AioRpcError as exc:
        raise map_rpc_error(exc, f"remove content of {namespace}") from None


def remove_runtime_dirs(namespace: str, cgroup_root: Path = CGROUP_ROOT, runc_root: Path = RUNC_ROOT) -> None:
    """runc leaves an empty cgroup parent per namespace (one per controller) and the shim its runc
    root; remove them once the namespace is gone. Only empty directories: never a live cgroup."""
    dirs = [ctl / namespace for ctl in cgroup_root.iterdir()] if cgroup_root.is_dir() else []
    for d in [*dirs, runc_root / namespace]:
        with contextlib.suppress(OSError):
            d.rmdir()
