"""ImageService and RegistryClient against a real containerd and the local registry.

Images are built in Python (tests/oci_layout.py), pushed with ``push_layout`` and pulled through
a counting proxy on loopback that stands in for the registry, so the tests can assert exactly
which requests a pull made (none for IfNotPresent, only a HEAD for an unchanged Always).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faasd_py.config import RegistrySettings
from faasd_py.errors import ImageError, ImageNotFound, InvalidRequest
from faasd_py.runtime import oci
from faasd_py.runtime._api.api.services.content.v1 import content_pb2, content_pb2_grpc
from faasd_py.runtime._api.api.services.images.v1 import images_pb2, images_pb2_grpc
from faasd_py.runtime._api.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from faasd_py.runtime._api.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from faasd_py.runtime.content import ContentStore, Session
from faasd_py.runtime.images import ImageService
from faasd_py.runtime.registry import RegistryClient
from tests.infra import TestEnv
from tests.oci_layout import (
    BuiltImage,
    build_image,
    digest_of,
    index_for,
    tar_directory,
    write_docker_save,
    write_layout,
)

pytestmark = pytest.mark.integration

NS = "fdpyb-images"
SNAPSHOTTER = "overlayfs"
MD = (("containerd-namespace", NS),)


class CountingProxy:
    """Forwards everything to the registry and records each request (method, path)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str]] = []
        self._server: TestServer | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.port}"

    async def start(self) -> CountingProxy:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def close(self) -> None:
        if self._server:
            await self._server.close()
        if self._session:
            await self._session.close()

    def blob_gets(self) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and "/blobs/" in p)

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        self.requests.append((request.method, request.path))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, f"http://{self.upstream}{request.path_qs}",
                                         headers=headers, data=await request.read(),
                                         allow_redirects=False) as resp:
            body = await resp.read()
            out = {k: v.replace(self.upstream, self.host) for k, v in resp.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "date",
                                        "connection")}
            if request.method == "HEAD":
                out["Content-Length"] = resp.headers.get("Content-Length", "0")
            return web.Response(status=resp.status, body=body if request.method != "HEAD" else None, headers=out)


@pytest.fixture(scope="module")
async def proxy(testenv: TestEnv) -> AsyncIterator[CountingProxy]:
    p = await CountingProxy(testenv.registry).start()
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def channel(testenv: TestEnv) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel("unix://" + testenv.containerd_socket) as ch:
        yield ch


@pytest.fixture(scope="module")
async def registry() -> AsyncIterator[RegistryClient]:
    client = RegistryClient(RegistrySettings(), Path(tempfile.gettempdir()) / "fdpyb-no-docker-config.json")
    yield client
    await client.close()


@pytest.fixture(scope="module")
def service(channel: grpc.aio.Channel, registry: RegistryClient) -> ImageService:
    return ImageService(channel, registry, snapshotter=SNAPSHOTTER)


async def push(registry: RegistryClient, tmp: Path, ref: str, image: BuiltImage) -> str:
    layout = write_layout(tmp / f"layout-{uuid.uuid4().hex[:8]}", image)
    return await registry.push_layout(layout, ref)


async def content_labels(channel: grpc.aio.Channel, digest: str) -> dict[str, str]:
    stub = content_pb2_grpc.ContentStub(channel)
    return dict((await stub.Info(content_pb2.InfoRequest(digest=digest), metadata=MD)).info.labels)


async def read_files(channel: grpc.aio.Channel, chain_id: str, paths: list[str]) -> dict[str, bytes]:
    """Prepare a snapshot on the image, mount it, read ``paths``, and clean everything up."""
    snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
    key = f"fdpyb-view-{uuid.uuid4().hex}"
    # a GC root: pulls running meanwhile trigger containerd's GC, which collects unreferenced snapshots
    request = snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=key, parent=chain_id,
                                                   labels={"containerd.io/gc.root": "fdpyb-test"})
    resp = await snaps.Prepare(request, metadata=MD)
    try:
        [mount] = resp.mounts
        return await asyncio.to_thread(_mount_and_read, mount.type, mount.source, list(mount.options), paths)
    finally:
        await snaps.Remove(snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key), metadata=MD)


