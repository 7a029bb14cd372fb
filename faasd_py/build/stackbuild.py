"""``faasd-py build -f stack.yml``: every function of a stack as an OCI image, without Docker.

Layers: the base (the host's interpreter, or an image pulled from a registry), the watchdog,
the template's files, the handler's installed requirements and the handler directory; the
config carries the stack's environment and labels plus ``fprocess`` and ``mode``. Each image
goes into its own OCI layout (``<output>/<name>``) under the image reference faas-cli deploys,
from where :func:`push_builds` sends it to a registry or :func:`import_builds` into containerd.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from faasd_py.build.base import Base
from faasd_py.build.function import BuiltImage, FunctionSpec, build_function_image
from faasd_py.build.hostbase import default_cache_dir, host_python_base
from faasd_py.build.layer import Layer
from faasd_py.build.pycompile import compile_pycs
from faasd_py.build.registrybase import DEFAULT_PYTHON, pull_base
from faasd_py.build.requirements import PIP_PYTHON, requirements_layer
from faasd_py.build.stack import Stack, StackFunction
from faasd_py.build.template import Template, load_template, template_layer
from faasd_py.config import RegistrySettings, Settings
from faasd_py.errors import InvalidRequest
from faasd_py.runtime.reference import parse_reference

SKIP_NAMES = frozenset({"__pycache__", ".git"})
DEFAULT_NAMESPACE = "openfaas-fn"


@dataclass(frozen=True)
class BuildOptions:
    output: Path = Path("build")  # each function's layout goes to <output>/<name>
    cache_dir: Path | None = None  # default: FAASD_PY_BUILD_CACHE or ~/.cache/faasd-py/build
    base_image: str = ""  # pull the base from a registry instead of assembling it from the host
    base_python: str = DEFAULT_PYTHON  # the interpreter inside a pulled base
    registry: RegistrySettings | None = None
    docker_config: Path | None = None
    refresh: bool = False  # run pip again even when the requirements layer is cached
    pip_python: str = PIP_PYTHON
    compression: str = "gzip"
    templates_dir: Path | None = None


@dataclass(frozen=True)
class FunctionBuild:
    function: StackFunction
    image: str  # normalised reference: the layout's ref name, what is pushed or imported
    built: BuiltImage
    seconds: float

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def digest(self) -> str:
        return self.built.digest

    @property
    def layout(self) -> Path:
        return self.built.layout

    @property
    def namespace(self) -> str:
        return self.function.namespace or DEFAULT_NAMESPACE


def resolve_base(options: BuildOptions) -> Base:
    cache = options.cache_dir or default_cache_dir()
    if options.base_image:
        return pull_base(options.base_image, cache, python=options.base_python, settings=options.registry,
                         docker_config=options.docker_config)
    return host_python_base(cache, compression=options.compression)


def build_stack(stack: Stack, pattern: str | None = None, options: BuildOptions | None = None,
                base: Base | None = None) -> list[FunctionBuild]:
    """Builds the functions matching ``pattern`` (all by default; ``skip_build`` ones are left
    out). The base is resolved once for all of them."""
    opts = options or BuildOptions()
    functions = [f for f in stack.select(pattern) if not f.skip_build]
    if not functions:
        return []
    for fn in functions:  # fail on a bad entry before spending time on the others
        _check(fn)
        load_template(fn.lang, opts.templates_dir)
        _handler_dir(fn, stack.directory)
    base = base or resolve_base(opts)
    return [build_function(fn, stack.directory, base, opts) for fn in functions]


def _check(fn: StackFunction) -> None:
    at = f"functions.{fn.name}"
    if fn.lang == "dockerfile":
        raise InvalidRequest(f"{at}: lang dockerfile needs Docker; faasd-py builds python3, python3-http and shell")
    if not fn.lang:
        raise InvalidRequest(f"{at}: lang is required to build (or set skip_build: true)")
    if not fn.handler:
        raise InvalidRequest(f"{at}: handler is required to build")
    if not fn.image:
        raise InvalidRequest(f"{at}: image is required to build")
    parse_reference(fn.image_ref)


def build_function(fn: StackFunction, stack_dir: Path, base: Base,
                   options: BuildOptions | None = None) -> FunctionBuild:
    opts = options or BuildOptions()
    _check(fn)
    t0 = time.monotonic()
    cache = opts.cache_dir or default_cache_dir()
    template = load_template(fn.lang, opts.templates_dir)
    handler_dir = _handler_dir(fn, stack_dir)
    extra: list[tuple[str, Layer]] = []
    layer = template_layer(template, base, cache, opts.compression)
    if layer is not None:
        extra.append((f"template {template.language}", layer))
    if template.requirements:
        layer = requirements_layer(handler_dir / template.requirements, base,
                                   _in_workdir(base, template.packages_path or "python"), cache,
                                   python=opts.pip_python, env=fn.build_args, refresh=opts.refresh,
                                   compression=opts.compression)
        if layer is not None:
            extra.append((f"requirements of {fn.name}", layer))
    image = str(parse_reference(fn.image_ref))
    layout = opts.output / fn.name
    _fresh_layout(layout)
    built = build_function_image(function_spec(fn, template, handler_dir, base), layout, image, base=base,
                                 cache_dir=cache, compression=opts.compression, extra_layers=extra)
    return FunctionBuild(fn, image, built, time.monotonic() - t0)


def _handler_dir(fn: StackFunction, stack_dir: Path) -> Path:
    handler_dir = (stack_dir / fn.handler).resolve()
    if not handler_dir.is_dir():
        raise InvalidRequest(f"functions.{fn.name}: handler directory {handler_dir} does not exist")
    return handler_dir


def function_spec(fn: StackFunction, template: Template, handler_dir: Path, base: Base) -> FunctionSpec:
    """The stack's settings over the template's: fprocess, env and labels."""
    files: dict[str, bytes] = {}
    whole_dir = template.handler_path == "."  # straight into the workdir, modes kept (any executable)
    if not whole_dir:
        files = handler_files(handler_dir, template.handler_path)
        sources = {_in_workdir(base, p): d for p, d in files.items() if p.endswith(".py")}
        files.update(compile_pycs(base.python, base.python_cache_tag, sources))
    return FunctionSpec(name=fn.name, fprocess=fn.fprocess or template.fprocess, mode=template.mode,
                        upstream_url=template.upstream_url, env=dict(fn.environment), labels=dict(fn.labels),
                        handler_dir=handler_dir if whole_dir else None, files=files)


def handler_files(handler_dir: Path, prefix: str) -> dict[str, bytes]:
    """The handler directory's files as ``<prefix>/<relative path>`` -> content."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(handler_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        rel = Path(dirpath).relative_to(handler_dir)
        for name in sorted(filenames):
            src = Path(dirpath) / name
            if src.is_file() and not src.is_symlink() and not name.endswith(".pyc"):
                out[f"{prefix}/{(rel / name).as_posix()}"] = src.read_bytes()
    return out


