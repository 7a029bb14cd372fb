"""The core service images (NATS with JetStream, Prometheus), built from Debian's packages.

faasd pulls them from Docker Hub and ghcr.io at every start, so a host without the Internet
cannot start at all. Here ``faasd-py core-images`` (run by install.sh) assembles them from the
installed ``nats-server`` and ``prometheus`` packages and imports them into containerd as
``localhost/faasd-py/<name>:<package version>`` and ``localhost/faasd-py/<name>:latest``;
the default ``docker-compose.yaml`` names the ``latest`` tags. Re-running it after a package
upgrade moves ``latest``, and the daemon recreates the service at its next start.
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from faasd_py.build.hostbinary import NOBODY, HostBinarySpec, build_host_binary_image
from faasd_py.errors import ImageError, InvalidRequest

if TYPE_CHECKING:
    from faasd_py.runtime.images import ImageService

REPOSITORY = "localhost/faasd-py"
DEFAULT_NAMESPACE = "openfaas"  # the core services' containerd namespace (faasd's too)
_TAG_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")

PROMETHEUS_DEFAULT_CONFIG = """\
# The image's own default: scrape itself. faasd-py bind-mounts its prometheus.yml over this file.
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
"""


@dataclass(frozen=True)
class CoreImageDef:
    name: str
    package: str  # the Debian package whose version tags the image
    spec: Callable[[], HostBinarySpec]


@dataclass(frozen=True, slots=True)
class CoreImage:
    name: str
    refs: tuple[str, ...]
    digest: str
    size: int
    layout: Path


def nats_spec() -> HostBinarySpec:
    return HostBinarySpec(
        name="nats",
        binary=Path("/usr/sbin/nats-server"),
        # JetStream on, its store on the /data volume, monitoring (healthz, varz) on 8222
        cmd=("-js", "-sd", "/data", "-m", "8222"),
        dirs={"/data": (0o755, NOBODY, NOBODY)},
        exposed_ports=("4222/tcp", "8222/tcp"),
        workdir="/data",
        description="nats-server from the host's Debian package",
    )


def prometheus_spec() -> HostBinarySpec:
    # Debian's binary finds its web UI in /usr/share/prometheus/web (symlinks into
    # /usr/share/javascript) and its consoles in /etc/prometheus: both keep their host paths.
    # moment-timezone's data/ is 200+ MB of per-year files the UI never loads.
    return HostBinarySpec(
        name="prometheus",
        binary=Path("/usr/bin/prometheus"),
        cmd=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"),
        extra_paths=("/usr/share/prometheus/web", "/etc/prometheus/consoles", "/etc/prometheus/console_libraries"),
        exclude=("/usr/share/javascript/moment-timezone/data",),
        files={"/etc/prometheus/prometheus.yml": PROMETHEUS_DEFAULT_CONFIG},
        dirs={"/prometheus": (0o755, NOBODY, NOBODY)},
        exposed_ports=("9090/tcp",),
        workdir="/prometheus",
        description="prometheus from the host's Debian package",
    )


CORE_IMAGES: dict[str, CoreImageDef] = {
    "nats": CoreImageDef("nats", "nats-server", nats_spec),
    "prometheus": CoreImageDef("prometheus", "prometheus", prometheus_spec),
}


def binary_spec(name: str, binary: Path) -> HostBinarySpec:
    """Any other host program as a core service image (``faasd-py core-images --binary
    redis=/usr/bin/redis-server``): runs as nobody in /data; the compose file gives the command."""
    return HostBinarySpec(name=name, binary=binary, dirs={"/data": (0o755, NOBODY, NOBODY)}, workdir="/data",
                          description=f"{binary} from the host")


def binary_package(binary: Path) -> str:
    """The Debian package that installed ``binary`` (symlinks resolved), or ""."""
    try:
        out = subprocess.run(["dpkg-query", "-S", str(binary.resolve())], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    first = out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else ""
    return first.split(":", 1)[0].split(",", 1)[0].strip()


def package_version(package: str) -> str:
    """The installed Debian version, or "" when dpkg does not know the package."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def version_tag(version: str) -> str:
    """A Debian version as an image tag: ``1:2.42.0+ds-5+deb12u1`` -> ``2.42.0_ds-5_deb12u1``."""
    version = version.split(":", 1)[-1]  # the epoch says nothing to a reader
    tag = _TAG_BAD.sub("_", version).lstrip(".-")[:128]
    return tag or "latest"


