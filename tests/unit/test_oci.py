from __future__ import annotations

import hashlib
import json

import pytest

from faasd_py.errors import ImageError
from faasd_py.runtime import oci
from faasd_py.runtime.oci import Descriptor, Platform


def _desc(plat: str, n: int = 0) -> Descriptor:
    return Descriptor(oci.OCI_MANIFEST, f"sha256:{n:064x}", 10, platform=Platform.parse(plat))


def test_chain_ids_follow_the_spec() -> None:
    a, b, c = (f"sha256:{i:064x}" for i in (1, 2, 3))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert oci.chain_ids([a, b, c]) == [a, ab, abc]
    assert oci.chain_ids([]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("linux/amd64", Platform("linux", "amd64")), ("linux/x86_64", Platform("linux", "amd64")),
     ("linux/aarch64", Platform("linux", "arm64", "v8")), ("linux/arm64", Platform("linux", "arm64", "v8")),
     ("linux/arm", Platform("linux", "arm", "v7")), ("linux/arm/6", Platform("linux", "arm", "v6")),
     ("arm64", Platform("linux", "arm64", "v8"))],
)
def test_platform_normalisation(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


def test_host_platform_is_linux() -> None:
    host = oci.host_platform()
    assert host.os == "linux" and host.architecture in ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")


def test_select_manifest_picks_the_platform() -> None:
    entries = [_desc("linux/amd64", 1), _desc("linux/arm64/v8", 2), _desc("linux/arm/v6", 3),
               _desc("linux/arm/v7", 4), Descriptor(oci.OCI_MANIFEST, f"sha256:{5:064x}", 1,
                                                    platform=Platform("unknown", "unknown"))]
    assert oci.select_manifest(entries, Platform.parse("linux/amd64"), "x").digest.endswith("1")
    assert oci.select_manifest(entries, Platform.parse("linux/arm64"), "x").digest.endswith("2")
    assert oci.select_manifest(entries, Platform.parse("linux/arm/v7"), "x").digest.endswith("4")
    # an armv7 host runs v6 images when there is no v7 one, not the other way round
    assert oci.select_manifest(entries[:3], Platform.parse("linux/arm/v7"), "x").digest.endswith("3")
    with pytest.raises(ImageError, match=r"no image for linux/arm/v5 \(offered: linux/amd64, linux/arm/v6"):
        oci.select_manifest(entries, Platform.parse("linux/arm/v5"), "x")
    with pytest.raises(ImageError, match="no image for linux/s390x"):
        oci.select_manifest(entries, Platform.parse("linux/s390x"), "x")


def test_config_platform_must_match() -> None:
    oci.check_config_platform({"os": "linux", "architecture": "amd64"}, Platform.parse("linux/amd64"), "img")
    oci.check_config_platform({}, Platform.parse("linux/amd64"), "img")  # unknown: allowed
    with pytest.raises(ImageError, match="img: image is for linux/arm64/v8, this host runs linux/amd64"):
        oci.check_config_platform({"os": "linux", "architecture": "arm64"}, Platform.parse("linux/amd64"), "img")


def test_media_type_detection() -> None:
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert oci.detect_media_type(index, "application/json", "x") == oci.OCI_INDEX
    docker = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST, "config": {}}).encode()
    assert oci.detect_media_type(docker, oci.OCI_MANIFEST, "x") == oci.DOCKER_MANIFEST
    assert oci.detect_media_type(b'{"config": {}}', oci.OCI_MANIFEST + "; charset=utf-8", "x") == oci.OCI_MANIFEST
    with pytest.raises(ImageError, match="schema 1"):
        oci.detect_media_type(b'{"schemaVersion": 1, "fsLayers": []}', "", "x")
    with pytest.raises(ImageError, match="not valid JSON"):
        oci.detect_media_type(b"<html>", "text/html", "x")


def test_manifest_parsing_checks_layers_and_diff_ids() -> None:
    layer = {"mediaType": oci.OCI_LAYER_GZIP, "digest": "sha256:" + "1" * 64, "size": 5}
    body = json.dumps({"config": {"mediaType": oci.OCI_CONFIG, "digest": "sha256:" + "2" * 64, "size": 3},
                       "layers": [layer]}).encode()
    manifest = oci.parse_manifest(body, "x")
    assert manifest.layers[0].size == 5 and manifest.config.media_type == oci.OCI_CONFIG
    with pytest.raises(ImageError, match="config lists 0 diff_ids for 1 layers"):
        oci.diff_ids({"rootfs": {"diff_ids": []}}, 1, "x")
    bad = json.dumps({"config": manifest.config.to_json(), "layers": [layer | {"mediaType": "text/plain"}]})
    with pytest.raises(ImageError, match="unsupported layer type"):
        oci.parse_manifest(bad.encode(), "x")
    with pytest.raises(ImageError, match="does not match its digest"):
        oci.verify_digest(b"abc", "sha256:" + "0" * 64, "blob")


def test_image_config() -> None:
    config = oci.image_config({"config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": None, "Env": ["A=1"],
                                          "User": "1000", "ExposedPorts": {"8080/tcp": {}}, "Labels": None}})
    assert config.entrypoint == ("/bin/sh", "-c") and config.cmd == () and config.env == ("A=1",)
    assert config.user == "1000" and config.exposed_ports == ("8080/tcp",) and config.labels == {}
