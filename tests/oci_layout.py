"""Build small OCI image layouts and docker-save tars in Python, for image tests (no umoci/skopeo)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faasd_py.runtime import oci


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar with the given files (parent dirs included), reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[path]))
    return buf.getvalue()


@dataclass
class BuiltImage:
    manifest: bytes
    config: bytes
    layers: list[bytes]  # as stored (compressed or not)
    diff_ids: list[str]
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def manifest_digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def config_digest(self) -> str:
        return digest_of(self.config)


def build_image(layers: list[dict[str, bytes]], *, compress: bool = True, architecture: str = "amd64",
                variant: str = "", cmd: list[str] | None = None, env: list[str] | None = None,
                docker_types: bool = False) -> BuiltImage:
    raw = [layer_tar(files) for files in layers]
    stored = [gzip.compress(r, mtime=0) if compress else r for r in raw]
    diff_ids = [digest_of(r) for r in raw]
    config_json: dict[str, Any] = {
        "architecture": architecture, "os": "linux",
        "config": {"Cmd": cmd or ["/bin/true"], "Env": env or ["PATH=/bin"], "WorkingDir": "/",
                   "ExposedPorts": {"8080/tcp": {}}, "Labels": {"test": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if variant:
        config_json["variant"] = variant
    config = json.dumps(config_json).encode()
    if docker_types:
        layer_type, config_type, manifest_type = oci.DOCKER_LAYER_GZIP, oci.DOCKER_CONFIG, oci.DOCKER_MANIFEST
    else:
        layer_type = oci.OCI_LAYER_GZIP if compress else oci.OCI_LAYER
        config_type, manifest_type = oci.OCI_CONFIG, oci.OCI_MANIFEST
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": digest_of(b), "size": len(b)} for b in stored],
    }).encode()
    image = BuiltImage(manifest, config, stored, diff_ids)
    image.blobs = {digest_of(b): b for b in (manifest, config, *stored)}
    return image


def index_for(images: dict[str, BuiltImage], *, docker_types: bool = False) -> bytes:
    """A manifest list / OCI index; keys are platforms like linux/arm64/v8."""
    entries = []
    for plat, image in images.items():
        os_, arch, *variant = plat.split("/")
        p = {"os": os_, "architecture": arch} | ({"variant": variant[0]} if variant else {})
        entries.append({"mediaType": oci.DOCKER_MANIFEST if docker_types else oci.OCI_MANIFEST,
                        "digest": image.manifest_digest, "size": len(image.manifest), "platform": p})
    return json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_LIST if docker_types else oci.OCI_INDEX,
                       "manifests": entries}).encode()


def write_layout(root: Path, image: BuiltImage, ref_name: str | None = "latest",
                 annotations: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for digest, data in image.blobs.items():
        (blobs / digest.split(":")[1]).write_bytes(data)
    notes = dict(annotations or {})
    if ref_name:
        notes[oci.ANNOTATION_REF_NAME] = ref_name
    entry = {"mediaType": oci.OCI_MANIFEST, "digest": image.manifest_digest, "size": len(image.manifest)}
    if notes:
        entry["annotations"] = notes
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return root


def tar_directory(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname="./" + path.relative_to(src).as_posix(), recursive=False)
    return dest


def write_docker_save(dest: Path, image: BuiltImage, repo_tags: list[str]) -> Path:
    """A `docker save` style tar: manifest.json, <id>.json config, <dir>/layer.tar (uncompressed)."""
    raw_layers = [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in image.layers]
    config_name = image.config_digest.split(":")[1] + ".json"
    layer_names = [f"{digest_of(r).split(':')[1][:16]}/layer.tar" for r in raw_layers]
    manifest = json.dumps([{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]).encode()
    with tarfile.open(dest, "w") as tar:
        for name, data in [("manifest.json", manifest), (config_name, image.config),
                           *zip(layer_names, raw_layers, strict=True)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest
