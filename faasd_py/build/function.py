"""Function images: base layer(s) + the watchdog layer + a layer with the handler files, plus an
image config that starts the watchdog as a non-root user. Everything is a pure function of its
inputs, so the same spec gives the same manifest digest on every build."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faasd_py.build.base import Base
from faasd_py.build.hostbase import default_cache_dir, host_python_base
from faasd_py.build.layer import (
    Entry,
    Layer,
    dir_entry,
    file_entry,
    link_blob,
    load_cached,
    put_blob,
    remember,
    source_date_epoch,
    with_parents,
    write_layer,
)
from faasd_py.build.layout import MEDIA_CONFIG, MEDIA_MANIFEST, REF_NAME, add_manifest, canonical_json, init_layout
from faasd_py.build.pycompile import compile_pycs
from faasd_py.errors import InvalidRequest

WATCHDOG_ROOT = "/opt/faasd-watchdog"
WATCHDOG_SOURCE = Path(__file__).resolve().parent.parent / "watchdog"
MODES = ("classic", "serializing", "streaming", "http")
LABEL_PREFIX = "com.github.faasd-py"


@dataclass(frozen=True)
class FunctionSpec:
    """What to put in a function image. ``files`` (relative to ``workdir``, or absolute) are
    added after ``handler_dir``; content starting with ``#!`` is made executable."""

    name: str
    fprocess: str = ""
    mode: str = "classic"
    handler_dir: Path | None = None
    files: Mapping[str, bytes | str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    upstream_url: str = ""  # http mode; default http://127.0.0.1:5000
    entrypoint: Sequence[str] | None = None  # replaces the watchdog (images that are not functions)
    cmd: Sequence[str] = ()
    watchdog: bool = True  # include the watchdog layer
    user: str = ""  # default: the base's non-root user
    workdir: str = ""  # default: the base's (/home/app)
    exposed_ports: Sequence[str] = ("8080/tcp",)


@dataclass(frozen=True, slots=True)
class BuiltImage:
    ref: str  # the org.opencontainers.image.ref.name in index.json
    digest: str  # manifest digest
    layout: Path
    size: int  # manifest + config + layer blobs, in bytes
    config_digest: str
    layers: tuple[Layer, ...]
    config: dict[str, Any]


def build_function_image(spec: FunctionSpec, out_layout: Path, tag: str = "latest", *, base: Base | None = None,
                         cache_dir: Path | None = None, compression: str = "gzip",
                         extra_layers: Sequence[tuple[str, Layer]] = ()) -> BuiltImage:
    """Writes the image into the OCI layout ``out_layout`` (created if needed; other images in it
    stay) under the ref name ``tag`` (``latest`` or a full ``localhost/fn:1``). ``extra_layers``
    (what each one is, the layer) go between the watchdog and the handler: a template's files,
    installed requirements."""
    _validate(spec)
    cache = cache_dir or default_cache_dir()
    base = base or host_python_base(cache, compression=compression)
    init_layout(out_layout)
    blobs = out_layout / "blobs"
    layers: list[Layer] = []
    for layer in base.layers:
        layers.append(_relink(layer, blobs))
    if spec.watchdog and spec.entrypoint is None:
        layers.append(_relink(watchdog_layer(base, cache, compression), blobs))
    layers.extend(_relink(layer, blobs) for _, layer in extra_layers)
    layers.append(write_layer(function_entries(spec, base), blobs, compression))
    config = image_config(spec, base, layers, [what for what, _ in extra_layers])
    config_digest, config_size = put_blob(blobs, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [layer.descriptor() for layer in layers],
        "annotations": {"org.opencontainers.image.title": spec.name},
    }
    manifest_digest, manifest_size = put_blob(blobs, canonical_json(manifest))
    add_manifest(out_layout, {
        "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": base.architecture, "os": base.os},
        "annotations": {REF_NAME: tag},
    })
    size = manifest_size + config_size + sum(layer.size for layer in layers)
    return BuiltImage(tag, manifest_digest, out_layout, size, config_digest, tuple(layers), config)


def _validate(spec: FunctionSpec) -> None:
    if not spec.name:
        raise InvalidRequest("build: a function needs a name")
    if spec.entrypoint is None and spec.watchdog:
        if spec.mode not in MODES:
            raise InvalidRequest(f"build: mode must be one of {', '.join(MODES)}")
        if not spec.fprocess:
            raise InvalidRequest("build: fprocess is required for a watchdog image")


def _relink(layer: Layer, blobs: Path) -> Layer:
    path = link_blob(layer.path, blobs, layer.digest)
    return Layer(layer.digest, layer.diff_id, layer.size, layer.media_type, path)


def image_config(spec: FunctionSpec, base: Base, layers: Sequence[Layer], extra: Sequence[str] = ()) -> dict[str, Any]:
    env: dict[str, str] = {}
    for item in base.env:
        k, _, v = item.partition("=")
        env[k] = v
    if spec.entrypoint is None and spec.watchdog:
        env["PYTHONPATH"] = WATCHDOG_ROOT
        env["fprocess"] = spec.fprocess
        env["mode"] = spec.mode
        if spec.mode == "http":
            env["upstream_url"] = spec.upstream_url or "http://127.0.0.1:5000"
        entrypoint = [base.python, "-S", "-m", "faasd_py.watchdog"]
    else:
        entrypoint = list(spec.entrypoint or [])
    env.update(spec.env)
    labels = {**base.labels, f"{LABEL_PREFIX}.function": spec.name, **spec.labels}
    if spec.entrypoint is None and spec.watchdog:
        labels[f"{LABEL_PREFIX}.watchdog.mode"] = spec.mode
    cfg: dict[str, Any] = {
        "User": spec.user or base.user,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Entrypoint": entrypoint,
        "WorkingDir": spec.workdir or base.working_dir,
        "Labels": labels,
    }
    if spec.cmd:
        cfg["Cmd"] = list(spec.cmd)
    if spec.exposed_ports:
        cfg["ExposedPorts"] = {p: {} for p in spec.exposed_ports}
    created = datetime.fromtimestamp(source_date_epoch(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = [{"created": created, "created_by": f"faasd-py build: base {base.description}".strip()}
               for _ in base.layers]
    if len(layers) > len(base.layers) + len(extra) + 1:
        history.append({"created": created, "created_by": "faasd-py build: watchdog"})
    history += [{"created": created, "created_by": f"faasd-py build: {what}"} for what in extra]
    history.append({"created": created, "created_by": f"faasd-py build: function {spec.name}"})
    return {
        "created": created,
        "architecture": base.architecture,
        "os": base.os,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": history,
    }


def function_entries(spec: FunctionSpec, base: Base) -> list[Entry]:
    """The handler layer: handler_dir, then files, under the working directory."""
    mtime = source_date_epoch()
    workdir = spec.workdir or base.working_dir
    uid, gid = _ids(spec.user or base.user)
    entries: list[Entry] = [dir_entry(workdir, 0o755, uid, gid, mtime)]
    if spec.handler_dir is not None:
        root = Path(spec.handler_dir)
        if not root.is_dir():
            raise InvalidRequest(f"build: handler directory {root} does not exist")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".git"))
            rel = Path(dirpath).relative_to(root)
            for d in dirnames:
                entries.append(dir_entry(f"{workdir}/{(rel / d).as_posix()}", mtime=mtime))
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if src.is_symlink() or not src.is_file():
                    continue
                mode = 0o755 if os.access(src, os.X_OK) else 0o644
                entries.append(file_entry(f"{workdir}/{(rel / name).as_posix()}", src.read_bytes(), mode,
                                          mtime=mtime))
    for rel_path, content in sorted(spec.files.items()):
        path = rel_path if rel_path.startswith("/") else f"{workdir}/{rel_path}"
        entries.append(file_entry(path, content, mtime=mtime))
    return with_parents(entries, mtime)


def _ids(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        return 0, 0


def watchdog_sources() -> dict[str, bytes]:
    """The watchdog package as in-image path -> source. Only .py files: it is stdlib-only."""
    out = {f"{WATCHDOG_ROOT}/faasd_py/__init__.py": b""}
    for src in sorted(WATCHDOG_SOURCE.glob("*.py")):
        out[f"{WATCHDOG_ROOT}/faasd_py/watchdog/{src.name}"] = src.read_bytes()
    return out


def watchdog_layer(base: Base, cache_dir: Path | None = None, compression: str = "gzip") -> Layer:
    """The watchdog with pre-compiled .pyc files, cached by its sources and the interpreter."""
    cache = cache_dir or default_cache_dir()
    sources = watchdog_sources()
    mtime = source_date_epoch()
    h = hashlib.sha256(f"{base.python}|{base.python_cache_tag}|{mtime}|{compression}".encode())
    for path, data in sources.items():
        h.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
    meta_path = cache / f"watchdog-{h.hexdigest()[:32]}.json"
    layer = load_cached(meta_path)
    if layer is not None:
        return layer
    pycs = compile_pycs(base.python, base.python_cache_tag, sources)
    entries = [file_entry(p, data, 0o644, mtime=mtime) for p, data in {**sources, **pycs}.items()]
    layer = write_layer(with_parents(entries, mtime), cache / "blobs", compression)
    remember(meta_path, layer, pycs=len(pycs))
    return layer