def image_refs(name: str, version: str) -> tuple[str, ...]:
    refs = [f"{REPOSITORY}/{name}:latest"]
    if version:
        refs.insert(0, f"{REPOSITORY}/{name}:{version_tag(version)}")
    return tuple(refs)


def select(only: Sequence[str] | None) -> list[CoreImageDef]:
    if not only:
        return list(CORE_IMAGES.values())
    unknown = [n for n in only if n not in CORE_IMAGES]
    if unknown:
        raise InvalidRequest(f"unknown core image(s) {', '.join(unknown)}: choose from {', '.join(CORE_IMAGES)}")
    return [CORE_IMAGES[n] for n in only]


def build_core_layouts(out_dir: Path, *, only: Sequence[str] | None = None, cache_dir: Path | None = None,
                       binaries: Mapping[str, Path] | None = None, compression: str = "gzip") -> list[CoreImage]:
    """One OCI layout per image under ``out_dir/<name>``; blocking (seconds on a cache miss).
    ``binaries`` (name -> host program) adds images of other programs; given alone, only those
    are built."""
    defs = select(only) if only or not binaries else []
    for name, binary in (binaries or {}).items():
        if not _NAME_RE.fullmatch(name):
            raise InvalidRequest(f"core image name {name!r}: use lowercase letters, digits, '.', '_' and '-'")
        defs.append(CoreImageDef(name, binary_package(Path(binary)), functools.partial(binary_spec, name,
                                                                                        Path(binary))))
    built: list[CoreImage] = []
    for d in defs:
        spec = d.spec()
        if not spec.binary.is_file():
            hint = f"install the {d.package} package" if d.package else "give the path of an installed program"
            raise ImageError(f"core image {d.name}: {spec.binary} is missing; {hint}")
        refs = image_refs(d.name, package_version(d.package) if d.package else "")
        layout = out_dir / d.name
        shutil.rmtree(layout, ignore_errors=True)  # only these refs, nothing stale
        image = build_host_binary_image(spec, layout, refs, cache_dir=cache_dir, compression=compression)
        built.append(CoreImage(d.name, refs, image.digest, image.size, layout))
    return built


async def build_core_images(images: ImageService, *, namespace: str = DEFAULT_NAMESPACE,
                            only: Sequence[str] | None = None, work_dir: Path | None = None,
                            cache_dir: Path | None = None, binaries: Mapping[str, Path] | None = None,
                            ) -> list[CoreImage]:
    """Build the layouts and import them into containerd's ``namespace`` (unpacked, ready to
    run). Without ``work_dir`` the layouts go to a temporary directory removed afterwards (the
    build cache keeps the layers, so the next run is quick)."""
    build = functools.partial(build_core_layouts, only=only, cache_dir=cache_dir, binaries=binaries)
    if work_dir is not None:
        return await _build_and_import(images, namespace, build, work_dir)
    with tempfile.TemporaryDirectory(prefix="faasd-py-core-images-") as temp:
        return await _build_and_import(images, namespace, build, Path(temp))


async def _build_and_import(images: ImageService, namespace: str, build: Callable[[Path], list[CoreImage]],
                            out: Path) -> list[CoreImage]:
    built = await asyncio.to_thread(build, out)
    for image in built:
        await images.import_archive(image.layout, namespace)
    return built
