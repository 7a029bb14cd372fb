"""A base pulled from a registry (``faasd-py build --base-image REF``) instead of the host's files.

The manifest for this host's platform, its config and its layers are fetched with the runtime's
:class:`~faasd_py.runtime.registry.RegistryClient` (mirrors, auth, digests checked) into the
build cache's blob store, where later builds find them. The image keeps its env, labels and
platform; the function still runs as our non-root user.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from faasd_py.build.base import DEFAULT_PATH, Base
from faasd_py.build.layer import Layer
from faasd_py.config import RegistrySettings
from faasd_py.errors import ImageError

DEFAULT_PYTHON = "python3"  # looked up in the image's PATH: registry images put it in different places


async def pull_base_async(image: str, cache_dir: Path, *, python: str = DEFAULT_PYTHON,
                          settings: RegistrySettings | None = None, docker_config: Path | None = None) -> Base:
    """``python`` is the interpreter that runs the watchdog inside the image."""
    from faasd_py.runtime import oci  # the runtime layer's HTTP stack, only when a base is pulled
    from faasd_py.runtime.reference import parse_reference
    from faasd_py.runtime.registry import RegistryClient

    ref = parse_reference(image)
    client = RegistryClient(settings or RegistrySettings(), docker_config)
    try:
        desc, body = await client.resolve(ref)
        if desc.media_type in oci.INDEX_TYPES:
            chosen = oci.select_manifest(oci.parse_index(body, str(ref)), oci.host_platform(), str(ref))
            _, body = await client.resolve(parse_reference(f"{ref.name}@{chosen.digest}"))
        manifest = oci.parse_manifest(body, str(ref))
        config: dict[str, Any] = json.loads(await client.fetch_blob_bytes(ref, manifest.config.digest,
                                                                          manifest.config.size))
        oci.check_config_platform(config, oci.host_platform(), str(ref))
        ids = oci.diff_ids(config, len(manifest.layers), str(ref))
        store = cache_dir / "blobs" / "sha256"
        await asyncio.to_thread(store.mkdir, parents=True, exist_ok=True)
        layers = []
        for layer, diff_id in zip(manifest.layers, ids, strict=True):
            path = store / layer.digest.split(":", 1)[1]
            if not path.exists():
                tmp = store / f".pull-{path.name}-{os.getpid()}"
                f = await asyncio.to_thread(tmp.open, "wb")
                try:
                    async for chunk in client.fetch_blob(ref, layer.digest, layer.size):
                        await asyncio.to_thread(f.write, chunk)
                finally:
                    await asyncio.to_thread(f.close)
                await asyncio.to_thread(os.replace, tmp, path)
            layers.append(Layer(layer.digest, diff_id, layer.size, layer.media_type, path))
    except BaseException:
        await asyncio.to_thread(_remove_partial, cache_dir)
        raise
    finally:
        await client.close()
    cfg = config.get("config") or {}
    env = tuple(str(e) for e in cfg.get("Env") or ()) or (f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8")
    return Base(layers=tuple(layers), python=python, env=env, architecture=str(config.get("architecture") or "amd64"),
                os=str(config.get("os") or "linux"), description=f"{ref}",
                labels={str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()})


def _remove_partial(cache_dir: Path) -> None:
    for leftover in cache_dir.glob(f"blobs/sha256/.pull-*-{os.getpid()}"):
        leftover.unlink(missing_ok=True)


def pull_base(image: str, cache_dir: Path, *, python: str = DEFAULT_PYTHON, settings: RegistrySettings | None = None,
              docker_config: Path | None = None) -> Base:
    """Blocking form of :func:`pull_base_async` (for the CLI; not inside a running loop)."""
    try:
        return asyncio.run(pull_base_async(image, cache_dir, python=python, settings=settings,
                                           docker_config=docker_config))
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError(f"base image {image}: {exc}") from exc
