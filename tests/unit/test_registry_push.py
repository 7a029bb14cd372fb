"""RegistryClient.push_blob streams: a layer is sent from its file (or an async iterator) in
chunks with a Content-Length, never as one bytes object (aiohttp warns above 1 MiB, and the
test config turns that warning into an error)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faasd_py.config import RegistrySettings
from faasd_py.errors import ImageError
from faasd_py.runtime.reference import parse_reference
from faasd_py.runtime.registry import RegistryClient, _once_only
from tests.fake_registry import FakeRegistry
from tests.oci_layout import build_image, write_layout

BIG = os.urandom(3 << 20) + b"tail"  # > 1 MiB: aiohttp would warn if it were sent as bytes


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RecordingRegistry(FakeRegistry):
    """Remembers how each blob upload arrived."""

    uploads: list[dict[str, str]]

    async def start(self) -> RecordingRegistry:
        app = web.Application(client_max_size=64 << 20)  # the fake's default (1 MiB) is too small here
        app.router.add_route("*", "/token", self._token)
        app.router.add_route("*", "/upload/{id}", self._upload)
        app.router.add_route("*", "/v2/{tail:.*}", self._v2)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def _upload(self, request: web.Request) -> web.Response:
        self.uploads.append({"length": request.headers.get("Content-Length", ""),
                             "encoding": request.headers.get("Transfer-Encoding", "")})
        return await super()._upload(request)


@pytest.fixture
async def fake() -> AsyncIterator[RecordingRegistry]:
    registry = RecordingRegistry()
    registry.uploads = []
    await registry.start()
    yield registry
    await registry.close()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[RegistryClient]:
    reg = RegistryClient(RegistrySettings(), tmp_path / "config.json")
    yield reg
    await reg.close()


async def test_push_blob_from_a_file(fake: RecordingRegistry, client: RegistryClient, tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(BIG)
    ref = parse_reference(f"{fake.host}/team/app:1")
    await client.push_blob(ref, _digest(BIG), path, len(BIG))
    assert fake.blobs[_digest(BIG)] == BIG
    assert fake.uploads == [{"length": str(len(BIG)), "encoding": ""}]


async def test_push_blob_from_an_async_iterator(fake: RecordingRegistry, client: RegistryClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(BIG), 1 << 20):
            yield BIG[i:i + (1 << 20)]

    ref = parse_reference(f"{fake.host}/team/app:1")
    await client.push_blob(ref, _digest(BIG), chunks(), len(BIG))
    await client.push_blob(ref, _digest(b"small"), (c async for c in _one(b"small")))  # size unknown: chunked
    assert fake.blobs[_digest(BIG)] == BIG and fake.blobs[_digest(b"small")] == b"small"
    assert fake.uploads == [{"length": str(len(BIG)), "encoding": ""}, {"length": "", "encoding": "chunked"}]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_file_that_does_not_match_is_not_sent(fake: RecordingRegistry, client: RegistryClient,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"corrupted")
    ref = parse_reference(f"{fake.host}/team/app:1")
    with pytest.raises(ImageError, match="does not match digest"):
        await client.push_blob(ref, _digest(b"original"), path)
    with pytest.raises(ImageError, match="does not match digest"):
        await client.push_blob(ref, _digest(b"corrupted"), path, 3)  # right content, wrong size
    assert fake.uploads == []


async def test_push_layout_streams_large_layers(fake: RecordingRegistry, client: RegistryClient,
                                                tmp_path: Path) -> None:
    image = build_image([{"big.bin": BIG}])
    layout = write_layout(tmp_path / "layout", image)
    ref = f"{fake.host}/team/big:1"
    assert await client.push_layout(layout, ref) == image.manifest_digest
    assert all(u["length"] and not u["encoding"] for u in fake.uploads)
    assert (await client.resolve(parse_reference(ref)))[1] == image.manifest


async def test_a_streamed_upload_to_a_registry_with_auth(tmp_path: Path) -> None:
    registry = RecordingRegistry(auth="basic", users={"u": "p"})
    registry.uploads = []
    await registry.start()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {registry.host: {"username": "u", "password": "p"}}}))
    reg = RegistryClient(RegistrySettings(), tmp_path / "config.json")
    try:
        ref = parse_reference(f"{registry.host}/team/app:1")
        # the POST meets the challenge first, so the streamed PUT goes out with credentials once
        await reg.push_blob(ref, _digest(b"data"), _one(b"data"), 4)
        assert registry.blobs[_digest(b"data")] == b"data"
    finally:
        await reg.close()
        await registry.close()


def test_a_stream_cannot_be_replayed() -> None:
    body = _once_only(_one(b"x"), "sha256:abc")
    first = body()
    assert isinstance(first, AsyncGenerator)
    with pytest.raises(ImageError, match="asked for credentials after the stream was sent"):
        body()
    asyncio.run(first.aclose())
