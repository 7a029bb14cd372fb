"""What an image is built on: a list of layers plus config defaults.

Today the only producer is :func:`faasd_py.build.hostbase.host_python_base` (offline, assembled
from the host's interpreter); a base pulled from a registry can later produce the same shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from faasd_py.build.layer import Layer

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APP_UID = 12000
APP_GID = 12000
APP_HOME = "/home/app"


@dataclass(frozen=True, slots=True)
class Base:
    layers: tuple[Layer, ...]
    python: str  # interpreter path inside the image, runs the watchdog
    python_cache_tag: str = ""  # e.g. "cpython-311": .pyc files we add must match it
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8")
    user: str = f"{APP_UID}:{APP_GID}"
    working_dir: str = APP_HOME
    architecture: str = "amd64"
    os: str = "linux"
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
