"""RegistryClient against a fake registry on loopback: auth flows, mirrors, platforms, push."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd_py.config import RegistrySettings
from faasd_py.errors import ImageError, ImageNotFound, RegistryAuthError
from faasd_py.runtime import oci
from faasd_py.runtime.reference import parse_reference
from faasd_py.runtime.registry import Endpoint, RegistryClient, endpoints, is_insecure, is_loopback
from faasd_py.runtime.registry_auth import Credentials, auth_key, load_docker_config, parse_challenge
from tests.fake_registry import FakeRegistry
from tests.oci_layout import BuiltImage, build_image, digest_of, index_for, write_layout
from tests.unit.test_registry_credhelpers import calls, write_helper

# --- pure rules ---------------------------------------------------------------------------------


def test_endpoints_docker_hub_mirrors_and_schemes() -> None:
    settings = RegistrySettings(mirrors={"docker.io": ["http://10.0.0.5:5000", "mirror.example.com/v2/"]},
                                insecure=["plain.example.com"])
    assert endpoints("docker.io", settings) == [
        Endpoint("http://10.0.0.5:5000", "10.0.0.5:5000", mirror=True),
        Endpoint("https://mirror.example.com", "mirror.example.com", mirror=True),
        Endpoint("https://registry-1.docker.io", "registry-1.docker.io"),
    ]
    assert endpoints("docker.io", settings, mirrors=False) == [
        Endpoint("https://registry-1.docker.io", "registry-1.docker.io")]
    assert endpoints("ghcr.io", settings)[0].url == "https://ghcr.io"
    assert endpoints("127.0.0.1:5000", settings)[0].url == "http://127.0.0.1:5000"
    assert endpoints("localhost:5000", settings)[0].url == "http://localhost:5000"
    assert endpoints("plain.example.com:5000", settings)[0].url == "http://plain.example.com:5000"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.4.5:8080", True), ("localhost", True), ("localhost:5000", True),
    ("[::1]:5000", True), ("::1", True), ("10.0.0.1:5000", False), ("registry-1.docker.io", False),
    ("localhost.example.com", False), ("[fe80::1]:5000", False),
])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_insecure_needs_listing() -> None:
    settings = RegistrySettings(insecure=["reg.lan:5000", "other.lan"])
    assert is_insecure("reg.lan:5000", settings) and is_insecure("other.lan:443", settings)
    assert not is_insecure("reg.lan:6000", settings) and not is_insecure("ghcr.io", settings)


def test_docker_config_forms() -> None:
    body = json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hub:pass").decode()},
        "ghcr.io": {"username": "gh", "password": "pat"},
        "http://reg.lan:5000": {"identitytoken": "refresh-me"},
        "empty.io": {},
    }}).encode()
    creds = load_docker_config(body, "config.json").auths
    assert creds == {"docker.io": Credentials("hubuser", "hub:pass"), "ghcr.io": Credentials("gh", "pat"),
                     "reg.lan:5000": Credentials(identity_token="refresh-me")}
    assert auth_key("registry-1.docker.io") == "docker.io" and auth_key("https://GHCR.io/v2/") == "ghcr.io"
    with pytest.raises(RegistryAuthError, match="not base64"):
        load_docker_config(b'{"auths": {"x": {"auth": "!!"}}}', "c.json")


def test_challenge_parsing() -> None:
    c = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                        'scope="repository:library/alpine:pull,push"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull,push"}
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": "Registry Realm"}
    assert parse_challenge("") is None and parse_challenge("Negotiate") is None


# --- against the fake registry --------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeRegistry]:
    registry = await FakeRegistry().start()
    yield registry
    await registry.close()


def publish(fake: FakeRegistry, repo: str, tag: str, image: BuiltImage) -> str:
    for data in (image.config, *image.layers):
        fake.put_blob(data)
    return fake.put_manifest(repo, tag, oci.OCI_MANIFEST, image.manifest)


def client(tmp_path: Path, auths: dict[str, dict[str, str]] | None = None, **settings: object) -> RegistryClient:
    config = tmp_path / "config.json"
    if auths is not None:
        config.write_text(json.dumps({"auths": auths}))
    return RegistryClient(RegistrySettings(**settings), config)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_anonymous_pull_sends_oci_accept_and_verifies(fake: FakeRegistry, tmp_path: Path) -> None:
    image = build_image([{"a.txt": b"a"}])
    digest = publish(fake, "team/app", "1.0", image)
    reg = client(tmp_path)
    try:
        ref = parse_reference(f"{fake.host}/team/app:1.0")
        desc, body = await reg.resolve(ref)
        assert (desc.media_type, desc.digest, body) == (oci.OCI_MANIFEST, digest, image.manifest)
        assert (await reg.head(ref)) == oci.Descriptor(oci.OCI_MANIFEST, digest, len(image.manifest))
        layer = image.layers[0]
        assert await reg.fetch_blob_bytes(ref, digest_of(layer), len(layer)) == layer
        pinned = parse_reference(f"{fake.host}/team/app@{digest}")
        assert (await reg.resolve(pinned))[0].digest == digest
    finally:
        await reg.close()


async def test_missing_tag_and_repository_are_image_not_found(fake: FakeRegistry, tmp_path: Path) -> None:
    publish(fake, "team/app", "1.0", build_image([{"a": b"a"}]))
    reg = client(tmp_path)
    try:
        missing = rf"image {fake.host}/team/app:2.0 not found on registry http://{fake.host}"
        with pytest.raises(ImageNotFound, match=missing) as exc:
            await reg.resolve(parse_reference(f"{fake.host}/team/app:2.0"))
        assert exc.value.status == 400
        with pytest.raises(ImageNotFound, match="nothere/x:latest not found"):
            await reg.head(parse_reference(f"{fake.host}/nothere/x"))
    finally:
        await reg.close()


async def test_corrupt_blob_and_wrong_pinned_digest_fail(fake: FakeRegistry, tmp_path: Path) -> None:
    image = build_image([{"a": b"a"}])
    publish(fake, "team/app", "1", image)
    fake.corrupt.add(digest_of(image.layers[0]))
    reg = client(tmp_path)
    try:
        ref = parse_reference(f"{fake.host}/team/app:1")
        with pytest.raises(ImageError, match="does not match its digest"):
            await reg.fetch_blob_bytes(ref, digest_of(image.layers[0]))
        other = "sha256:" + "0" * 64
        fake.manifests[("team/app", other)] = (oci.OCI_MANIFEST, image.manifest)
        with pytest.raises(ImageError, match="does not match its digest"):
            await reg.resolve(parse_reference(f"{fake.host}/team/app@{other}"))
    finally:
        await reg.close()


async def test_token_flow_caches_the_token_per_scope(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth = "bearer"
    image = build_image([{"a": b"a"}])
    publish(fake, "team/app", "1", image)
    reg = client(tmp_path)
    try:
        ref = parse_reference(f"{fake.host}/team/app:1")
        await reg.resolve(ref)
        await reg.resolve(ref)
        await reg.fetch_blob_bytes(ref, image.config_digest)
        assert fake.token_requests == [{"method": "GET", "scopes": ["repository:team/app:pull"], "user": None,
                                        "service": "fake"}]
        # a first request without a token, then three with it
        assert [m for m, _ in fake.requests].count("GET") == 4
    finally:
        await reg.close()


async def test_token_with_docker_config_credentials(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth, fake.users, fake.private = "bearer", {"alice": "s3cret"}, {"team/private"}
    publish(fake, "team/private", "1", build_image([{"a": b"a"}]))
    auth = base64.b64encode(b"alice:s3cret").decode()
    reg = client(tmp_path, {fake.host: {"auth": auth}})
    try:
        await reg.resolve(parse_reference(f"{fake.host}/team/private:1"))
        assert fake.token_requests[0]["user"] == "alice"
    finally:
        await reg.close()


async def test_identity_token_uses_the_refresh_grant(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth, fake.refresh_tokens, fake.private = "bearer", {"rt-123": "bob"}, {"team/private"}
    publish(fake, "team/private", "1", build_image([{"a": b"a"}]))
    reg = client(tmp_path, {f"http://{fake.host}": {"identitytoken": "rt-123"}})
    try:
        await reg.resolve(parse_reference(f"{fake.host}/team/private:1"))
        assert fake.token_requests == [{"method": "POST", "scopes": ["repository:team/private:pull"],
                                        "grant": "refresh_token"}]
    finally:
        await reg.close()


async def test_wrong_password_is_an_auth_error(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth, fake.users = "bearer", {"alice": "s3cret"}
    publish(fake, "team/app", "1", build_image([{"a": b"a"}]))
    reg = client(tmp_path, {fake.host: {"username": "alice", "password": "wrong"}})
    try:
        with pytest.raises(RegistryAuthError, match="rejected the configured credentials") as exc:
            await reg.resolve(parse_reference(f"{fake.host}/team/app:1"))
        assert exc.value.status == 400
    finally:
        await reg.close()


async def test_anonymous_denied_says_missing_or_private(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth, fake.private = "bearer", {"team/private"}
    publish(fake, "team/private", "1", build_image([{"a": b"a"}]))
    reg = client(tmp_path)
    try:
        with pytest.raises(ImageNotFound, match="does not exist or needs credentials"):
            await reg.resolve(parse_reference(f"{fake.host}/team/private:1"))
    finally:
        await reg.close()


async def test_basic_auth(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth, fake.users = "basic", {"carol": "pw"}
    image = build_image([{"a": b"a"}])
    publish(fake, "team/app", "1", image)
    ref = parse_reference(f"{fake.host}/team/app:1")
    reg = client(tmp_path, {fake.host: {"username": "carol", "password": "pw"}})
    try:
        assert (await reg.resolve(ref))[1] == image.manifest
        assert await reg.fetch_blob_bytes(ref, image.config_digest) == image.config
        assert fake.token_requests == []
    finally:
        await reg.close()
    anonymous = client(tmp_path / "none")
    try:
        with pytest.raises(RegistryAuthError, match="needs a username and password"):
            await anonymous.resolve(ref)
    finally:
        await anonymous.close()
    wrong = client(tmp_path, {fake.host: {"username": "carol", "password": "nope"}})
    try:
        with pytest.raises(RegistryAuthError, match="denied for the configured credentials"):
            await wrong.resolve(ref)
    finally:
        await wrong.close()


async def test_credentials_from_a_helper_authenticate_the_pull(fake: FakeRegistry, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """credHelpers for this host (credsStore names a helper that is not installed: must not be used)."""
    fake.auth, fake.users, fake.private = "bearer", {"alice": "s3cret"}, {"team/private"}
    image = build_image([{"a": b"a"}])
    publish(fake, "team/private", "1", image)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    helper = write_helper(bindir, "fake", {fake.host: {"ServerURL": fake.host, "Username": "alice",
                                                       "Secret": "s3cret"}})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "absent", "credHelpers": {fake.host: "fake"}, "auths": {}}))
    reg = RegistryClient(RegistrySettings(), config)
    try:
        ref = parse_reference(f"{fake.host}/team/private:1")
        assert (await reg.resolve(ref))[1] == image.manifest
        assert await reg.fetch_blob_bytes(ref, image.config_digest) == image.config
        assert [r["user"] for r in fake.token_requests] == ["alice"]
        assert calls(helper) == [f"[{fake.host}]"]
    finally:
        await reg.close()


async def test_basic_auth_from_a_helper_runs_it_once_per_pull(fake: FakeRegistry, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake.auth, fake.users = "basic", {"carol": "pw"}
    image = build_image([{"a": b"a"}, {"b": b"b"}])
    publish(fake, "team/app", "1", image)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    helper = write_helper(bindir, "fake", {fake.host: {"Username": "carol", "Secret": "pw"}})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "fake"}))
    reg = RegistryClient(RegistrySettings(), config)
    try:
        ref = parse_reference(f"{fake.host}/team/app:1")
        await reg.resolve(ref)
        blobs = [image.config_digest, *map(digest_of, image.layers)]
        assert await asyncio.gather(*(reg.fetch_blob_bytes(ref, d) for d in blobs)) == [image.config, *image.layers]
        assert len(calls(helper)) == 1  # every request sends basic auth, the answer is shared
    finally:
        await reg.close()
    write_helper(bindir, "fake", {fake.host: {"Username": "carol", "Secret": "wrong"}})
    reg = RegistryClient(RegistrySettings(), config)
    try:
        with pytest.raises(RegistryAuthError, match="denied for the configured credentials"):
            await reg.resolve(parse_reference(f"{fake.host}/team/app:1"))
    finally:
        await reg.close()


async def test_mirrors_in_order_then_upstream(fake: FakeRegistry, tmp_path: Path) -> None:
    image = build_image([{"m": b"mirror me"}])
    publish(fake, "team/app", "1", image)
    empty_mirror = await FakeRegistry().start()
    full_mirror = await FakeRegistry().start()
    publish(full_mirror, "team/app", "1", image)
    dead = f"http://127.0.0.1:{closed_port()}"
    try:
        ref = parse_reference(f"{fake.host}/team/app:1")
        reg = client(tmp_path, mirrors={fake.host: [dead, f"http://{empty_mirror.host}"]})
        try:
            assert (await reg.resolve(ref))[1] == image.manifest
            assert await reg.fetch_blob_bytes(ref, digest_of(image.layers[0])) == image.layers[0]
            assert any("/manifests/1" in p for _, p in empty_mirror.requests)
            assert any("/manifests/1" in p for _, p in fake.requests)
        finally:
            await reg.close()
        # a mirror that has the image serves everything: upstream is not asked at all
        upstream_before = len(fake.requests)
        reg = client(tmp_path, mirrors={fake.host: [dead, f"http://{full_mirror.host}"]})
        try:
            await reg.resolve(ref)
            await reg.fetch_blob_bytes(ref, digest_of(image.layers[0]))
            assert len(fake.requests) == upstream_before
            assert len(full_mirror.requests) == 2
        finally:
            await reg.close()
    finally:
        await empty_mirror.close()
        await full_mirror.close()


async def test_unreachable_registry_error_names_every_endpoint(tmp_path: Path) -> None:
    upstream, mirror = f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"
    reg = client(tmp_path, mirrors={upstream: [f"http://{mirror}"]})
    try:
        with pytest.raises(ImageError) as exc:
            await reg.resolve(parse_reference(f"{upstream}/team/app:1"))
        assert f"mirror http://{mirror}" in exc.value.message and f"registry http://{upstream}" in exc.value.message
        assert "cannot connect" in exc.value.message
        assert type(exc.value) is ImageError
    finally:
        await reg.close()


async def test_manifest_list_platform_selection(fake: FakeRegistry, tmp_path: Path) -> None:
    images = {"linux/amd64": build_image([{"arch": b"amd64"}]),
              "linux/arm64/v8": build_image([{"arch": b"arm64"}], architecture="arm64", variant="v8"),
              "linux/arm/v7": build_image([{"arch": b"armv7"}], architecture="arm", variant="v7")}
    for plat, image in images.items():
        publish(fake, "team/multi", plat.replace("/", "-"), image)
    index = index_for(images, docker_types=True)
    fake.put_manifest("team/multi", "latest", oci.DOCKER_LIST, index)
    reg = client(tmp_path)
    try:
        ref = parse_reference(f"{fake.host}/team/multi")
        desc, body = await reg.resolve(ref)
        assert desc.media_type == oci.DOCKER_LIST
        entries = oci.parse_index(body, "index")
        for plat, image in images.items():
            chosen = oci.select_manifest(entries, oci.Platform.parse(plat), "x")
            assert chosen.digest == image.manifest_digest
        chosen = oci.select_manifest(entries, oci.Platform.parse("linux/arm64"), "x")
        child = await reg.resolve(parse_reference(f"{fake.host}/team/multi@{chosen.digest}"))
        assert child[1] == images["linux/arm64/v8"].manifest
    finally:
        await reg.close()


async def test_push_layout_then_pull_back(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth, fake.users, fake.anonymous = "bearer", {"dave": "pw"}, False
    image = build_image([{"etc/one": b"1"}, {"etc/two": b"2"}])
    layout = write_layout(tmp_path / "layout", image)
    reg = client(tmp_path, {fake.host: {"username": "dave", "password": "pw"}})
    try:
        ref = parse_reference(f"{fake.host}/team/pushed:v1")
        assert not await reg.blob_exists(ref, image.config_digest)
        assert await reg.push_layout(layout, str(ref)) == image.manifest_digest
        for digest in (image.config_digest, *map(digest_of, image.layers)):
            assert await reg.blob_exists(ref, digest)
        assert fake.manifests[("team/pushed", "v1")] == (oci.OCI_MANIFEST, image.manifest)
        assert fake.token_requests[0]["scopes"] == ["repository:team/pushed:pull,push"]
        # pushing again uploads no blob
        uploads = sum(1 for m, _ in fake.requests if m == "POST")
        await reg.push_layout(layout, str(ref))
        assert sum(1 for m, _ in fake.requests if m == "POST") == uploads
        assert (await reg.resolve(ref))[1] == image.manifest
    finally:
        await reg.close()


async def test_push_index_layout(fake: FakeRegistry, tmp_path: Path) -> None:
    amd, arm = build_image([{"a": b"amd"}]), build_image([{"a": b"arm"}], architecture="arm64")
    layout = write_layout(tmp_path / "layout", amd, ref_name=None)
    write_layout(tmp_path / "layout", arm, ref_name=None)  # adds arm's blobs; index.json rewritten below
    index = index_for({"linux/amd64": amd, "linux/arm64": arm})
    (layout / "blobs" / "sha256" / digest_of(index).split(":")[1]).write_bytes(index)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": oci.OCI_INDEX, "digest": digest_of(index), "size": len(index)}]}))
    reg = client(tmp_path)
    try:
        assert await reg.push_layout(layout, f"{fake.host}/team/multi:2") == digest_of(index)
        assert fake.manifests[("team/multi", "2")] == (oci.OCI_INDEX, index)
        assert ("team/multi", arm.manifest_digest) in fake.manifests
    finally:
        await reg.close()


async def test_push_without_credentials_is_an_auth_error(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth = "bearer"
    reg = client(tmp_path)
    try:
        with pytest.raises(RegistryAuthError, match="push to team/app denied for anonymous access"):
            await reg.push_blob(parse_reference(f"{fake.host}/team/app:1"), digest_of(b"x"), b"x")
    finally:
        await reg.close()
