"""Image archives as a blob source: OCI image layouts (tar or directory) and ``docker save`` tars.

A tar is indexed once (member offsets) and blobs are then read straight from the file, so an
import needs no extraction and several layers can be read at once. A gzip-compressed tar is
inflated to a temporary file first. For ``docker save`` tars an OCI manifest is synthesised in
memory, so the rest of the import is the same as for a pull.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from faasd_py.errors import ImageError, InvalidRequest
from faasd_py.runtime import oci
from faasd_py.runtime.oci import Descriptor
from faasd_py.runtime.reference import Reference, is_tag, parse_reference

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class _Member:
    path: Path  # the file holding the bytes (the tar itself, or a file of a layout directory)
    offset: int
    size: int


class ImageArchive:
    """The images an archive names and access to its blobs. Build it with :func:`open_archive`."""

    def __init__(self, label: str, members: dict[str, _Member], temp: tempfile.TemporaryDirectory[str] | None) -> None:
        self.label = label
        self.images: list[tuple[str, Descriptor]] = []
        self._members = members
        self._temp = temp
        self._virtual: dict[str, bytes] = {}  # synthesised blobs (docker save manifests)
        self._aliases: dict[str, str] = {}  # digest -> member name, for docker save files

    def close(self) -> None:
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None

    async def read(self, desc: Descriptor) -> bytes:
        data = await asyncio.to_thread(self._read_sync, desc.digest)
        oci.verify_digest(data, desc.digest, f"{self.label}: blob {desc.digest}")
        return data

    async def stream(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        if desc.digest in self._virtual:
            yield self._virtual[desc.digest]
            return
        member = self._locate(desc.digest)
        handle = await asyncio.to_thread(member.path.open, "rb")
        hasher = hashlib.new(desc.digest.partition(":")[0])
        try:
            await asyncio.to_thread(handle.seek, member.offset)
            remaining = member.size
            while remaining:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK, remaining))
                if not chunk:
                    raise ImageError(f"{self.label}: blob {desc.digest} is truncated")
                remaining -= len(chunk)
                hasher.update(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)
        if f"{desc.digest.partition(':')[0]}:{hasher.hexdigest()}" != desc.digest:
            raise ImageError(f"{self.label}: blob {desc.digest} does not match its digest")

    # --- blocking helpers (run in a worker thread) -----------------------------------------

    def _locate(self, digest: str) -> _Member:
        name = self._aliases.get(digest)
        if name is None:
            algorithm, _, hex_part = digest.partition(":")
            name = f"blobs/{algorithm}/{hex_part}"
        member = self._members.get(name)
        if member is None:
            raise ImageError(f"{self.label}: blob {digest} is missing from the archive")
        return member

    def _read_member(self, name: str) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise InvalidRequest(f"{self.label}: {name} is missing from the archive")
        return _read_range(member)

    def _read_sync(self, digest: str) -> bytes:
        if digest in self._virtual:
            return self._virtual[digest]
        return _read_range(self._locate(digest))

    def _load_oci(self, base_name: str | None) -> None:
        body = self._read_member("index.json")
        for desc in oci.parse_index(body, f"{self.label}: index.json"):
            if desc.media_type not in oci.INDEX_TYPES | oci.MANIFEST_TYPES:
                kind = oci.detect_media_type(self._read_sync(desc.digest), desc.media_type, f"{self.label}: "
                                             f"manifest {desc.digest}")
                desc = Descriptor(kind, desc.digest, desc.size, desc.annotations, desc.platform)
            for name in _oci_names(desc, base_name, self.label):
                self.images.append((name, desc))

    def _load_docker(self, base_name: str | None) -> None:
        entries = json.loads(self._read_member("manifest.json"))
        if not isinstance(entries, list):
            raise InvalidRequest(f"{self.label}: manifest.json is not a list")
        for entry in entries:
            config = self._docker_blob(str(entry["Config"]), oci.OCI_CONFIG)
            layers = [self._docker_blob(str(p), oci.OCI_LAYER) for p in entry.get("Layers") or []]
            body = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config.to_json(),
                               "layers": [layer.to_json() for layer in layers]}).encode()
            target = Descriptor(oci.OCI_MANIFEST, oci.sha256_digest(body), len(body))
            self._virtual[target.digest] = body
            tags = [str(parse_reference(t)) for t in entry.get("RepoTags") or []]
            if not tags:
                tags = [_require_base(base_name, self.label, target.digest)]
            self.images.extend((tag, target) for tag in tags)

    def _docker_blob(self, name: str, media_type: str) -> Descriptor:
        name = _normalise(name)
        member = self._members.get(name)
        if member is None:
            raise InvalidRequest(f"{self.label}: {name} (named in manifest.json) is missing from the archive")
        hasher = hashlib.sha256()
        with member.path.open("rb") as f:
            f.seek(member.offset)
            head = f.read(min(member.size, CHUNK))
            hasher.update(head)
            remaining = member.size - len(head)
            while remaining > 0:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    raise InvalidRequest(f"{self.label}: {name} is truncated")
                hasher.update(chunk)
                remaining -= len(chunk)
        if media_type == oci.OCI_LAYER and head[:2] == b"\x1f\x8b":
            media_type = oci.OCI_LAYER_GZIP
        digest = "sha256:" + hasher.hexdigest()
        self._aliases[digest] = name
        return Descriptor(media_type, digest, member.size)


def open_archive(path: Path, base_name: str | None = None) -> ImageArchive:
    """Index an archive (blocking: call it in a worker thread). Raises InvalidRequest if unusable."""
    temp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if path.is_dir():
            members = _index_directory(path)
        else:
            tar_path = path
            with path.open("rb") as f:
                compressed = f.read(2) == b"\x1f\x8b"
            if compressed:
                temp = tempfile.TemporaryDirectory(prefix="faasd-py-import-")
                tar_path = Path(temp.name) / "archive.tar"
                with gzip.open(path, "rb") as src, tar_path.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            members = _index_tar(tar_path)
        archive = ImageArchive(str(path), members, temp)
        if "index.json" in members:
            archive._load_oci(base_name)
        elif "manifest.json" in members:
            archive._load_docker(base_name)
        else:
            raise InvalidRequest(f"{path} is neither an OCI image layout (no index.json) nor a docker save "
                                 "archive (no manifest.json)")
    except (OSError, EOFError, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
        if temp is not None:
            temp.cleanup()
        raise InvalidRequest(f"cannot read image archive {path}: {exc}") from exc
    except BaseException:
        if temp is not None:
            temp.cleanup()
        raise
    if not archive.images:
        archive.close()
        raise InvalidRequest(f"{path} holds no images")
    return archive


def _oci_names(desc: Descriptor, base_name: str | None, label: str) -> list[str]:
    full = desc.annotations.get(oci.ANNOTATION_IMAGE_NAME)
    if full:
        return [str(parse_reference(full))]
    ref_name = desc.annotations.get(oci.ANNOTATION_REF_NAME, "")
    if ref_name and not is_tag(ref_name):
        return [str(parse_reference(ref_name))]
    base = _require_base(base_name, label, desc.digest, ref_name)
    if not ref_name:
        return [base]
    parsed = parse_reference(base)
    return [str(Reference(parsed.domain, parsed.path, ref_name, None))]


def _require_base(base_name: str | None, label: str, digest: str, tag: str = "") -> str:
    if not base_name:
        what = f"is only tagged {tag!r}" if tag else "has no name"
        raise InvalidRequest(f"{label}: image {digest} {what}; give a base name such as localhost/myimage")
    return str(parse_reference(base_name))


def _normalise(name: str) -> str:
    """Archive path without ./ or leading / (and no way above the root)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _index_directory(root: Path) -> dict[str, _Member]:
    members = {}
    for file in root.rglob("*"):
        if file.is_file():
            members[file.relative_to(root).as_posix()] = _Member(file, 0, file.stat().st_size)
    return members


def _index_tar(path: Path) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    links: dict[str, str] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            name = _normalise(info.name)
            if info.isreg():
                members[name] = _Member(path, info.offset_data, info.size)
            elif info.issym():
                links[name] = _normalise(posixpath.join(posixpath.dirname(name), info.linkname))
            elif info.islnk():
                links[name] = _normalise(info.linkname)
    # docker save links repeated layers to their first copy
    for name, target in links.items():
        for _ in range(8):
            if target not in links:
                break
            target = links[target]
        if target in members:
            members[name] = members[target]
    return members


def _read_range(member: _Member) -> bytes:
    with member.path.open("rb") as f:
        f.seek(member.offset)
        data = f.read(member.size)
    if len(data) != member.size:
        raise ImageError(f"{member.path}: truncated at offset {member.offset}")
    return data