def _in_workdir(base: Base, rel: str) -> str:
    return rel if rel.startswith("/") else f"{base.working_dir}/{rel}"


def _fresh_layout(layout: Path) -> None:
    """Each build writes a layout holding only its image (so an import or push sends nothing
    stale); a directory that is not a layout is never deleted."""
    if layout.exists():
        if not (layout / "oci-layout").is_file():
            raise InvalidRequest(f"{layout} exists and is not an OCI layout; not overwriting it")
        shutil.rmtree(layout)


# --- after the build: push or import ---------------------------------------------------------


async def push_builds(builds: Sequence[FunctionBuild], *, insecure: bool = False,
                      settings: RegistrySettings | None = None, docker_config: Path | None = None) -> list[str]:
    """Pushes each image to its reference; returns the digests the registry stored."""
    from faasd_py.build.push import push_layout_async

    return [await push_layout_async(b.layout, b.image, b.image, insecure=insecure, settings=settings,
                                    docker_config=docker_config) for b in builds]


async def import_builds(builds: Sequence[FunctionBuild], socket: str, *, snapshotter: str = "overlayfs",
                        registry: RegistrySettings | None = None) -> list[str]:
    """Imports each layout into containerd's content store (in the function's namespace) and
    unpacks it; raises ContainerdUnavailable when nothing answers on ``socket``."""
    from faasd_py.runtime.client import ContainerdClient  # the runtime layer, only when importing
    from faasd_py.runtime.images import ImageService
    from faasd_py.runtime.registry import RegistryClient

    client = ContainerdClient(socket)
    await client.connect()
    registry_client = RegistryClient(registry or RegistrySettings())
    names: list[str] = []
    try:
        images = ImageService(client.channel, registry_client, snapshotter=snapshotter)
        for b in builds:
            names += [info.name for info in await images.import_archive(b.layout, b.namespace)]
    finally:
        await registry_client.close()
        await client.close()
    return names


def default_docker_config(settings: Settings) -> Path:
    """Credentials for a build: the configured file, else the user's docker one (where ``docker
    login`` writes), else the daemon's."""
    if settings.registry.docker_config:
        return Path(settings.registry.docker_config)
    env = os.environ.get("DOCKER_CONFIG")
    user = Path(env) / "config.json" if env else Path.home() / ".docker" / "config.json"
    return user if user.exists() else settings.docker_config_path
