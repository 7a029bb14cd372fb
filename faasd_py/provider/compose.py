"""``docker-compose.yaml``: the core services, parsed into plain data (no I/O beyond reading it).

Version-agnostic: the ``version`` key is ignored and only the keys below are understood; any
other key is a warning, never a crash, so a file written for Docker Compose still loads.
Values may use ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``,
``$VAR`` and ``$$`` (a literal ``$``), read from the daemon's environment.

Service keys: image, command, entrypoint, environment, volumes (bind mounts only; relative
sources are relative to the file's directory), user, cap_add, cap_drop, depends_on (start
order), ports (published by the daemon itself, on 127.0.0.1 unless a host IP is given),
restart (no | always | on-failure[:N] | unless-stopped; default always) and stop_grace_period.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faasd_py.errors import InvalidRequest
from faasd_py.network.dns import GATEWAY_NAMES
from faasd_py.types import parse_duration

DEFAULT_HOST_IP = "127.0.0.1"
DEFAULT_RESTART = "always"
DEFAULT_STOP_GRACE = 5.0  # faasd waits 30 s on every start; a core service that needs longer says so
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
SERVICE_KEYS = frozenset({
    "image", "command", "entrypoint", "environment", "volumes", "user", "cap_add", "cap_drop", "depends_on",
    "ports", "restart", "stop_grace_period",
})
TOP_KEYS = frozenset({"version", "services", "name"})
PRIVATE_KEY = "x-faasd-py-private"  # an extension key (x-*), which other compose tools ignore
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_RESERVED_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback", *GATEWAY_NAMES})
_VAR_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<invalid>))"
)


@dataclass(frozen=True, slots=True)
class Volume:
    source: str  # absolute host path
    target: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class PortMapping:
    host_ip: str
    host_port: int
    container_port: int

    def __str__(self) -> str:
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port}->{self.container_port}/tcp"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    mode: str = DEFAULT_RESTART
    max_retries: int | None = None  # on-failure:N

    def should_restart(self, exit_status: int, retries: int) -> bool:
        """``retries``: restarts since the service last ran long enough to count as healthy."""
        if self.mode == "no":
            return False
        if self.mode == "on-failure":
            return exit_status != 0 and (self.max_retries is None or retries < self.max_retries)
        return True

    def __str__(self) -> str:
        return f"{self.mode}:{self.max_retries}" if self.max_retries is not None else self.mode


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: str
    entrypoint: tuple[str, ...] | None = None  # None: the image's
    command: tuple[str, ...] | None = None  # None: the image's Cmd (unless entrypoint is given)
    environment: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[Volume, ...] = ()
    user: str = ""  # "": the image's
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    stop_grace_period: float = DEFAULT_STOP_GRACE
    # x-faasd-py-private: functions cannot connect to it (namespace isolation); the host still can
    private: bool = False

    def argv(self, image_entrypoint: tuple[str, ...], image_cmd: tuple[str, ...]) -> list[str]:
        """Docker's rule: ``command`` replaces the image's Cmd, ``entrypoint`` its Entrypoint, and
        an explicit entrypoint drops the image's Cmd."""
        entrypoint = self.entrypoint if self.entrypoint is not None else image_entrypoint
        default_cmd = () if self.entrypoint is not None else image_cmd
        cmd = self.command if self.command is not None else default_cmd
        return [*entrypoint, *cmd]


@dataclass(frozen=True)
class ComposeFile:
    path: Path
    services: tuple[ServiceSpec, ...]  # in start order: every service after those it depends on
    warnings: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [s.name for s in self.services]

    def get(self, name: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.name == name), None)


def load_compose(path: Path, env: Mapping[str, str] | None = None) -> ComposeFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read the compose file: {exc.strerror or exc}") from exc
    return parse_compose(text, path, dict(os.environ) if env is None else env)


def parse_compose(text: str, path: Path, env: Mapping[str, str]) -> ComposeFile:
    """``path`` names the file in messages; its directory anchors relative bind sources."""
    where = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{where}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where}: the top level must be a mapping with a 'services' key")
    warnings: list[str] = []
    ctx = _Context(where, env, path.parent.absolute(), warnings)
    for key in data:
        if str(key) not in TOP_KEYS and not str(key).startswith("x-"):
            what = "named volumes are not supported (use bind mounts)" if key == "volumes" else "ignored"
            warnings.append(f"{where}: top-level key {key!r}: {what}")
    raw_services = data.get("services") or {}
    if not isinstance(raw_services, dict):
        raise InvalidRequest(f"{where}: 'services' must be a mapping of service name to settings")
    services = [_service(str(name), body, ctx) for name, body in raw_services.items()]
    _check_ports(services, where)
    ordered = start_order(services, where)
    return ComposeFile(path=path, services=tuple(ordered), warnings=tuple(warnings))