def _mount_and_read(fstype: str, source: str, options: list[str], paths: list[str]) -> dict[str, bytes]:
    target = Path(tempfile.mkdtemp(prefix="fdpyb-mnt-"))
    try:
        subprocess.run(["mount", "-t", fstype, source, str(target), "-o", ",".join(options)], check=True,
                       capture_output=True)
        try:
            return {p: (target / p).read_bytes() for p in paths if (target / p).exists()}
        finally:
            subprocess.run(["umount", str(target)], check=True)
    finally:
        target.rmdir()


async def collect_garbage(channel: grpc.aio.Channel) -> None:
    """Deleting a lease with sync=True runs containerd's GC before it returns."""
    leases = leases_pb2_grpc.LeasesStub(channel)
    await leases.Create(leases_pb2.CreateRequest(id="fdpyb-gc"), metadata=MD)
    await leases.Delete(leases_pb2.DeleteRequest(id="fdpyb-gc", sync=True), metadata=MD)


async def snapshot_exists(channel: grpc.aio.Channel, key: str) -> bool:
    snaps = snapshots_pb2_grpc.SnapshotsStub(channel)
    try:
        await snaps.Stat(snapshots_pb2.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=key), metadata=MD)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


async def image_names(channel: grpc.aio.Channel) -> dict[str, str]:
    stub = images_pb2_grpc.ImagesStub(channel)
    return {i.name: i.target.digest for i in (await stub.List(images_pb2.ListImagesRequest(), metadata=MD)).images}


async def test_pull_stores_labels_snapshots_and_files(
    service: ImageService, registry: RegistryClient, proxy: CountingProxy, channel: grpc.aio.Channel,
    tmp_path: Path,
) -> None:
    image = build_image([{"etc/hello.txt": b"hello\n", "bin/tool": b"#!/bin/sh\n"},
                         {"www/index.html": b"<h1>hi</h1>\n"}], cmd=["/bin/tool", "serve"], env=["A=1"])
    ref = f"{proxy.host}/fdpyb/app:1"
    assert await push(registry, tmp_path, ref, image) == image.manifest_digest
    proxy.requests.clear()

    info = await service.ensure(ref, NS)
    assert info.name == ref and info.digest == image.manifest_digest == info.manifest_digest
    assert info.config_digest == image.config_digest
    assert info.config.cmd == ("/bin/tool", "serve") and info.config.env == ("A=1",)
    assert info.size == sum(len(layer) for layer in image.layers)
    assert proxy.blob_gets() == 3  # config + two layers

    assert (await image_names(channel))[ref] == image.manifest_digest
    chains = oci.chain_ids(image.diff_ids)
    assert info.chain_id == chains[-1]
    manifest_labels = await content_labels(channel, image.manifest_digest)
    assert manifest_labels == {"containerd.io/gc.ref.content.config": image.config_digest,
                               "containerd.io/gc.ref.content.l.0": digest_of(image.layers[0]),
                               "containerd.io/gc.ref.content.l.1": digest_of(image.layers[1])}
    assert await content_labels(channel, image.config_digest) == {
        f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}": chains[-1]}
    for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
        assert await content_labels(channel, digest_of(layer)) == {"containerd.io/uncompressed": diff_id}

    # nothing is left to GC: the lease is gone and the labels keep everything reachable
    leases = leases_pb2_grpc.LeasesStub(channel)
    assert not [le.id for le in (await leases.List(leases_pb2.ListRequest(), metadata=MD)).leases]
    await collect_garbage(channel)
    for chain in chains:
        assert await snapshot_exists(channel, chain)
    assert await content_labels(channel, digest_of(image.layers[1]))

    files = await read_files(channel, info.chain_id, ["etc/hello.txt", "www/index.html", "bin/tool"])
    assert files == {"etc/hello.txt": b"hello\n", "www/index.html": b"<h1>hi</h1>\n", "bin/tool": b"#!/bin/sh\n"}
    assert await service.get(ref, NS) == info


