"""Reproducible layer tarballs: the same entries always give the same bytes, hence the same digest.

Entries are sorted by path components, owners default to 0:0 with empty user/group names, no
atime/ctime (PAX headers appear only for long names), and gzip is written with mtime 0 and a fixed
level. Modification times are whatever the entry says: 0 (or SOURCE_DATE_EPOCH) for files we
generate, and the host's for files copied from the host base, because Python's timestamp-based
``.pyc`` files are only used when the source's mtime matches.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 6
COMPRESSIONS = ("gzip", "none")


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds.org), else 0."""
    try:
        return max(0, int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or symlink of a layer, addressed by its absolute path in the image."""

    path: str
    kind: str  # "file" | "dir" | "symlink"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes | None = None  # file content, or ...
    source: Path | None = None  # ... a host file to copy
    target: str = ""  # symlink target

    @property
    def name(self) -> str:
        return self.path.strip("/")


@dataclass(frozen=True, slots=True)
class Layer:
    """A layer blob as it sits in a content store (``<blobs>/sha256/<hex>``)."""

    digest: str  # of the blob (compressed, if it is)
    diff_id: str  # of the uncompressed tar; goes into the image config's rootfs.diff_ids
    size: int  # blob bytes
    media_type: str
    path: Path  # where the blob is stored

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def file_entry(path: str, data: bytes | str, mode: int | None = None, uid: int = 0, gid: int = 0,
               mtime: int = 0) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    if mode is None:
        mode = 0o755 if raw.startswith(b"#!") else 0o644
    return Entry(path, "file", mode, uid, gid, mtime, data=raw)


def dir_entry(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 0) -> Entry:
    return Entry(path, "dir", mode, uid, gid, mtime)


def symlink_entry(path: str, target: str, mtime: int = 0) -> Entry:
    return Entry(path, "symlink", 0o777, mtime=mtime, target=target)


def with_parents(entries: Iterable[Entry], mtime: int = 0) -> list[Entry]:
    """Adds the missing parent directories (0755 root) and sorts the way the tar is written;
    a later entry for the same path replaces an earlier one."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        by_path[e.name] = e
    for name in list(by_path):
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in by_path:
                by_path[parent] = dir_entry("/" + parent, mtime=mtime)
    return [by_path[k] for k in sorted(by_path, key=lambda n: n.split("/"))]


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: io.IOBase | gzip.GzipFile) -> None:
        super().__init__()
        self._sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)


def _tarinfo(e: Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.name)
    ti.mode = e.mode & 0o7777
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname = ti.gname = ""
    ti.mtime = int(e.mtime)
    if e.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif e.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = e.target
    elif e.kind == "file":
        ti.type = tarfile.REGTYPE
        ti.size = len(e.data) if e.data is not None else os.stat(e.source or "").st_size
    else:
        raise ValueError(f"unknown entry kind {e.kind!r} for {e.path}")
    return ti


def write_layer(entries: Iterable[Entry], blobs_dir: Path, compression: str = "gzip") -> Layer:
    """Writes the layer blob into ``blobs_dir/sha256/`` and returns its descriptor data."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}")
    store = blobs_dir / "sha256"
    store.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".layer-", dir=store)
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as raw:
            blob = _Hashing(raw)
            gz = (gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=blob, mtime=0)
                  if compression == "gzip" else None)
            diff = _Hashing(gz if gz is not None else blob)
            with tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for e in entries:
                    ti = _tarinfo(e)
                    if e.kind != "file":
                        tar.addfile(ti)
                    elif e.data is not None:
                        tar.addfile(ti, io.BytesIO(e.data))
                    else:
                        with open(e.source or "", "rb") as f:
                            tar.addfile(ti, f)
                            if os.fstat(f.fileno()).st_size != ti.size:
                                raise RuntimeError(f"{e.source} changed while it was being archived")
            if gz is not None:
                gz.close()
        digest = "sha256:" + blob.sha.hexdigest()
        final = store / blob.sha.hexdigest()
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Layer(digest=digest, diff_id="sha256:" + diff.sha.hexdigest(), size=blob.size,
                 media_type=MEDIA_TAR_GZIP if compression == "gzip" else MEDIA_TAR, path=final)


def put_blob(blobs_dir: Path, data: bytes) -> tuple[str, int]:
    """Stores a small blob (config, manifest) by content; returns (digest, size)."""
    hexd = hashlib.sha256(data).hexdigest()
    store = blobs_dir / "sha256"
    store.mkdir(parents=True, exist_ok=True)
    target = store / hexd
    if not target.exists():
        tmp = store / f".tmp-{hexd}-{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return "sha256:" + hexd, len(data)


def link_blob(src: Path, blobs_dir: Path, digest: str) -> Path:
    """Puts an existing blob into another store: hard link when possible, else copy."""
    store = blobs_dir / "sha256"
    store.mkdir(parents=True, exist_ok=True)
    target = store / digest.split(":", 1)[1]
    if target.exists():
        return target
    tmp = store / f".tmp-{target.name}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, target)
    return target


def host_mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)


CACHE_FORMAT = 1  # bump when the layer content rules change, to invalidate cached layers


def cached_layer(entries: Sequence[Entry], cache_dir: Path, kind: str, compression: str = "gzip",
                 extra: str = "") -> Layer:
    """Writes ``entries`` as a layer into the cache's blob store, or returns the layer written
    before for the same entries (host files keyed by their stat data, like the host base)."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{kind}|{compression}|{extra}".encode())
    for e in entries:
        h.update(f"{e.path}|{e.kind}|{e.mode}|{e.uid}|{e.gid}|{e.mtime}|{e.target}\n".encode())
        if e.data is not None:
            h.update(hashlib.sha256(e.data).digest())
        elif e.source is not None:
            st = os.stat(e.source)
            h.update(f"{e.source}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())
    meta_path = cache_dir / f"{kind}-{h.hexdigest()[:32]}.json"
    layer = load_cached(meta_path)
    if layer is None:
        layer = write_layer(entries, cache_dir / "blobs", compression)
        remember(meta_path, layer)
    return layer


def load_cached(meta_path: Path) -> Layer | None:
    """The layer a cache record (``<cache>/<key>.json``) names, if its blob is still in
    ``<cache>/blobs``; None when either is gone."""
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    blob = meta_path.parent / "blobs" / "sha256" / meta["digest"].split(":", 1)[1]
    if not blob.exists():
        return None
    return Layer(meta["digest"], meta["diff_id"], meta["size"], meta["media_type"], blob)


def remember(meta_path: Path, layer: Layer, **extra: object) -> None:
    """Write the cache record for ``layer`` atomically (concurrent builds may race for it)."""
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                               "media_type": layer.media_type, **extra}))
    os.replace(tmp, meta_path)
