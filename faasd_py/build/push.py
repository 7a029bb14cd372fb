"""Pushing a built layout to a registry (``faasd-py build --push``).

The push itself is ``faasd_py.runtime.registry.RegistryClient.push_layout``; this module picks the
one image to push out of a multi-image layout first, because the client chooses by tag alone.
:func:`push_layout_skopeo` does the same with skopeo, for hosts or tests that want a second opinion.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from faasd_py.build.layout import blob_path, canonical_json, find_manifest, init_layout, read_blob_json, read_index
from faasd_py.config import RegistrySettings
from faasd_py.errors import ImageError


async def push_layout_async(layout_dir: Path, destination: str, ref: str | None = None, *, insecure: bool = False,
                            settings: RegistrySettings | None = None, docker_config: Path | None = None) -> str:
    """Pushes image ``ref`` (a ref name in index.json; default: the only image) to
    ``destination`` (``host:port/repo:tag``); returns the manifest digest the registry stored.
    ``insecure`` allows plain HTTP to that host (loopback registries are always allowed)."""
    from faasd_py.runtime.registry import RegistryClient  # the runtime layer's HTTP stack, only when pushing

    desc = find_manifest(layout_dir, ref)
    registry_settings = settings or RegistrySettings()
    if insecure:
        host = destination.split("/", 1)[0]
        registry_settings = RegistrySettings(mirrors=registry_settings.mirrors,
                                             insecure=[*registry_settings.insecure, host],
                                             docker_config=registry_settings.docker_config,
                                             pull_policy=registry_settings.pull_policy)
    client = RegistryClient(registry_settings, docker_config)
    try:
        if len(read_index(layout_dir)) == 1:
            return await client.push_layout(layout_dir, destination)
        with tempfile.TemporaryDirectory(prefix=".push-", dir=layout_dir.parent) as tmp:
            single = Path(tmp)
            await asyncio.to_thread(_single_image_layout, layout_dir, desc, single)
            return await client.push_layout(single, destination)
    finally:
        await client.close()


def push_layout(layout_dir: Path, destination: str, ref: str | None = None, *, insecure: bool = False,
                settings: RegistrySettings | None = None, docker_config: Path | None = None) -> str:
    """Blocking form of :func:`push_layout_async` for the CLI and tests (not for a running loop)."""
    return asyncio.run(push_layout_async(layout_dir, destination, ref, insecure=insecure, settings=settings,
                                         docker_config=docker_config))


def _single_image_layout(layout: Path, desc: dict[str, object], out: Path) -> None:
    """A layout holding only one image of ``layout`` (blobs hard-linked, not copied)."""
    init_layout(out)
    digest = str(desc["digest"])
    manifest = read_blob_json(layout, digest)
    for d in (digest, manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])):
        src, dst = blob_path(layout, d), blob_path(out, d)
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    (out / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [desc]}))


def push_layout_skopeo(layout_dir: Path, destination: str, ref: str | None = None, *, insecure: bool = False,
                       timeout: float = 300.0) -> None:
    find_manifest(layout_dir, ref)  # fail early, with our error, when the image is not there
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise ImageError("push: skopeo is not installed (apt-get install skopeo)")
    source = f"oci:{layout_dir}:{ref}" if ref else f"oci:{layout_dir}"
    argv = [skopeo, "copy", "--quiet", "--insecure-policy", source, f"docker://{destination}"]
    if insecure:
        argv.insert(3, "--dest-tls-verify=false")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ImageError(f"push to {destination} failed: {proc.stderr.strip() or proc.stdout.strip()}")