async def test_second_pull_and_if_not_present(
    service: ImageService, registry: RegistryClient, proxy: CountingProxy, tmp_path: Path,
) -> None:
    image = build_image([{"again.txt": b"again"}])
    ref = f"{proxy.host}/fdpyb/again:1"
    await push(registry, tmp_path, ref, image)
    first = await service.ensure(ref, NS)
    proxy.requests.clear()

    assert await service.ensure(ref, NS) == first  # Always: one HEAD, no blob work
    assert proxy.requests == [("HEAD", "/v2/fdpyb/again/manifests/1")]
    proxy.requests.clear()

    assert await service.ensure(ref, NS, policy="IfNotPresent") == first
    assert proxy.requests == []
    assert await service.get(f"{proxy.host}/fdpyb/never:1", NS) is None
    assert proxy.requests == []

    # a new push under the same tag is picked up by Always and moves the image record
    newer = build_image([{"again.txt": b"again, changed"}])
    await push(registry, tmp_path, ref, newer)
    proxy.requests.clear()
    updated = await service.ensure(ref, NS)
    assert updated.digest == newer.manifest_digest != first.digest
    assert proxy.blob_gets() == 2
    assert (await service.get(ref, NS)) == updated


async def test_concurrent_ensures_share_one_pull(
    service: ImageService, registry: RegistryClient, proxy: CountingProxy, tmp_path: Path,
) -> None:
    image = build_image([{"shared.txt": b"x" * 100_000}])
    ref = f"{proxy.host}/fdpyb/shared:1"
    await push(registry, tmp_path, ref, image)
    proxy.requests.clear()
    infos = await asyncio.gather(*(service.ensure(ref, NS) for _ in range(10)))
    assert all(i == infos[0] for i in infos)
    assert sum(1 for m, p in proxy.requests if "/manifests/" in p) == 1
    assert proxy.blob_gets() == 2


async def test_images_sharing_layers_and_a_second_namespace(
    service: ImageService, registry: RegistryClient, proxy: CountingProxy, channel: grpc.aio.Channel,
    tmp_path: Path,
) -> None:
    base = {"lib/base.so": b"b" * 50_000}
    one = build_image([base, {"app": b"one"}])
    two = build_image([base, {"app": b"two"}])
    await push(registry, tmp_path, f"{proxy.host}/fdpyb/one:1", one)
    await push(registry, tmp_path, f"{proxy.host}/fdpyb/two:1", two)
    proxy.requests.clear()
    a, b = await asyncio.gather(service.ensure(f"{proxy.host}/fdpyb/one:1", NS),
                                service.ensure(f"{proxy.host}/fdpyb/two:1", NS))
    assert proxy.blob_gets() == 5  # the shared base layer once, two configs, two top layers
    assert await read_files(channel, a.chain_id, ["app", "lib/base.so"]) == {"app": b"one", "lib/base.so": base[
        "lib/base.so"]}
    assert await read_files(channel, b.chain_id, ["app"]) == {"app": b"two"}

    # another namespace gets its own records and snapshots, but containerd shares the blobs
    other = "fdpyb-images-2"
    proxy.requests.clear()
    again = await service.ensure(f"{proxy.host}/fdpyb/one:1", other)
    assert again.chain_id == a.chain_id
    assert [p for m, p in proxy.requests if "/blobs/" in p] == [f"/v2/fdpyb/one/blobs/{one.config_digest}"]
    # pinned by digest and present: no registry request at all
    pinned = f"{proxy.host}/fdpyb/one@{a.digest}"
    assert (await service.ensure(pinned, other)).digest == a.digest
    proxy.requests.clear()
    assert (await service.ensure(pinned, other)).digest == a.digest
    assert proxy.requests == []
    images = images_pb2_grpc.ImagesStub(channel)
    md = (("containerd-namespace", other),)
    for image in (await images.List(images_pb2.ListImagesRequest(), metadata=md)).images:
        await images.Delete(images_pb2.DeleteImageRequest(name=image.name, sync=True), metadata=md)


async def test_content_write_waits_for_a_locked_ingest(channel: grpc.aio.Channel) -> None:
    """Another writer holding the same ingest ref: ensure() waits, then only labels the blob."""
    data = uuid.uuid4().bytes * 1000
    desc = oci.Descriptor(oci.OCI_LAYER, digest_of(data), len(data))
    store = ContentStore(channel)
    stub = content_pb2_grpc.ContentStub(channel)
    holder = stub.Write(metadata=MD)
    await holder.write(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=f"faasd-py-{desc.digest}",
                                                       total=desc.size, expected=desc.digest))
    await holder.read()
    downloads = 0

    async def source() -> AsyncGenerator[bytes, None]:
        nonlocal downloads
        downloads += 1
        yield data

    waiting = asyncio.create_task(store.ensure(desc, {"fdpyb": "label"}, Session(NS), source))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await holder.write(content_pb2.WriteContentRequest(action=content_pb2.COMMIT, total=desc.size, data=data,
                                                       expected=desc.digest))
    await holder.read()
    await holder.done_writing()
    assert await asyncio.wait_for(waiting, 10) is False
    assert downloads == 0
    assert (await content_labels(channel, desc.digest))["fdpyb"] == "label"
    await stub.Delete(content_pb2.DeleteContentRequest(digest=desc.digest), metadata=MD)


