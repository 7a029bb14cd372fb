"""The ``faasd-py`` command line: parse, load settings, call one function. Nothing else here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from faasd_py import __version__
from faasd_py.config import DEFAULT_CONFIG_FILE, load_settings
from faasd_py.errors import FaasdError


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects section.key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def _common() -> argparse.ArgumentParser:
    """--config and --set, accepted before or after the subcommand (``faasd-py up --config F``)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                   help="YAML settings file (default /etc/faasd-py/config.yaml, or $FAASD_PY_CONFIG)")
    c.add_argument("--set", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="override one setting, e.g. --set network.subnet=10.70.0.0/16 (repeatable)")
    return c


def _parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="faasd-py", description="OpenFaaS on one host, on containerd.",
                                parents=[common])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", parents=[common], help="run the daemon: gateway API on :8080, functions on containerd")
    inst = sub.add_parser("install", parents=[common],
                          help="create the state dir, admin password, config and systemd unit")
    inst.add_argument("--no-systemd", action="store_true", help="do not install the systemd unit")
    uninst = sub.add_parser("uninstall", parents=[common],
                            help="remove the core services (the daemon must be stopped); functions are kept")
    uninst.add_argument("--purge", action="store_true",
                        help="also remove every function, the bridge and its CNI chains")
    sub.add_parser("version", help="print the version")
    image = sub.add_parser("image", help="image commands")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    imp = image_sub.add_parser("import", help="import an OCI or docker-save tar into containerd")
    imp.add_argument("file", type=Path)
    imp.add_argument("--namespace", "-n", default="openfaas-fn", help="containerd namespace (default openfaas-fn)")
    imp.add_argument("--name", default=None, help="image name for archives whose ref names have no repository")
    core = sub.add_parser("core-images", help="build the core service images (nats, prometheus) from the host's "
                                               "packages and import them into containerd")
    core.add_argument("names", nargs="*", help="only these images (default: all)")
    core.add_argument("--binary", action="append", default=[], metavar="NAME=PATH",
                      help="also (or, without NAMES, only) build localhost/faasd-py/NAME from the host program PATH, "
                           "e.g. redis=/usr/bin/redis-server (repeatable)")
    core.add_argument("--output", type=Path, default=None, help="keep the OCI layouts in OUTPUT/NAME")
    core.add_argument("--cache-dir", type=Path, default=None, help="build cache (default ~/.cache/faasd-py/build)")
    _add_new(sub)
    _add_build(sub)
    return p


def _add_new(sub: Any) -> None:
    new = sub.add_parser("new", help="scaffold a function from a template, with a stack.yml faas-cli reads")
    new.add_argument("name", nargs="?", help="function name (a DNS-1123 label)")
    new.add_argument("--lang", help="template: python3, python3-http or shell")
    new.add_argument("--prefix", default="", help="image prefix, e.g. a registry: 127.0.0.1:5000/team")
    new.add_argument("--append", type=Path, metavar="STACK", help="add the function to this stack file")
    new.add_argument("--gateway", default="http://127.0.0.1:8080", help="provider.gateway of a new stack")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to create NAME/ and NAME.yml")
    new.add_argument("--list", action="store_true", help="list the templates")


def _add_build(sub: Any) -> None:
    b = sub.add_parser("build", help="build the stack's function images (OCI, no Docker)")
    b.add_argument("-f", "--yaml", type=Path, default=None, help="stack file (default stack.yml)")
    b.add_argument("--filter", default=None, help="only functions matching this name (wildcards allowed)")
    b.add_argument("--push", action="store_true", help="push each image to its stack image reference")
    b.add_argument("--insecure", action="store_true", help="plain HTTP to the push registry (loopback always is)")
    b.add_argument("--docker-config", type=Path, default=None, help="credentials for pulls and pushes "
                                                                     "(default ~/.docker/config.json)")
    b.add_argument("--output", type=Path, default=Path("build"), help="layouts go to OUTPUT/NAME (default build)")
    b.add_argument("--base-image", default="", help="pull the base from a registry instead of using the host's "
                                                    "python3.11")
    b.add_argument("--base-python", default="python3", help="the interpreter inside --base-image")
    b.add_argument("--no-import", action="store_true", help="without --push: leave the images in their layouts")
    b.add_argument("--containerd-socket", default=None, help="where to import (default: the settings' socket)")
    b.add_argument("--cache-dir", type=Path, default=None, help="build cache (default ~/.cache/faasd-py/build)")
    b.add_argument("--no-cache", action="store_true", help="install requirements again even if cached")
    b.add_argument("--no-envsubst", action="store_true", help="do not substitute ${VAR} in the stack file")


def _new(args: argparse.Namespace) -> None:
    from faasd_py.build.template import available, new_function

    if args.list:
        print("\n".join(available()))
        return
    if not args.name or not args.lang:
        raise SystemExit("faasd-py new: give a NAME and --lang (faasd-py new --list shows the languages)")
    made = new_function(args.name, args.lang, args.dir, prefix=args.prefix, append=args.append, gateway=args.gateway)
    for path in made.files:
        print(f"wrote {path}")
    print(f"Function created in folder: {made.handler_dir}\nStack file written: {made.stack_file}")
    if made.message:
        print(made.message.rstrip().replace("STACK", str(made.stack_file)))


async def _build(settings: Any, args: argparse.Namespace) -> None:
    from faasd_py.build.stack import load_stack
    from faasd_py.build.stackbuild import BuildOptions, build_stack, default_docker_config, import_builds, push_builds
    from faasd_py.errors import ContainerdUnavailable

    stack_file = args.yaml or next((p for p in (Path("stack.yml"), Path("stack.yaml")) if p.exists()),
                                   Path("stack.yml"))
    stack = load_stack(stack_file, substitute=not args.no_envsubst)
    for warning in stack.warnings:
        print(f"faasd-py build: warning: {warning}", file=sys.stderr)
    docker_config = args.docker_config or default_docker_config(settings)
    options = BuildOptions(output=args.output, cache_dir=args.cache_dir, base_image=args.base_image,
                           base_python=args.base_python, registry=settings.registry, docker_config=docker_config,
                           refresh=args.no_cache)
    builds = await asyncio.to_thread(build_stack, stack, args.filter, options)
    if not builds:
        print(f"faasd-py build: nothing to build in {stack_file}")
        return
    for b in builds:
        print(f"{b.name}: {b.image} {b.digest} ({b.built.size / 1e6:.1f} MB, {b.seconds:.2f} s) -> {b.layout}")
    if args.push:
        for b, digest in zip(builds, await push_builds(builds, insecure=args.insecure, settings=settings.registry,
                                                       docker_config=docker_config), strict=True):
            print(f"{b.name}: pushed {b.image} {digest}")
    elif not args.no_import:
        socket = args.containerd_socket or settings.containerd_socket
        try:
            for name in await import_builds(builds, socket, snapshotter=settings.snapshotter,
                                            registry=settings.registry):
                print(f"imported {name}")
        except ContainerdUnavailable as exc:
            print(f"faasd-py build: not imported: {exc.message}. The images are in {args.output}/<name>; "
                  "use --push, or --no-import and `faasd-py image import DIR` later", file=sys.stderr)


async def _import(settings: Any, file: Path, namespace: str, name: str | None) -> None:
    from faasd_py.daemon import connect_containerd
    from faasd_py.runtime.images import ImageService
    from faasd_py.runtime.registry import RegistryClient

    client = await connect_containerd(settings, wait=5)
    registry = RegistryClient(settings.registry, settings.docker_config_path)
    try:
        images = ImageService(client.channel, registry, snapshotter=settings.snapshotter)
        for info in await images.import_archive(file, namespace, name):
            print(f"imported {info.name} ({info.digest})")
    finally:
        await registry.close()
        await client.close()


async def _core_images(settings: Any, args: argparse.Namespace) -> None:
    from faasd_py.build.coreimages import build_core_images
    from faasd_py.daemon import connect_containerd
    from faasd_py.provider.core_services import CORE_NAMESPACE
    from faasd_py.runtime.images import ImageService
    from faasd_py.runtime.registry import RegistryClient

    binaries: dict[str, Path] = {}
    for pair in args.binary:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--binary expects NAME=PATH, got {pair!r}")
        binaries[name] = Path(path)
    client = await connect_containerd(settings, wait=30)
    registry = RegistryClient(settings.registry, settings.docker_config_path)
    try:
        images = ImageService(client.channel, registry, snapshotter=settings.snapshotter)
        for image in await build_core_images(images, namespace=CORE_NAMESPACE, only=args.names,
                                             work_dir=args.output, cache_dir=args.cache_dir, binaries=binaries):
            print(f"{image.name}: {', '.join(image.refs)} {image.digest} ({image.size / 1e6:.1f} MB)")
    finally:
        await registry.close()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"faasd-py {__version__}")
        return
    try:
        if args.command == "new":  # needs no settings
            _new(args)
            return
        config: Path | None = getattr(args, "config", None)
        if args.command == "install" and config is not None and not config.exists():
            config_file, config = config, None  # install writes it
        else:
            config_file = config or DEFAULT_CONFIG_FILE
        settings = load_settings(config, overrides=_overrides(getattr(args, "set", [])))
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "up":
            from faasd_py.daemon import run

            asyncio.run(run(settings))
        elif args.command == "install":
            from faasd_py.install import install

            result = install(settings, systemd=not args.no_systemd, config_file=config_file)
            print(result.summary())
        elif args.command == "uninstall":
            from faasd_py.daemon import uninstall

            for line in asyncio.run(uninstall(settings, purge=args.purge)):
                print(line)
        elif args.command == "image":
            asyncio.run(_import(settings, args.file, args.namespace, args.name))
        elif args.command == "build":
            asyncio.run(_build(settings, args))
        elif args.command == "core-images":
            asyncio.run(_core_images(settings, args))
    except FaasdError as exc:
        print(f"faasd-py: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
