"""The ``faasd-py`` command line: parse, load settings, call one function. Nothing else here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from faasd_py import __version__
from faasd_py.config import load_settings
from faasd_py.errors import FaasdError


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects section.key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faasd-py", description="OpenFaaS on one host, on containerd.")
    p.add_argument("--config", type=Path, help="YAML settings file (default /etc/faasd-py/config.yaml, "
                                               "or $FAASD_PY_CONFIG)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set network.subnet=10.70.0.0/16 (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the daemon: gateway API on :8080, functions on containerd")
    inst = sub.add_parser("install", help="create the state dir, admin password, config and systemd unit")
    inst.add_argument("--no-systemd", action="store_true", help="do not install the systemd unit")
    sub.add_parser("version", help="print the version")
    image = sub.add_parser("image", help="image commands")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    imp = image_sub.add_parser("import", help="import an OCI or docker-save tar into containerd")
    imp.add_argument("file", type=Path)
    imp.add_argument("--namespace", "-n", default="openfaas-fn", help="containerd namespace (default openfaas-fn)")
    imp.add_argument("--name", default=None, help="image name for archives whose ref names have no repository")
    return p


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


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"faasd-py {__version__}")
        return
    try:
        settings = load_settings(args.config, overrides=_overrides(args.set))
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "up":
            from faasd_py.daemon import run

            asyncio.run(run(settings))
        elif args.command == "install":
            from faasd_py.install import install

            result = install(settings, systemd=not args.no_systemd)
            print(result.summary())
        elif args.command == "image":
            asyncio.run(_import(settings, args.file, args.namespace, args.name))
    except FaasdError as exc:
        print(f"faasd-py: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
