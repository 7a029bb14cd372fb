"""The ``hosts`` and ``resolv.conf`` that every function container bind-mounts read-only.

Why updates are written in place: a file bind mount pins the inode the container was started
with. Writing a temp file and renaming it over the original would swap the inode under the
path while running containers keep reading the old one, forever. So every write opens the
existing file, takes an exclusive ``flock`` (serialising writers, also across processes such as
the CLI), writes the new content at offset 0 and truncates to its length. Readers take no lock:
for the few microseconds of a write they may see a torn file (a shrinking update can briefly
leave a stale tail), which a resolver tolerates; a missing file never happens.

The hosts file is its own state: lines after the marker are the hosts added at run time, kept
across rewrites (a restarted daemon re-adds its core services, running functions keep resolving
them meanwhile).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from faasd_py.config import NetworkSettings
from faasd_py.errors import InvalidRequest

log = logging.getLogger(__name__)

_Change = Callable[[dict[str, str]], None]

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")  # the upstream servers resolved uses
GATEWAY_NAMES = ("faasd-py", "gateway")
_MARKER = "# hosts added by faasd-py (add_host)"
_BASE_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback", *GATEWAY_NAMES})
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def gateway_ip(subnet: str) -> str:
    """The bridge address host-local hands out as gateway: the subnet's first host."""
    return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))


def render_hosts(gateway: str, extra: Mapping[str, str]) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{gateway}\t{' '.join(GATEWAY_NAMES)}",
    ]
    if extra:
        lines.append(_MARKER)
        lines += [f"{ip}\t{name}" for name, ip in extra.items()]
    return "\n".join(lines) + "\n"


def parse_extra_hosts(text: str) -> dict[str, str]:
    """The hosts added at run time: everything after the marker, name -> ip."""
    extra: dict[str, str] = {}
    _, found, tail = text.partition(_MARKER + "\n")
    if not found:
        return extra
    for line in tail.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            for name in parts[1:]:
                extra[name] = parts[0]
    return extra


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> ResolvConf:
        conf = cls()
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(parts) < 2:
                continue
            if parts[0] == "nameserver":
                conf.nameservers.append(parts[1])
            elif parts[0] in ("search", "domain"):  # glibc: the last of the two wins
                conf.search = parts[1:]
            elif parts[0] == "options":
                conf.options += parts[1:]
        return conf

    def render(self) -> str:
        lines = [f"nameserver {ns}" for ns in self.nameservers]
        if self.search:
            lines.append("search " + " ".join(self.search))
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "\n".join(lines) + "\n" if lines else ""


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return True  # not an address at all: no use inside a container either


def derive_resolv(settings: NetworkSettings, host_text: str | None, systemd_text: str | None) -> ResolvConf:
    """What functions get. Configured nameservers win; else the host's, minus loopback ones (a
    container's 127.0.0.53 is not the host's resolver); when that leaves none, systemd-resolved's
    upstream list. Never an invented public resolver: with none left, none is written."""
    source = ResolvConf.parse(host_text or "")
    if settings.nameservers:
        for ns in settings.nameservers:
            try:
                ipaddress.ip_address(ns.split("%", 1)[0])
            except ValueError as exc:
                raise InvalidRequest(f"config: network.nameservers: {ns!r} is not an IP address") from exc
        servers = list(settings.nameservers)
    else:
        servers = [ns for ns in source.nameservers if not _is_loopback(ns)]
        if not servers and systemd_text is not None:
            upstream = ResolvConf.parse(systemd_text)
            servers = [ns for ns in upstream.nameservers if not _is_loopback(ns)]
            if servers:
                source = upstream
        if not servers:
            log.warning(
                "functions get no nameserver: the host has only loopback resolvers and no systemd-resolved "
                "upstream list; set network.nameservers to give them one"
            )
    return ResolvConf(nameservers=servers, search=list(settings.search) or source.search, options=source.options)


def _rewrite(fd: int, text: str) -> None:
    data = text.encode()
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], written)
    os.ftruncate(fd, len(data))
    os.fchmod(fd, 0o644)  # readable by any container user, whatever the umask was


def _open_locked(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
    return fd


def write_in_place(path: Path, text: str) -> None:
    """Rewrite ``path`` keeping its inode (see the module docstring), under an exclusive flock."""
    fd = _open_locked(path)
    try:
        _rewrite(fd, text)
    finally:
        os.close(fd)


class SharedFiles:
    """``<directory>/hosts`` and ``<directory>/resolv.conf``. Blocking (small local files):
    async callers use ``asyncio.to_thread``."""

    def __init__(
        self,
        directory: Path,
        settings: NetworkSettings,
        host_resolv: Path = HOST_RESOLV_CONF,
        systemd_resolv: Path = SYSTEMD_RESOLV_CONF,
    ) -> None:
        self.directory = directory
        self.hosts_path = directory / "hosts"
        self.resolv_path = directory / "resolv.conf"
        self.gateway = gateway_ip(settings.subnet)
        self._settings = settings
        self._host_resolv = host_resolv
        self._systemd_resolv = systemd_resolv

    def write(self) -> None:
        """(Re)write both files; hosts added earlier are kept."""
        self.directory.mkdir(parents=True, exist_ok=True)
        resolv = derive_resolv(self._settings, _read(self._host_resolv), _read(self._systemd_resolv))
        write_in_place(self.resolv_path, resolv.render())
        self._update_hosts(lambda extra: None)

    def add_host(self, name: str, ip: str) -> None:
        """Map ``name`` to ``ip`` for every function (replaces an earlier mapping of ``name``)."""
        if not _HOSTNAME_RE.fullmatch(name) or name in _BASE_NAMES:
            raise InvalidRequest(f"invalid or reserved host name {name!r}")
        try:
            address = str(ipaddress.ip_address(ip))
        except ValueError as exc:
            raise InvalidRequest(f"invalid IP address {ip!r} for host {name}") from exc

        def change(extra: dict[str, str]) -> None:
            extra[name] = address

        self._update_hosts(change)

    def remove_host(self, name: str) -> bool:
        """False when ``name`` was not there."""
        removed: list[str] = []

        def change(extra: dict[str, str]) -> None:
            if extra.pop(name, None) is not None:
                removed.append(name)

        self._update_hosts(change)
        return bool(removed)

    def hosts(self) -> dict[str, str]:
        """The run-time hosts currently in the file."""
        return parse_extra_hosts(_read(self.hosts_path) or "")

    def _update_hosts(self, change: _Change) -> None:
        """Read-modify-write under one lock, so concurrent writers never lose each other's hosts."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(self.hosts_path)
        try:
            with open(fd, closefd=False) as f:
                extra = parse_extra_hosts(f.read())
            change(extra)
            _rewrite(fd, render_hosts(self.gateway, extra))
        finally:
            os.close(fd)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


