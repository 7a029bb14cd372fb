"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/sha256``): write, read,
export as a tar (what ``ctr images import`` and ``faasd-py image import`` read) and unpack to a
rootfs (for tests that run an image without containerd)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from faasd_py.errors import ImageError, ImageNotFound

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def init_layout(layout: Path) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    marker = layout / "oci-layout"
    if not marker.exists():
        marker.write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    if not (layout / "index.json").exists():
        _write_index(layout, [])


def read_index(layout: Path) -> list[dict[str, Any]]:
    try:
        index = json.loads((layout / "index.json").read_text())
    except FileNotFoundError as exc:
        raise ImageNotFound(f"{layout} is not an OCI image layout") from exc
    manifests: list[dict[str, Any]] = index.get("manifests", [])
    return manifests


def add_manifest(layout: Path, descriptor: dict[str, Any]) -> None:
    """Adds a manifest to index.json, replacing any entry with the same ref name."""
    ref = descriptor.get("annotations", {}).get(REF_NAME)
    manifests = [m for m in read_index(layout) if ref is None or m.get("annotations", {}).get(REF_NAME) != ref]
    manifests.append(descriptor)
    manifests.sort(key=lambda m: (m.get("annotations", {}).get(REF_NAME, ""), m["digest"]))
    _write_index(layout, manifests)


def _write_index(layout: Path, manifests: list[dict[str, Any]]) -> None:
    tmp = layout / f".index.json.{os.getpid()}"
    tmp.write_bytes(canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}))
    os.replace(tmp, layout / "index.json")


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def read_blob_json(layout: Path, digest: str) -> Any:
    return json.loads(blob_path(layout, digest).read_bytes())


def find_manifest(layout: Path, ref: str | None = None) -> dict[str, Any]:
    """The manifest descriptor for ``ref`` (a ref-name annotation), or the only one there is."""
    manifests = read_index(layout)
    if ref is None:
        if len(manifests) != 1:
            raise ImageNotFound(f"{layout} holds {len(manifests)} images: name one")
        return manifests[0]
    for m in manifests:
        if m.get("annotations", {}).get(REF_NAME) == ref:
            return m
    raise ImageNotFound(f"image {ref!r} not in {layout}")


def image_config(layout: Path, ref: str | None = None) -> dict[str, Any]:
    manifest = read_blob_json(layout, find_manifest(layout, ref)["digest"])
    config: dict[str, Any] = read_blob_json(layout, manifest["config"]["digest"])
    return config


def export_tar(layout: Path, tar_path: Path) -> Path:
    """The layout as one reproducible tar (sorted, mtime 0, root-owned). Blobs are stored as-is:
    layers are already compressed."""
    files = sorted(p for p in layout.rglob("*") if p.is_file() and not p.name.startswith("."))
    tmp = tar_path.with_name(f".{tar_path.name}.{os.getpid()}")
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(p.parent.relative_to(layout)) for p in files} - {"."},
                      key=lambda d: d.split("/"))
        expanded: set[str] = set()
        for d in dirs:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                expanded.add("/".join(parts[:i]))
        for d in sorted(expanded, key=lambda d: d.split("/")):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(ti)
        for p in files:
            ti = tarfile.TarInfo(str(p.relative_to(layout)))
            ti.size, ti.mode, ti.mtime = p.stat().st_size, 0o644, 0
            with p.open("rb") as f:
                tar.addfile(ti, f)
    os.replace(tmp, tar_path)
    return tar_path


def verify_layout(layout: Path) -> None:
    """Every blob reachable from index.json exists and matches its digest and size."""
    for m in read_index(layout):
        manifest = _check_blob(layout, m)
        _check_blob(layout, manifest["config"])
        for layer in manifest["layers"]:
            _check_blob(layout, layer, parse=False)


def _check_blob(layout: Path, desc: dict[str, Any], parse: bool = True) -> Any:
    path = blob_path(layout, desc["digest"])
    if not path.exists():
        raise ImageError(f"missing blob {desc['digest']}")
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    if "sha256:" + h.hexdigest() != desc["digest"] or size != desc["size"]:
        raise ImageError(f"blob {desc['digest']} does not match its descriptor")
    return json.loads(path.read_bytes()) if parse else None


def unpack(layout: Path, dest: Path, ref: str | None = None) -> dict[str, Any]:
    """Applies the image's layers to ``dest`` (owners kept when we are root) and returns the
    image config. Whiteouts are honoured; paths escaping ``dest`` are refused."""
    manifest = read_blob_json(layout, find_manifest(layout, ref)["digest"])
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for layer in manifest["layers"]:
        path = blob_path(layout, layer["digest"])
        opener = gzip.open if layer["mediaType"].endswith("+gzip") else open
        with opener(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                _apply(tar, member, root)
    config: dict[str, Any] = read_blob_json(layout, manifest["config"]["digest"])
    return config


def _apply(tar: tarfile.TarFile, m: tarfile.TarInfo, root: Path) -> None:
    name = m.name.lstrip("/")
    if name in ("", ".") or ".." in Path(name).parts:
        return
    target = root / name
    base = target.name
    if base.startswith(".wh."):
        if base == ".wh..wh..opq":
            for child in target.parent.iterdir():
                _remove(child)
        else:
            _remove(target.parent / base[4:])
        return
    if not target.parent.resolve().is_relative_to(root):
        raise ImageError(f"layer entry {m.name} escapes the rootfs")
    if m.isdir():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            _remove(target)
        target.mkdir(exist_ok=True)
    else:
        if target.is_symlink() or target.exists():
            _remove(target)
        if m.issym():
            os.symlink(m.linkname, target)
        elif m.islnk():
            os.link(root / m.linkname.lstrip("/"), target)
        elif m.isfile():
            src = tar.extractfile(m)
            assert src is not None
            with target.open("wb") as out:
                shutil.copyfileobj(src, out)
        else:
            return  # devices and fifos have no place in function images
    if os.geteuid() == 0:
        os.lchown(target, m.uid, m.gid)
    if not m.issym():
        os.chmod(target, m.mode)
        os.utime(target, (m.mtime, m.mtime))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
