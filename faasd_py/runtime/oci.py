"""OCI / Docker v2 image formats: media types, descriptors, manifests, platforms, chain IDs.

Pure functions over bytes and dicts, shared by the registry client, the content-store writer
and the archive importer, so the format rules live in one place and are tested without I/O.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from faasd_py.errors import ImageError
from faasd_py.runtime.model import ImageConfig

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# what containerd's differ can apply (docker's uncompressed/foreign variants included)
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        DOCKER_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
# registries choose among these; the OCI ones must be listed or some answer 404 for OCI images
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_digest(data: bytes, digest: str, what: str) -> None:
    algorithm, _, expected = digest.partition(":")
    if algorithm not in hashlib.algorithms_available:
        raise ImageError(f"{what}: unsupported digest algorithm {algorithm!r}")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ImageError(f"{what}: content does not match its digest {digest} (got {algorithm}:{actual})")


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n)), per the OCI image spec."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else sha256_digest(f"{chains[-1]} {diff_id}".encode()))
    return chains


# --- platforms ------------------------------------------------------------------------------

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "i386": "386", "i686": "386"}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if len(parts) == 1:
            parts = ["linux", parts[0]]
        if len(parts) > 3 or not all(parts):
            raise ImageError(f"invalid platform {text!r}: want os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalised()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Platform:
        return cls(
            str(data.get("os", "")), str(data.get("architecture", "")), str(data.get("variant", "") or "")
        ).normalised()

    def normalised(self) -> Platform:
        arch = _ARCH_ALIASES.get(self.architecture, self.architecture)
        variant = f"v{self.variant}" if self.variant.isdigit() else self.variant
        if arch == "arm64" and not variant:
            variant = "v8"
        elif arch == "arm" and not variant:
            variant = "v7"
        elif arch == "amd64" and variant == "v1":
            variant = ""
        return Platform(self.os, arch, variant)

    def accepts(self, other: Platform) -> bool:
        """True if an image built for ``other`` runs on this platform (arm runs older variants)."""
        other = other.normalised()
        if (other.os, other.architecture) != (self.os, self.architecture):
            return False
        if self.architecture == "arm" and other.variant.startswith("v") and self.variant.startswith("v"):
            return other.variant[1:].isdigit() and int(other.variant[1:]) <= int(self.variant[1:])
        return other.variant in ("", self.variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    machine = _platform.machine().lower()
    variant = ""
    if machine.startswith("armv"):
        variant, machine = machine[3:5].rstrip("l"), "arm"
    return Platform("linux", machine, variant).normalised()


# --- descriptors and manifests --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    @classmethod
    def from_json(cls, data: Any, what: str) -> Descriptor:
        if not isinstance(data, dict):
            raise ImageError(f"{what}: descriptor is not an object")
        try:
            digest, size = str(data["digest"]), int(data["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"{what}: descriptor lacks a valid digest or size") from exc
        plat = data.get("platform")
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=digest,
            size=size,
            annotations={str(k): str(v) for k, v in (data.get("annotations") or {}).items()},
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def load_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImageError(f"{what}: not valid JSON") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{what}: not a JSON object")
    return data


def detect_media_type(body: bytes, declared: str, what: str) -> str:
    """The manifest's real type: the JSON ``mediaType`` wins over a generic Content-Type."""
    declared = declared.split(";")[0].strip()
    data = load_json(body, what)
    media_type = str(data.get("mediaType") or "")
    if not media_type:
        media_type = declared if declared in INDEX_TYPES | MANIFEST_TYPES else ""
    if not media_type:
        media_type = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    if media_type in DOCKER_SCHEMA1 or data.get("schemaVersion") == 1:
        raise ImageError(
            f"{what}: Docker schema 1 manifests are not supported; push the image again with a "
            "current docker or buildkit"
        )
    if media_type not in INDEX_TYPES | MANIFEST_TYPES:
        raise ImageError(f"{what}: unsupported manifest type {media_type!r}")
    return media_type


def parse_index(body: bytes, what: str) -> list[Descriptor]:
    data = load_json(body, what)
    manifests = data.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError(f"{what}: index has no manifests list")
    return [Descriptor.from_json(m, what) for m in manifests]


def parse_manifest(body: bytes, what: str) -> Manifest:
    data = load_json(body, what)
    layers = data.get("layers")
    if "config" not in data or not isinstance(layers, list):
        raise ImageError(f"{what}: manifest lacks config or layers")
    manifest = Manifest(
        Descriptor.from_json(data["config"], what), tuple(Descriptor.from_json(layer, what) for layer in layers)
    )
    for layer in manifest.layers:
        if layer.media_type not in LAYER_TYPES:
            raise ImageError(f"{what}: unsupported layer type {layer.media_type!r}")
    return manifest


def select_manifest(manifests: list[Descriptor], want: Platform, what: str) -> Descriptor:
    """The best entry of an index for ``want``: exact variant first, then compatible ones."""
    candidates = [m for m in manifests if m.platform and m.media_type not in INDEX_TYPES and want.accepts(m.platform)]
    if not candidates:
        offered = sorted({str(m.platform) for m in manifests if m.platform and m.platform.os != "unknown"})
        raise ImageError(f"{what}: no image for {want} (offered: {', '.join(offered) or 'none'})")
    return max(candidates, key=lambda m: (m.platform == want, m.platform.variant if m.platform else ""))


def check_config_platform(config: Mapping[str, Any], want: Platform, what: str) -> None:
    """A single-platform image must still match the host, or the container fails with exec errors."""
    if not config.get("architecture"):
        return
    got = Platform.from_json(
        {
            "os": config.get("os") or want.os,
            "architecture": config["architecture"],
            "variant": config.get("variant", ""),
        }
    )
    if not want.accepts(got):
        raise ImageError(f"{what}: image is for {got}, this host runs {want}")


def diff_ids(config: Mapping[str, Any], layers: int, what: str) -> list[str]:
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or len(ids) != layers:
        raise ImageError(
            f"{what}: config lists {len(ids) if isinstance(ids, list) else 'no'} diff_ids for {layers} layers"
        )
    return [str(d) for d in ids]


def image_config(config: Mapping[str, Any]) -> ImageConfig:
    c = config.get("config") or {}

    def strings(key: str) -> tuple[str, ...]:
        value = c.get(key) or ()
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    return ImageConfig(
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        env=strings("Env"),
        user=str(c.get("User") or ""),
        working_dir=str(c.get("WorkingDir") or ""),
        labels={str(k): str(v) for k, v in (c.get("Labels") or {}).items()},
        exposed_ports=tuple(sorted(str(p) for p in (c.get("ExposedPorts") or {}))),
        stop_signal=str(c.get("StopSignal") or ""),
    )
