"""open_archive: OCI layouts (directory, tar, gzipped tar) and docker-save tars, without containerd."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from faasd_py.errors import ImageError, InvalidRequest
from faasd_py.runtime import oci
from faasd_py.runtime.archive import ImageArchive, open_archive
from tests.oci_layout import build_image, digest_of, tar_directory, write_docker_save, write_layout


async def _all_blobs(archive: ImageArchive, target: oci.Descriptor) -> dict[str, bytes]:
    manifest = oci.parse_manifest(await archive.read(target), "m")
    out = {}
    for desc in (manifest.config, *manifest.layers):
        out[desc.digest] = b"".join([c async for c in archive.stream(desc)])
    return out


@pytest.mark.parametrize("form", ["dir", "tar", "tar.gz"])
async def test_oci_layout_forms(tmp_path: Path, form: str) -> None:
    image = build_image([{"a.txt": b"a"}, {"b.txt": b"b"}])
    layout = write_layout(tmp_path / "layout", image, ref_name="1.0")
    path = layout
    if form != "dir":
        path = tar_directory(layout, tmp_path / "image.tar")
    if form == "tar.gz":
        path = tmp_path / "image.tar.gz"
        path.write_bytes(gzip.compress((tmp_path / "image.tar").read_bytes()))
    archive = open_archive(path, "localhost/app")
    try:
        [(name, target)] = archive.images
        assert name == "localhost/app:1.0"
        assert target == oci.Descriptor(oci.OCI_MANIFEST, image.manifest_digest, len(image.manifest),
                                        {oci.ANNOTATION_REF_NAME: "1.0"})
        blobs = await _all_blobs(archive, target)
        assert blobs == {d: b for d, b in image.blobs.items() if d != image.manifest_digest}
    finally:
        archive.close()


def test_oci_names(tmp_path: Path) -> None:
    image = build_image([{"a": b"a"}])
    full = write_layout(tmp_path / "full", image, ref_name="ghcr.io/team/app:2")
    assert [n for n, _ in open_archive(full).images] == ["ghcr.io/team/app:2"]
    containerd = write_layout(tmp_path / "ctr", image, ref_name="latest",
                              annotations={oci.ANNOTATION_IMAGE_NAME: "docker.io/library/app:3"})
    assert [n for n, _ in open_archive(containerd).images] == ["docker.io/library/app:3"]
    unnamed = write_layout(tmp_path / "unnamed", image, ref_name=None)
    assert [n for n, _ in open_archive(unnamed, "localhost/x").images] == ["localhost/x:latest"]
    with pytest.raises(InvalidRequest, match="has no name; give a base name"):
        open_archive(unnamed)
    with pytest.raises(InvalidRequest, match="invalid image reference"):
        open_archive(unnamed, "Bad Name")


async def test_docker_save_with_shared_layer_symlink(tmp_path: Path) -> None:
    image = build_image([{"a": b"a"}], compress=False)
    path = write_docker_save(tmp_path / "saved.tar", image, ["app:1"])
    # legacy docker save links a repeated layer to its first copy
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]  # type: ignore[union-attr]
    manifest = json.loads(next(data for m, data in members if m.name == "manifest.json"))
    first = manifest[0]["Layers"][0]
    manifest[0]["Layers"].append("dup/layer.tar")
    link = tarfile.TarInfo("dup/layer.tar")
    link.type, link.linkname = tarfile.SYMTYPE, f"../{first}"
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            if m.name == "manifest.json":
                data = json.dumps(manifest).encode()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
        tar.addfile(link)
    archive = open_archive(path)
    try:
        [(name, target)] = archive.images
        assert name == "docker.io/library/app:1"
        body = await archive.read(target)
        layers = oci.parse_manifest(body, "m").layers
        assert [layer.digest for layer in layers] == [digest_of(image.layers[0])] * 2
        assert layers[0].media_type == oci.OCI_LAYER
        assert (await _all_blobs(archive, target))[digest_of(image.layers[0])] == image.layers[0]
    finally:
        archive.close()


async def test_corrupt_blob_is_detected(tmp_path: Path) -> None:
    image = build_image([{"a": b"a"}])
    layout = write_layout(tmp_path / "layout", image)
    layer = layout / "blobs" / "sha256" / digest_of(image.layers[0]).split(":")[1]
    layer.write_bytes(bytes([layer.read_bytes()[0] ^ 1]) + layer.read_bytes()[1:])
    archive = open_archive(layout, "localhost/x")
    desc = oci.Descriptor(oci.OCI_LAYER_GZIP, digest_of(image.layers[0]), len(image.layers[0]))
    with pytest.raises(ImageError, match="does not match its digest"):
        _ = [c async for c in archive.stream(desc)]


def test_unusable_archives(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read image archive"):
        open_archive(tmp_path / "missing.tar")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidRequest, match="cannot read image archive"):
        open_archive(junk)
    other = tmp_path / "other"
    other.mkdir()
    (other / "hello.txt").write_text("hi")
    with pytest.raises(InvalidRequest, match="neither an OCI image layout"):
        open_archive(tar_directory(other, tmp_path / "other.tar"))
