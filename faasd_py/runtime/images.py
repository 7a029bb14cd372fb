"""Images in containerd: pull (policy Always / IfNotPresent), import archives, unpack to snapshots.

The result matches what containerd's own client leaves behind (content with GC labels, one
committed snapshot per chainID, an image record), so ``ctr`` and a restarted daemon see the
same images and containerd's garbage collector keeps exactly what an image still needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import field_mask_pb2

from faasd_py.errors import ImageError, ImageNotFound, InvalidRequest, RegistryAuthError
from faasd_py.runtime import oci
from faasd_py.runtime._api.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
from faasd_py.runtime._api.api.services.images.v1 import images_pb2, images_pb2_grpc
from faasd_py.runtime._api.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from faasd_py.runtime._api.api.types import descriptor_pb2
from faasd_py.runtime.archive import open_archive
from faasd_py.runtime.content import (
    ContentStore,
    Session,
    SingleFlight,
    lease_resource,
    leased,
    translate_rpc_errors,
)
from faasd_py.runtime.model import ImageInfo
from faasd_py.runtime.oci import Descriptor, Manifest
from faasd_py.runtime.reference import Reference, parse_reference
from faasd_py.runtime.registry import RegistryClient

PULL_POLICIES = ("Always", "IfNotPresent")
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_GC_CONTENT = "containerd.io/gc.ref.content"
LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot"

log = logging.getLogger(__name__)


class BlobSource(Protocol):
    """Where an image's blobs come from: a registry or an archive."""

    async def read(self, desc: Descriptor) -> bytes: ...

    def stream(self, desc: Descriptor) -> AsyncGenerator[bytes, None]: ...