async def test_a_leftover_layer_is_leased_before_it_is_used(
    service: ImageService, registry: RegistryClient, proxy: CountingProxy, channel: grpc.aio.Channel,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A layer blob left unreferenced (by a deleted image) is reused, not downloaded again; the
    garbage collector running right after the pull found it must not take it from under the unpack.
    """
    layer_files = {"leftover.txt": uuid.uuid4().bytes * 1000}
    image = build_image([layer_files])
    ref = f"{proxy.host}/fdpyb/leftover:1"
    await push(registry, tmp_path, ref, image)
    layer = image.layers[0]
    # present in the content store, referenced by nothing: what a deleted image leaves behind
    desc = oci.Descriptor(oci.OCI_LAYER_GZIP, digest_of(layer), len(layer))

    async def data() -> AsyncGenerator[bytes, None]:
        yield layer

    # written under a lease of the test's own, so that no collection before the pull removes it
    leases = leases_pb2_grpc.LeasesStub(channel)
    held = f"fdpyb-leftover-{uuid.uuid4().hex[:8]}"
    await leases.Create(leases_pb2.CreateRequest(id=held), metadata=MD)
    assert await ContentStore(channel).ensure(desc, {}, Session(NS, held), data) is True
    real_labels = service._content.labels
    collected = []

    async def look_then_collect(digest: str, session: Session) -> dict[str, str] | None:
        if digest != desc.digest or collected:
            return await real_labels(digest, session)
        await leases.Delete(leases_pb2.DeleteRequest(id=held), metadata=MD)  # a leftover from here on
        found = await real_labels(digest, session)
        collected.append(digest)
        await collect_garbage(channel)  # the worst moment for the collector to run
        return found

    monkeypatch.setattr(service._content, "labels", look_then_collect)
    proxy.requests.clear()
    info = await service.ensure(ref, NS)
    assert collected == [desc.digest]
    assert proxy.blob_gets() == 1  # the config only: the layer was there
    assert await read_files(channel, info.chain_id, ["leftover.txt"]) == layer_files
    assert await content_labels(channel, desc.digest)  # still there, now referenced by the image
    images = images_pb2_grpc.ImagesStub(channel)
    await images.Delete(images_pb2.DeleteImageRequest(name=ref, sync=True), metadata=MD)


async def test_index_docker_types_and_uncompressed_layers(
    service: ImageService, registry: RegistryClient, proxy: CountingProxy, channel: grpc.aio.Channel,
    tmp_path: Path,
) -> None:
    host = oci.host_platform()
    native = build_image([{"which": b"native"}], architecture=host.architecture, docker_types=True)
    foreign_arch = "s390x"
    foreign = build_image([{"which": b"foreign"}], architecture=foreign_arch, docker_types=True)
    plain = build_image([{"plain.txt": b"uncompressed"}], compress=False)
    layout = tmp_path / "multi"
    write_layout(layout, native)
    write_layout(layout, foreign)
    index = index_for({str(host): native, f"linux/{foreign_arch}": foreign}, docker_types=True)
    (layout / "blobs" / "sha256" / digest_of(index).split(":")[1]).write_bytes(index)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": oci.DOCKER_LIST, "digest": digest_of(index), "size": len(index)}]}))
    ref = f"{proxy.host}/fdpyb/multi:1"
    assert await registry.push_layout(layout, ref) == digest_of(index)

    info = await service.ensure(ref, NS)
    assert info.digest == digest_of(index) and info.manifest_digest == native.manifest_digest
    assert await content_labels(channel, digest_of(index)) == {
        "containerd.io/gc.ref.content.m.0": native.manifest_digest}
    assert await read_files(channel, info.chain_id, ["which"]) == {"which": b"native"}

    plain_ref = f"{proxy.host}/fdpyb/plain:1"
    await push(registry, tmp_path, plain_ref, plain)
    plain_info = await service.ensure(plain_ref, NS)
    assert plain_info.chain_id == plain.diff_ids[0] == digest_of(plain.layers[0])
    assert await read_files(channel, plain_info.chain_id, ["plain.txt"]) == {"plain.txt": b"uncompressed"}


async def test_missing_images_are_image_not_found(
    service: ImageService, registry: RegistryClient, proxy: CountingProxy, tmp_path: Path,
) -> None:
    with pytest.raises(ImageNotFound, match=rf"image {proxy.host}/fdpyb/nope:1 not found") as exc:
        await service.ensure(f"{proxy.host}/fdpyb/nope:1", NS)
    assert exc.value.status == 400
    await push(registry, tmp_path, f"{proxy.host}/fdpyb/tagged:1", build_image([{"t": b"t"}]))
    with pytest.raises(ImageNotFound, match="fdpyb/tagged:2 not found"):
        await service.ensure(f"{proxy.host}/fdpyb/tagged:2", NS)
    with pytest.raises(InvalidRequest):
        await service.ensure("Not A Valid Ref", NS)


async def test_import_oci_tar_and_docker_save(
    service: ImageService, proxy: CountingProxy, channel: grpc.aio.Channel, tmp_path: Path,
) -> None:
    proxy.requests.clear()
    oci_image = build_image([{"srv/oci.txt": b"from an OCI layout"}, {"srv/more.txt": b"second layer"}])
    tar = tar_directory(write_layout(tmp_path / "oci", oci_image, ref_name="latest"), tmp_path / "oci.tar")
    with pytest.raises(InvalidRequest, match="only tagged 'latest'; give a base name"):
        await service.import_archive(tar, NS)
    [info] = await service.import_archive(tar, NS, base_name="localhost/fdpyb-oci")
    assert info.name == "localhost/fdpyb-oci:latest" and info.digest == oci_image.manifest_digest
    assert await read_files(channel, info.chain_id, ["srv/oci.txt", "srv/more.txt"]) == {
        "srv/oci.txt": b"from an OCI layout", "srv/more.txt": b"second layer"}

    saved = build_image([{"srv/docker.txt": b"from docker save"}])
    archive = write_docker_save(tmp_path / "saved.tar", saved, ["fdpyb/saved:2", "localhost/fdpyb-saved:2"])
    infos = await service.import_archive(archive, NS)
    assert [i.name for i in infos] == ["docker.io/fdpyb/saved:2", "localhost/fdpyb-saved:2"]
    assert infos[0].chain_id == saved.diff_ids[0] and infos[0].config.cmd == ("/bin/true",)
    assert await read_files(channel, infos[0].chain_id, ["srv/docker.txt"]) == {"srv/docker.txt": b"from docker save"}

    names = await image_names(channel)
    assert {"localhost/fdpyb-oci:latest", "docker.io/fdpyb/saved:2", "localhost/fdpyb-saved:2"} <= set(names)
    await collect_garbage(channel)
    assert await service.get("localhost/fdpyb-saved:2", NS) == infos[1]
    assert await service.ensure("localhost/fdpyb-oci", NS, policy="IfNotPresent") == info
    assert proxy.requests == []  # an import never talks to a registry

    # Always with an unreachable registry (air-gapped host): the complete local image is used
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        offline = f"127.0.0.1:{s.getsockname()[1]}/fdpyb/offline"
    [imported] = await service.import_archive(tar, NS, base_name=offline)
    assert imported.name == f"{offline}:latest"  # the tag comes from the layout's ref.name
    assert await service.ensure(offline, NS) == imported
    with pytest.raises(ImageError, match="cannot connect"):
        await service.ensure(offline.replace("offline", "absent"), NS)


@pytest.fixture(scope="module", autouse=True)
async def _cleanup(channel: grpc.aio.Channel) -> AsyncIterator[None]:
    yield
    images = images_pb2_grpc.ImagesStub(channel)
    with contextlib.suppress(grpc.aio.AioRpcError):
        for image in (await images.List(images_pb2.ListImagesRequest(), metadata=MD)).images:
            await images.Delete(images_pb2.DeleteImageRequest(name=image.name, sync=True), metadata=MD)