# --- interpolation -------------------------------------------------------------------------------


def interpolate(value: str, env: Mapping[str, str], where: str, warnings: list[str] | None = None) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise InvalidRequest(f"{where}: invalid interpolation in {value!r} (write $$ for a literal $)")
        name = m.group("plain") or m.group("braced")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return arg if unset else str(current)
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise InvalidRequest(f"{where}: {name} is required: {arg or 'not set'}")
            return current
        if op in (":+", "+"):
            is_set = current is not None and (op == "+" or current != "")
            return arg if is_set else ""
        if current is None:
            if warnings is not None:
                warnings.append(f"{where}: variable {name} is not set; using an empty string")
            return ""
        return current

    return _VAR_RE.sub(one, value)


class _Context:
    def __init__(self, where: str, env: Mapping[str, str], base_dir: Path, warnings: list[str]) -> None:
        self.where = where
        self.env = env
        self.base_dir = base_dir
        self.warnings = warnings

    def text(self, value: Any, what: str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise InvalidRequest(f"{self.where}: {what} must be a string")
        return interpolate(value, self.env, f"{self.where}: {what}", self.warnings)

    def words(self, value: Any, what: str) -> tuple[str, ...]:
        """A string (split like a shell would) or a list of strings."""
        if isinstance(value, str):
            try:
                return tuple(shlex.split(self.text(value, what)))
            except ValueError as exc:
                raise InvalidRequest(f"{self.where}: {what}: {exc}") from exc
        if isinstance(value, list):
            return tuple(self.text(v, what) for v in value)
        raise InvalidRequest(f"{self.where}: {what} must be a string or a list of strings")

    def names(self, value: Any, what: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise InvalidRequest(f"{self.where}: {what} must be a list")
        return tuple(self.text(v, what) for v in value)


# --- one service ---------------------------------------------------------------------------------


def _service(name: str, body: Any, ctx: _Context) -> ServiceSpec:
    where = f"service {name!r}"
    if not _NAME_RE.fullmatch(name):
        raise InvalidRequest(f"{ctx.where}: {where}: a service name must be a DNS label "
                             "(lowercase letters, digits and '-', at most 63) because it becomes a host name")
    if name in _RESERVED_NAMES:
        raise InvalidRequest(f"{ctx.where}: {where}: the name is reserved ({', '.join(sorted(_RESERVED_NAMES))})")
    if not isinstance(body, dict):
        raise InvalidRequest(f"{ctx.where}: {where} must be a mapping")
    for key in body:
        if str(key) not in SERVICE_KEYS and not str(key).startswith("x-"):
            ctx.warnings.append(f"{ctx.where}: {where}: key {key!r} is not supported and is ignored")
    image = ctx.text(body.get("image") or "", f"{where}.image").strip()
    if not image:
        raise InvalidRequest(f"{ctx.where}: {where} needs an image")
    spec = ServiceSpec(
        name=name,
        image=image,
        entrypoint=ctx.words(body["entrypoint"], f"{where}.entrypoint") if body.get("entrypoint") is not None
        else None,
        command=ctx.words(body["command"], f"{where}.command") if body.get("command") is not None else None,
        environment=_environment(body.get("environment"), ctx, where),
        volumes=tuple(_volume(v, ctx, where) for v in _list(body.get("volumes"), ctx, f"{where}.volumes")),
        user=ctx.text(body["user"], f"{where}.user").strip() if body.get("user") is not None else "",
        cap_add=_caps(body.get("cap_add"), ctx, f"{where}.cap_add"),
        cap_drop=_caps(body.get("cap_drop"), ctx, f"{where}.cap_drop"),
        depends_on=_depends_on(body.get("depends_on"), ctx, where),
        ports=tuple(parse_port(p, ctx, where) for p in _list(body.get("ports"), ctx, f"{where}.ports")),
        restart=_restart(body.get("restart", DEFAULT_RESTART), ctx, where),
        stop_grace_period=_grace(body.get("stop_grace_period"), ctx, where),
        private=_flag(body.get(PRIVATE_KEY, False), f"{where}.{PRIVATE_KEY}", ctx),
    )
    return spec


def _flag(value: Any, what: str, ctx: _Context) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidRequest(f"{ctx.where}: {what} must be true or false, got {value!r}")


def _list(value: Any, ctx: _Context, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{ctx.where}: {what} must be a list")
    return value


def _environment(value: Any, ctx: _Context, where: str) -> dict[str, str]:
    """A mapping or a ``KEY=value`` list; a key without a value takes the daemon's own value,
    and is left out when the daemon has none (as Docker Compose does)."""
    what = f"{where}.environment"
    pairs: list[tuple[str, Any]] = []
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise InvalidRequest(f"{ctx.where}: {what}: entries must be KEY=value strings")
            key, sep, rest = item.partition("=")
            pairs.append((key, rest if sep else None))
    else:
        raise InvalidRequest(f"{ctx.where}: {what} must be a mapping or a list of KEY=value")
    env: dict[str, str] = {}
    for key, raw in pairs:
        key = key.strip()
        if not key or "=" in key or "\0" in key:
            raise InvalidRequest(f"{ctx.where}: {what}: invalid variable name {key!r}")
        if raw is None:
            if key in ctx.env:
                env[key] = ctx.env[key]
            continue
        env[key] = ctx.text(raw, f"{what}.{key}")
    return env


def _caps(value: Any, ctx: _Context, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    out = []
    for cap in ctx.names(value, what):
        cap = cap.strip().upper()
        out.append(cap if cap.startswith("CAP_") or cap == "ALL" else "CAP_" + cap)
    return tuple(out)


def _depends_on(value: Any, ctx: _Context, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):  # the long form: {name: {condition: ...}}; only the order is used
        return tuple(str(k) for k in value)
    return ctx.names(value, f"{where}.depends_on")


def _restart(value: Any, ctx: _Context, where: str) -> RestartPolicy:
    if value is False:  # YAML 1.1 reads a bare `no` as false
        return RestartPolicy("no")
    text = ctx.text(value, f"{where}.restart").strip() if value is not None else DEFAULT_RESTART
    mode, _, retries = text.partition(":")
    if mode not in RESTART_POLICIES or (retries and mode != "on-failure"):
        raise InvalidRequest(f"{ctx.where}: {where}.restart: {text!r} is not one of "
                             "no, always, on-failure[:N], unless-stopped")
    if retries:
        if not retries.isdigit():
            raise InvalidRequest(f"{ctx.where}: {where}.restart: {text!r}: N must be a number")
        return RestartPolicy(mode, int(retries))
    return RestartPolicy(mode)


def _grace(value: Any, ctx: _Context, where: str) -> float:
    if value is None:
        return DEFAULT_STOP_GRACE
    seconds = parse_duration(ctx.text(value, f"{where}.stop_grace_period"), f"{where}.stop_grace_period")
    if seconds < 0:
        raise InvalidRequest(f"{ctx.where}: {where}.stop_grace_period must not be negative")
    return seconds


# --- volumes -------------------------------------------------------------------------------------


def _volume(value: Any, ctx: _Context, where: str) -> Volume:
    what = f"{where}.volumes"
    if isinstance(value, dict):
        kind = value.get("type", "bind")
        if kind != "bind":
            raise InvalidRequest(f"{ctx.where}: {what}: type {kind!r} is not supported; only bind mounts are")
        source = ctx.text(value.get("source") or "", f"{what}.source")
        target = ctx.text(value.get("target") or "", f"{what}.target")
        read_only = bool(value.get("read_only", False))
        unknown = set(value) - {"type", "source", "target", "read_only", "bind"}
        if unknown:
            ctx.warnings.append(f"{ctx.where}: {what}: ignoring {', '.join(sorted(map(str, unknown)))}")
    elif isinstance(value, str):
        parts = ctx.text(value, what).split(":")
        if len(parts) == 1:
            raise InvalidRequest(f"{ctx.where}: {what}: {value!r}: anonymous volumes are not supported; "
                                 "give a host path, e.g. ./data:/data")
        if len(parts) > 3:
            raise InvalidRequest(f"{ctx.where}: {what}: {value!r} is not SOURCE:TARGET[:ro|rw]")
        source, target = parts[0], parts[1]
        options = parts[2].split(",") if len(parts) == 3 else []
        bad = [o for o in options if o not in ("ro", "rw", "z", "Z")]
        if bad:
            raise InvalidRequest(f"{ctx.where}: {what}: {value!r}: unsupported option(s) {', '.join(bad)}")
        read_only = "ro" in options
    else:
        raise InvalidRequest(f"{ctx.where}: {what}: entries must be strings or mappings")
    if not source or not target:
        raise InvalidRequest(f"{ctx.where}: {what}: a bind mount needs a source and a target")
    if not target.startswith("/"):
        raise InvalidRequest(f"{ctx.where}: {what}: target {target!r} must be an absolute path")
    return Volume(_bind_source(source, ctx, what), os.path.normpath(target), read_only)


def _bind_source(source: str, ctx: _Context, what: str) -> str:
    if source.startswith("~"):
        source = os.path.expanduser(source)
    if source.startswith("/"):
        return os.path.normpath(source)
    if source == "." or source.startswith(("./", "../")) or source == "..":
        return os.path.normpath(ctx.base_dir / source)
    raise InvalidRequest(f"{ctx.where}: {what}: {source!r} is a named volume, which is not supported; "
                         f"use a host path such as ./{source}")


# --- ports ---------------------------------------------------------------------------------------


def parse_port(value: Any, ctx: _Context | None = None, where: str = "service") -> PortMapping:
    """``"8222"``, ``8222``, ``"4222:4222"``, ``"127.0.0.1:9090:9090"``, ``"[::1]:9090:9090"``
    (an optional ``/tcp``), or the long form ``{target, published, host_ip}``. Without a host IP
    the port is published on 127.0.0.1 only (Docker uses every interface)."""
    file = ctx.where + ": " if ctx else ""
    what = f"{file}{where}.ports: {value!r}"
    if isinstance(value, bool):
        raise InvalidRequest(f"{what} is not a port")
    if isinstance(value, dict):
        protocol = str(value.get("protocol", "tcp"))
        if protocol != "tcp":
            raise InvalidRequest(f"{what}: only tcp ports can be published")
        target = _port_number(value.get("target"), what)
        published = value.get("published")
        host_ip = str(value.get("host_ip") or DEFAULT_HOST_IP)
        return PortMapping(_host_ip(host_ip, what), _port_number(published, what) if published else target, target)
    if isinstance(value, int):
        return PortMapping(DEFAULT_HOST_IP, _port_number(value, what), _port_number(value, what))
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} is not a port mapping")
    text = ctx.text(value, f"{where}.ports") if ctx else value
    text, _, protocol = text.strip().partition("/")
    if protocol and protocol != "tcp":
        raise InvalidRequest(f"{what}: only tcp ports can be published")
    host_ip = DEFAULT_HOST_IP
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise InvalidRequest(f"{what}: expected [IPv6]:HOST:CONTAINER")
        host_ip, text = text[1:end], text[end + 2:]
        parts = text.split(":")
        if len(parts) != 2:
            raise InvalidRequest(f"{what}: expected [IPv6]:HOST:CONTAINER")
    else:
        parts = text.split(":")
        if len(parts) == 3:
            host_ip, parts = parts[0], parts[1:]
        elif len(parts) > 3:  # an unbracketed IPv6 host
            host_ip, parts = ":".join(parts[:-2]), parts[-2:]
    if any("-" in p for p in parts):
        raise InvalidRequest(f"{what}: port ranges are not supported")
    if len(parts) == 1:
        port = _port_number(parts[0], what)
        return PortMapping(_host_ip(host_ip, what), port, port)
    if not parts[0]:
        raise InvalidRequest(f"{what}: give the host port (random host ports are not supported)")
    return PortMapping(_host_ip(host_ip, what), _port_number(parts[0], what), _port_number(parts[1], what))


def _port_number(value: Any, what: str) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        raise InvalidRequest(f"{what}: {value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise InvalidRequest(f"{what}: port {port} is out of range")
    return port


def _host_ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidRequest(f"{what}: {text!r} is not an IP address") from None


def _check_ports(services: list[ServiceSpec], where: str) -> None:
    """Two listeners on one host port fail at bind time; say which services clash instead."""
    seen: list[tuple[PortMapping, str]] = []
    for svc in services:
        for p in svc.ports:
            for other, owner in seen:
                if other.host_port != p.host_port:
                    continue
                wildcard = ipaddress.ip_address(other.host_ip).is_unspecified or ipaddress.ip_address(
                    p.host_ip).is_unspecified
                if other.host_ip == p.host_ip or wildcard:
                    raise InvalidRequest(f"{where}: host port {p.host_port} is published twice "
                                         f"({owner}: {other}, {svc.name}: {p})")
            seen.append((p, svc.name))


# --- order ---------------------------------------------------------------------------------------


def start_order(services: list[ServiceSpec], where: str = "compose file") -> list[ServiceSpec]:
    """Dependencies first; otherwise the file's order. Unknown dependencies and cycles are errors
    naming the services involved."""
    by_name: dict[str, ServiceSpec] = {}
    for svc in services:
        if svc.name in by_name:
            raise InvalidRequest(f"{where}: service {svc.name!r} is defined twice")
        by_name[svc.name] = svc
    for svc in services:
        for dep in svc.depends_on:
            if dep not in by_name:
                raise InvalidRequest(f"{where}: service {svc.name!r} depends on {dep!r}, which is not defined")
            if dep == svc.name:
                raise InvalidRequest(f"{where}: service {svc.name!r} depends on itself")
    ordered: list[ServiceSpec] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name):], name]
            raise InvalidRequest(f"{where}: depends_on cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in by_name[name].depends_on:
            visit(dep, [*path, name])
        state[name] = 2
        ordered.append(by_name[name])

    for svc in services:
        visit(svc.name, [])
    return ordered
