"""Images holding one host program: the binary, the shared libraries ``ldd`` lists (none for a
static Go binary), CA certificates, a minimal ``/etc`` with ``nobody`` and a ``/tmp``.

This is how the core services (NATS, Prometheus) get images without the Internet: Debian
packages them, so the image is assembled from the installed files. Every file keeps its host
path (the binary finds its data where the package put it) and every entry gets the same mtime
(``SOURCE_DATE_EPOCH`` or 0), so the same host files always give the same digests. The layer is
cached under a key made of the stat data of every file it holds, like the Python base.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faasd_py.build.base import DEFAULT_PATH
from faasd_py.build.function import BuiltImage
from faasd_py.build.hostbase import (
    _extra_host_paths,
    _ldd,
    _oci_arch,
    add_host_path,
    default_cache_dir,
    skeleton_entries,
)
from faasd_py.build.layer import (
    Entry,
    Layer,
    cached_layer,
    dir_entry,
    file_entry,
    link_blob,
    put_blob,
    source_date_epoch,
    with_parents,
)
from faasd_py.build.layout import MEDIA_CONFIG, MEDIA_MANIFEST, REF_NAME, add_manifest, canonical_json, init_layout
from faasd_py.errors import ImageError, InvalidRequest

NOBODY = 65534
PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class HostBinarySpec:
    """One program from the host. ``extra_paths`` (files or whole directories, symlinks followed
    and kept as symlinks) land at their host paths; ``exclude`` drops host subtrees from them;
    ``files`` are generated files; ``dirs`` are empty directories with (mode, uid, gid)."""

    name: str
    binary: Path
    cmd: Sequence[str] = ()
    entrypoint: Sequence[str] | None = None  # default: [binary]
    extra_paths: Sequence[str] = ()
    exclude: Sequence[str] = ()
    files: Mapping[str, bytes | str] = field(default_factory=dict)
    dirs: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = f"{NOBODY}:{NOBODY}"
    workdir: str = "/"
    exposed_ports: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


def build_host_binary_image(spec: HostBinarySpec, out_layout: Path, refs: Sequence[str], *,
                            cache_dir: Path | None = None, compression: str = "gzip") -> BuiltImage:
    """Writes the image into the OCI layout ``out_layout`` under each ref name in ``refs``
    (full references such as ``localhost/faasd-py/nats:2.9.10``); returns the first."""
    if not refs:
        raise InvalidRequest("build: an image needs at least one reference")
    binary = Path(spec.binary)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ImageError(f"build {spec.name}: {binary} is not an executable file")
    cache = cache_dir or default_cache_dir()
    layer = cached_layer(layer_entries(spec), cache, "hostbinary", compression, extra=str(source_date_epoch()))
    init_layout(out_layout)
    blobs = out_layout / "blobs"
    layer = Layer(layer.digest, layer.diff_id, layer.size, layer.media_type, link_blob(layer.path, blobs, layer.digest))
    config = image_config(spec, layer)
    config_digest, config_size = put_blob(blobs, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [layer.descriptor()],
        "annotations": {"org.opencontainers.image.title": spec.name},
    }
    manifest_digest, manifest_size = put_blob(blobs, canonical_json(manifest))
    for ref in refs:
        add_manifest(out_layout, {
            "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": config["architecture"], "os": "linux"},
            "annotations": {REF_NAME: ref},
        })
    size = manifest_size + config_size + layer.size
    return BuiltImage(refs[0], manifest_digest, out_layout, size, config_digest, (layer,), config)


def image_config(spec: HostBinarySpec, layer: Layer) -> dict[str, Any]:
    env = {"PATH": DEFAULT_PATH, **spec.env}
    created = datetime.fromtimestamp(source_date_epoch(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cfg: dict[str, Any] = {
        "User": spec.user,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else [str(spec.binary)],
        "WorkingDir": spec.workdir,
        "Labels": dict(spec.labels),
    }
    if spec.cmd:
        cfg["Cmd"] = list(spec.cmd)
    if spec.exposed_ports:
        cfg["ExposedPorts"] = {p: {} for p in spec.exposed_ports}
    what = spec.description or f"host binary {spec.binary}"
    return {
        "created": created,
        "architecture": _oci_arch(),
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": created, "created_by": f"faasd-py build: {what}"}],
    }


def layer_entries(spec: HostBinarySpec) -> list[Entry]:
    """Everything the one layer holds, sorted as it is written (pure but for reading the host)."""
    mtime = source_date_epoch()
    binary = str(spec.binary)
    libs = _ldd([Path(binary)])
    found: dict[str, Entry] = {}
    exclude = tuple(os.path.normpath(p) for p in spec.exclude)
    for path in [binary, *libs, *_extra_host_paths(libs), *spec.extra_paths]:
        add_host_path(path, found, exclude, missing_ok=True)
    generated = skeleton_entries(PASSWD, GROUP)
    generated += [file_entry(p, data) for p, data in sorted(spec.files.items())]
    generated += [dir_entry(p, mode, uid, gid) for p, (mode, uid, gid) in sorted(spec.dirs.items())]
    for e in generated:
        found[e.name] = e
    return with_parents([dataclasses.replace(e, mtime=mtime) for e in found.values()], mtime)