class _RegistrySource:
    def __init__(self, registry: RegistryClient, ref: Reference) -> None:
        self._registry = registry
        self._ref = ref

    async def read(self, desc: Descriptor) -> bytes:
        if desc.media_type in oci.INDEX_TYPES | oci.MANIFEST_TYPES:  # manifests live under /manifests/
            return (await self._registry.resolve(dataclasses.replace(self._ref, digest=desc.digest)))[1]
        return await self._registry.fetch_blob_bytes(self._ref, desc.digest, desc.size)

    def stream(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        return self._registry.fetch_blob(self._ref, desc.digest, desc.size)


@dataclass(frozen=True, slots=True)
class _Tree:
    """An image record's target resolved down to this platform's manifest and config."""

    target: Descriptor
    manifest_desc: Descriptor
    manifest_body: bytes
    manifest: Manifest
    config_body: bytes
    config: dict[str, Any]
    diff_ids: list[str]
    chains: list[str]

    def info(self, name: str) -> ImageInfo:
        return ImageInfo(
            name=name,
            digest=self.target.digest,
            manifest_digest=self.manifest_desc.digest,
            config_digest=self.manifest.config.digest,
            chain_id=self.chains[-1] if self.chains else "",
            config=oci.image_config(self.config),
            size=sum(layer.size for layer in self.manifest.layers),
        )


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class ImageService:
    def __init__(self, channel: grpc.aio.Channel, registry: RegistryClient, *, snapshotter: str = "overlayfs",
                 platform: str | None = None, max_downloads: int = 3) -> None:
        self._channel = channel
        self._registry = registry
        self._snapshotter = snapshotter
        self._platform = oci.Platform.parse(platform) if platform else oci.host_platform()
        self._content = ContentStore(channel)
        self._images = images_pb2_grpc.ImagesStub(channel)
        self._snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self._diff = diff_pb2_grpc.DiffStub(channel)
        self._downloads = asyncio.Semaphore(max_downloads)
        self._pulls: SingleFlight[ImageInfo] = SingleFlight()
        self._blobs: SingleFlight[bool] = SingleFlight()
        self._unpacks: SingleFlight[None] = SingleFlight()

    # --- public API ------------------------------------------------------------------------

    async def ensure(self, image: str, namespace: str, policy: str = "Always") -> ImageInfo:
        """Make ``image`` present and unpacked; concurrent calls for one image share one pull.

        Always asks the registry which digest the reference names now (a HEAD request) and pulls
        only if that differs from the local image; when the registry cannot be reached at all, a
        complete local image is used (with a warning). IfNotPresent never contacts a registry for
        an image that is present and unpacked.
        """
        if policy not in PULL_POLICIES:
            raise InvalidRequest(f"unknown pull policy {policy!r}: use Always or IfNotPresent")
        ref = parse_reference(image)
        info, _ = await self._pulls.run((namespace, str(ref)), lambda: self._ensure(ref, namespace, policy))
        return info

    async def get(self, image: str, namespace: str) -> ImageInfo | None:
        """The local image if it is present and unpacked; never contacts a registry."""
        name = str(parse_reference(image))
        with translate_rpc_errors(f"reading image {name}"):
            target = await self._record(name, namespace)
            return await self._inspect(name, target, namespace) if target else None

    async def import_archive(self, path: Path, namespace: str, base_name: str | None = None) -> list[ImageInfo]:
        """Import an OCI image layout (tar or directory) or a ``docker save`` tar, and unpack it."""
        archive = await asyncio.to_thread(open_archive, path, base_name)
        try:
            with translate_rpc_errors(f"importing {path}"):
                async with leased(self._channel, namespace) as session:
                    infos = []
                    for name, target in archive.images:
                        body = await archive.read(target)
                        infos.append(await self._install(name, target, body, archive, session))
                    return infos
        finally:
            await asyncio.to_thread(archive.close)

    # --- pull ------------------------------------------------------------------------------

    async def _ensure(self, ref: Reference, namespace: str, policy: str) -> ImageInfo:
        name = str(ref)
        with translate_rpc_errors(f"pulling {name}"):
            local = await self._record(name, namespace)
            if local is not None:
                info = await self._usable_local(ref, local, namespace, policy)
                if info is not None:
                    return info
            target, body = await self._registry.resolve(ref)
            async with leased(self._channel, namespace) as session:
                return await self._install(name, target, body, _RegistrySource(self._registry, ref), session)

    async def _usable_local(self, ref: Reference, local: Descriptor, namespace: str, policy: str) -> ImageInfo | None:
        """The local image if the policy lets it be used as it is, else None (pull)."""
        name = str(ref)
        if policy == "Always" and ref.digest != local.digest:
            try:
                remote = await self._registry.head(ref)
            except (ImageNotFound, RegistryAuthError):
                raise
            except ImageError as exc:
                # unreachable registry (air-gapped host, imported image): use a complete local copy
                info = await self._inspect(name, local, namespace)
                if info is None:
                    raise
                log.warning("%s; using the local image %s (%s)", exc.message, name, info.digest)
                return info
            if remote is None or remote.digest != local.digest:
                return None
        return await self._inspect(name, local, namespace)

    async def _record(self, name: str, namespace: str) -> Descriptor | None:
        try:
            resp = await self._images.Get(images_pb2.GetImageRequest(name=name), metadata=Session(namespace).metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        t = resp.image.target
        return Descriptor(t.media_type, t.digest, t.size)

    async def _inspect(self, name: str, target: Descriptor, namespace: str) -> ImageInfo | None:
        """ImageInfo from local content only, or None if anything (blob, snapshot) is missing."""
        session = Session(namespace)

        async def read(desc: Descriptor) -> bytes | None:
            return await self._content.read(desc.digest, session)

        body = await read(target)
        if body is None:
            return None
        if target.media_type not in oci.INDEX_TYPES | oci.MANIFEST_TYPES:
            target = dataclasses.replace(target, media_type=oci.detect_media_type(body, "", name))
        try:
            tree = await self._walk(name, target, body, read)
        except ImageError:
            return None  # e.g. a local index without this platform: pulling again says why
        if tree is None or (tree.chains and not await self._snapshot_exists(tree.chains[-1], session)):
            return None
        return tree.info(name)

    # --- storing and unpacking -------------------------------------------------------------

    async def _walk(self, name: str, target: Descriptor, body: bytes,
                    read: Callable[[Descriptor], Awaitable[bytes | None]]) -> _Tree | None:
        what = f"image {name}"
        manifest_desc, manifest_body = target, body
        if target.media_type in oci.INDEX_TYPES:
            manifest_desc = oci.select_manifest(oci.parse_index(body, what), self._platform, what)
            found = await read(manifest_desc)
            if found is None:
                return None
            manifest_body = found
        manifest = oci.parse_manifest(manifest_body, what)
        config_body = await read(manifest.config)
        if config_body is None:
            return None
        config = oci.load_json(config_body, f"{what}: config")
        oci.check_config_platform(config, self._platform, what)
        diff_ids = oci.diff_ids(config, len(manifest.layers), what)
        return _Tree(target, manifest_desc, manifest_body, manifest, config_body, config, diff_ids,
                     oci.chain_ids(diff_ids))

    async def _install(self, name: str, target: Descriptor, body: bytes, source: BlobSource,
                       session: Session) -> ImageInfo:
        """Store every blob of the platform's image with GC labels, unpack it, point ``name`` at it."""
        tree = await self._walk(name, target, body, source.read)
        if tree is None:
            raise ImageError(f"image {name}: incomplete")
        try:
            async with asyncio.TaskGroup() as group:
                writes = [group.create_task(self._write_layer(layer, diff_id, source, session))
                          for layer, diff_id in zip(tree.manifest.layers, tree.diff_ids, strict=True)]
                group.create_task(self._unpack(tree, writes, session))
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        config_labels = {f"{LABEL_GC_SNAPSHOT}.{self._snapshotter}": tree.chains[-1]} if tree.chains else {}
        await self._write_small(tree.manifest.config, tree.config_body, config_labels, session)
        manifest_labels = {f"{LABEL_GC_CONTENT}.config": tree.manifest.config.digest}
        manifest_labels |= {f"{LABEL_GC_CONTENT}.l.{i}": layer.digest for i, layer in enumerate(tree.manifest.layers)}
        await self._write_small(tree.manifest_desc, tree.manifest_body, manifest_labels, session)
        if tree.manifest_desc.digest != target.digest:
            await self._write_small(target, body, {f"{LABEL_GC_CONTENT}.m.0": tree.manifest_desc.digest}, session)
        await self._set_image(name, target, session)
        return tree.info(name)

    async def _write_small(self, desc: Descriptor, data: bytes, labels: dict[str, str], session: Session) -> None:
        await self._content.ensure(desc, labels, session, lambda: _once(data))

    async def _write_layer(self, layer: Descriptor, diff_id: str, source: BlobSource, session: Session) -> None:
        labels = {LABEL_UNCOMPRESSED: diff_id}

        async def download() -> bool:
            async with self._downloads:
                return await self._content.ensure(layer, labels, session, lambda: source.stream(layer))

        _, ours = await self._blobs.run((session.namespace, layer.digest), download)
        if not ours:  # another pull fetched it: put it under our lease and labels too
            await self._content.ensure(layer, labels, session, lambda: source.stream(layer))

    async def _unpack(self, tree: _Tree, writes: list[asyncio.Task[None]], session: Session) -> None:
        if tree.chains and await self._held(tree.chains[-1], session):  # its parents exist too
            return
        parent = ""
        for layer, diff_id, chain, write in zip(tree.manifest.layers, tree.diff_ids, tree.chains, writes, strict=True):
            if not await self._held(chain, session):
                await write
                apply = functools.partial(self._apply, layer, diff_id, chain, parent, session)
                _, ours = await self._unpacks.run((session.namespace, chain), apply)
                if not ours:
                    await lease_resource(self._channel, session, f"snapshots/{self._snapshotter}", chain)
            parent = chain

    async def _apply(self, layer: Descriptor, diff_id: str, chain: str, parent: str, session: Session) -> None:
        """Prepare → Diff.Apply → Commit(name=chainID), like containerd's unpacker."""
        key = f"extract-{uuid.uuid4().hex} {chain}"
        md = session.metadata
        prepared = await self._snapshots.Prepare(
            snapshots_pb2.PrepareSnapshotRequest(snapshotter=self._snapshotter, key=key, parent=parent), metadata=md)
        committed = False
        try:
            request = diff_pb2.ApplyRequest(diff=descriptor_pb2.Descriptor(
                media_type=layer.media_type, digest=layer.digest, size=layer.size), mounts=prepared.mounts)
            applied = (await self._diff.Apply(request, metadata=md)).applied
            if applied.digest != diff_id:
                raise ImageError(f"layer {layer.digest} unpacked to {applied.digest}, but the image config "
                                 f"says {diff_id}")
            try:
                await self._snapshots.Commit(
                    snapshots_pb2.CommitSnapshotRequest(snapshotter=self._snapshotter, name=chain, key=key),
                    metadata=md)
                committed = True
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # another process unpacked it first
                    raise
        finally:
            if not committed:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._snapshots.Remove(
                        snapshots_pb2.RemoveSnapshotRequest(snapshotter=self._snapshotter, key=key), metadata=md)

    async def _held(self, chain: str, session: Session) -> bool:
        """Whether the committed snapshot ``chain`` exists, put under our lease *before* looking:
        otherwise containerd's garbage collector could remove an unreferenced one between the look
        and the lease, and the next layer's Prepare would fail with "parent snapshot does not exist"
        (seen once in CI after another test deleted the last image using that base layer)."""
        await lease_resource(self._channel, session, f"snapshots/{self._snapshotter}", chain)
        return await self._snapshot_exists(chain, session)

    async def _snapshot_exists(self, key: str, session: Session) -> bool:
        try:
            await self._snapshots.Stat(snapshots_pb2.StatSnapshotRequest(snapshotter=self._snapshotter, key=key),
                                       metadata=session.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def _set_image(self, name: str, target: Descriptor, session: Session) -> None:
        image = images_pb2.Image(name=name, target=descriptor_pb2.Descriptor(
            media_type=target.media_type, digest=target.digest, size=target.size))
        try:
            await self._images.Create(images_pb2.CreateImageRequest(image=image), metadata=session.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            mask = field_mask_pb2.FieldMask(paths=["target"])
            await self._images.Update(images_pb2.UpdateImageRequest(image=image, update_mask=mask),
                                      metadata=session.metadata)
