"""One Settings object for the whole daemon: YAML file, then ``FAASD_PY_*`` env vars, then flags.

Every value an operator may need to change (faasd users asked for the subnet, the nameserver,
timeouts and registries) lives here instead of being hard-coded where it is used.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faasd_py.errors import InvalidRequest

DEFAULT_CONFIG_FILE = Path("/etc/faasd-py/config.yaml")
ENV_PREFIX = "FAASD_PY_"
CONFIG_ENV = "FAASD_PY_CONFIG"
# FAASD_PY_* variables that are not settings: the config file, the image build cache (faasd_py.build)
NOT_SETTINGS = frozenset({CONFIG_ENV, "FAASD_PY_BUILD_CACHE"})


@dataclass(slots=True)
class RegistrySettings:
    # registry host -> list of mirror endpoints (e.g. {"docker.io": ["http://10.0.0.5:5000"]})
    mirrors: dict[str, list[str]] = field(default_factory=dict)
    # hosts (host or host:port) reached over plain HTTP; loopback is always insecure
    insecure: list[str] = field(default_factory=list)
    # a docker config.json: "auths", "credsStore", "credHelpers"; empty = <state_dir>/.docker/config.json
    docker_config: str = ""
    pull_policy: str = "Always"  # or IfNotPresent


@dataclass(slots=True)
class NetworkSettings:
    cni_bin_dirs: list[str] = field(default_factory=lambda: ["/usr/lib/cni", "/opt/cni/bin"])
    # where the conflist lives; empty = render from the packaged template into <state_dir>/cni
    cni_conf_dir: str = ""
    network_name: str = "openfaas-cni-bridge"
    bridge: str = "openfaas0"
    subnet: str = "10.62.0.0/16"
    # host-local IPAM state; under /run so a reboot starts clean (restore reconciles anyway)
    ipam_dir: str = "/run/faasd-py/ipam"
    # netns names are "<prefix><namespace>-<container id>" under /run/netns
    netns_prefix: str = "faasd-"
    # functions reach only their own namespace's functions on the bridge (nftables; see
    # network/tenant_firewall.py); core services and the host stay reachable for all
    isolate_namespaces: bool = True
    # nameservers written into the functions' resolv.conf; empty = the host's non-loopback ones
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Timeouts:
    ready: float = 60.0  # deploy: how long a new replica may take to answer its health check
    invoke_wait: float = 30.0  # an invocation waits this long for a starting/resuming replica
    upstream: float = 300.0  # an invocation's whole upstream exchange
    # a client's request head, and each pause in its body, must arrive within this long (408 or the
    # connection closed, like the Go gateway's read_timeout); also how long an idle keep-alive
    # connection stays open
    read: float = 60.0
    stop_grace: float = 10.0  # SIGTERM -> SIGKILL on delete/update (per function: env grace_period)


@dataclass(slots=True)
class ScalingSettings:
    # functions without a com.openfaas.scale.zero label scale to zero when this is true
    zero_by_default: bool = True
    # idle this long (no invocation) -> paused through the cgroup freezer: keeps memory, uses no CPU
    idle_after: float = 300.0
    # paused this much longer -> the task is stopped to free its memory; the next call is a cold start
    stop_after: float = 3600.0
    sweep_interval: float = 1.0


@dataclass(slots=True)
class AsyncSettings:
    """Queued invocations (/async-function/*): JetStream on the nats core service."""

    enabled: bool = True  # false: no /async-function routes (404), no NATS connection
    nats_url: str = "nats://127.0.0.1:4222"
    stream: str = "faas-request"  # JetStream stream (work-queue retention, file storage)
    subject: str = "faas-request"  # calls are published to <subject>.<namespace>.<name>
    max_body: int = 16 << 20  # request bodies; above the server's max_payload they go to an object store
    attempts: int = 5  # tries per invocation (429, 502-504) and per callback (429, 5xx, unreachable)
    backoff: float = 1.0  # first retry delay; doubles each time up to backoff_max
    backoff_max: float = 30.0
    function_concurrency: int = 4  # invocations of one function at once; more wait (in the worker or the stream)
    max_inflight: int = 64  # calls the worker handles at once, all functions together
    ack_wait: float = 30.0  # an unacknowledged call is redelivered this long after its worker died
    callback_timeout: float = 30.0


@dataclass(slots=True)
class Settings:
    state_dir: Path = Path("/var/lib/faasd-py")
    run_dir: Path = Path("/run/faasd-py")
    containerd_socket: str = "/run/containerd/containerd.sock"
    snapshotter: str = "overlayfs"
    runtime: str = "io.containerd.runc.v2"
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8082
    max_json_body: int = 1 << 20  # /system request bodies
    max_invoke_body: int = 64 << 20  # /function request bodies
    fast_invoke: bool = True  # plain /function calls served by gateway/front.py; False: all through aiohttp
    log_level: str = "info"
    journald: bool = True  # send function output to journald (else only drained)
    compose_file: str = ""  # the core services; empty = <state_dir>/docker-compose.yaml
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    timeouts: Timeouts = field(default_factory=Timeouts)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    queue: AsyncSettings = field(default_factory=AsyncSettings)

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "secrets" / "basic-auth-password"

    @property
    def user_file(self) -> Path:
        return self.state_dir / "secrets" / "basic-auth-user"

    @property
    def nats_token_file(self) -> Path:
        return self.state_dir / "secrets" / "nats-token"

    @property
    def compose_path(self) -> Path:
        return Path(self.compose_file) if self.compose_file else self.state_dir / "docker-compose.yaml"

    @property
    def docker_config_path(self) -> Path:
        if self.registry.docker_config:
            return Path(self.registry.docker_config)
        return self.state_dir / ".docker" / "config.json"


def _coerce(current: Any, value: Any, where: str) -> Any:
    """Convert YAML/env values to the type of the default (so typos fail at start, clearly)."""
    if dataclasses.is_dataclass(current) and not isinstance(current, type):
        if not isinstance(value, dict):
            raise InvalidRequest(f"config: {where} must be a mapping")
        return _apply(current, value, where)
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(current, Path):
            return Path(str(value))
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return list(value)
        if isinstance(current, dict):
            return dict(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"config: invalid value for {where}: {value!r}") from exc


def _apply(obj: Any, values: dict[str, Any], where: str = "") -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        attr = key.replace("-", "_")
        if attr not in names:
            raise InvalidRequest(f"config: unknown setting {where + key!r}")
        setattr(obj, attr, _coerce(getattr(obj, attr), value, where + key))
    return obj


def set_dotted(settings: Settings, dotted: str, value: Any) -> None:
    """Set ``network.subnet``-style keys (used by env vars and ``--set``)."""
    *parents, leaf = dotted.split(".")
    target: Any = settings
    for p in parents:
        target = getattr(target, p.replace("-", "_"), None)
        if target is None or not dataclasses.is_dataclass(target):
            raise InvalidRequest(f"config: unknown setting {dotted!r}")
    _apply(target, {leaf: value}, ".".join(parents) + "." if parents else "")


def load_settings(
    path: Path | None = None, env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """YAML file < env (``FAASD_PY_NETWORK__SUBNET=...``) < explicit overrides (flags)."""
    settings = Settings()
    env = dict(os.environ) if env is None else env
    if path is None:
        path = Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else DEFAULT_CONFIG_FILE
        missing_ok = CONFIG_ENV not in env
    else:
        missing_ok = False
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise InvalidRequest(f"config: {path} must hold a mapping")
        _apply(settings, data)
    elif not missing_ok:
        raise InvalidRequest(f"config: {path} does not exist")
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key not in NOT_SETTINGS:
            set_dotted(settings, key[len(ENV_PREFIX):].lower().replace("__", "."), value)
    for key, value in (overrides or {}).items():
        set_dotted(settings, key, value)
    if settings.registry.pull_policy not in ("Always", "IfNotPresent"):
        raise InvalidRequest("config: registry.pull_policy must be Always or IfNotPresent")
    return settings
