"""OpenFaaS wire types shared by every layer.

Parsing is strict where faas-cli's peers are strict (names, quantities) and lenient where
OpenFaaS is lenient (unknown fields are ignored), so a stack.yml that works on OpenFaaS on
Kubernetes works here and vice versa. Every parse error is an :class:`InvalidRequest` whose
message names the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from faasd_py.errors import InvalidRequest

DEFAULT_NAMESPACE = "openfaas-fn"

# Labels this project reads itself (OpenFaaS names, so stack.yml files move unchanged).
LABEL_SCALE_MIN = "com.openfaas.scale.min"
LABEL_SCALE_MAX = "com.openfaas.scale.max"
LABEL_SCALE_ZERO = "com.openfaas.scale.zero"
LABEL_SCALE_ZERO_DURATION = "com.openfaas.scale.zero-duration"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_KEY = re.compile(r"^[^=\x00]+$")


def validate_name(value: object, what: str = "function name") -> str:
    """A DNS-1123 label (<= 63 chars), as Kubernetes and OpenFaaS require for names."""
    if value is None or value == "":
        raise InvalidRequest(f"{what} is required")
    if not isinstance(value, str):
        raise InvalidRequest(f"invalid {what}: must be a string, got {type(value).__name__} {value!r}"[:200])
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise InvalidRequest(
            f"invalid {what} {value!r}: must be a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def validate_namespace(value: object) -> str:
    """An empty or missing namespace means the default one, as in faas-provider."""
    if value is None or value == "":
        return DEFAULT_NAMESPACE
    return validate_name(value, "namespace")


def validate_secret_name(value: object) -> str:
    """A DNS-1123 subdomain (what faas-cli accepts), which also rules out path traversal."""
    if value is None or value == "":
        raise InvalidRequest("secret name is required")
    if not isinstance(value, str):
        raise InvalidRequest(f"invalid secret name: must be a string, got {type(value).__name__} {value!r}"[:200])
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise InvalidRequest(f"invalid secret name {value!r}: must be a DNS-1123 subdomain")
    return value


# --- quantities (Kubernetes resource.Quantity syntax) -------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+]?[0-9]*\.?[0-9]+)([eE][+-]?[0-9]+)?([a-zA-Z]{0,2})$")


def parse_quantity(text: str, what: str) -> Decimal:
    """Parse ``128Mi``, ``1G``, ``100m``, ``0.5``, ``1e3`` into a Decimal."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise InvalidRequest(f"invalid {what} {text!r}: not a quantity such as 128Mi or 100m")
    number, exponent, suffix = m.groups()
    try:
        value = Decimal(number + (exponent or ""))
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise InvalidRequest(f"invalid {what} {text!r}") from exc
    if exponent and suffix:
        raise InvalidRequest(f"invalid {what} {text!r}: exponent and suffix together")
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix in _DECIMAL:
        return value * _DECIMAL[suffix]
    raise InvalidRequest(f"invalid {what} {text!r}: unknown suffix {suffix!r}")


# Bounds that keep a valid-looking quantity from failing later, inside runc (a 500 after the
# container was half made): its cgroup fields are int64, and the kernel caps the CFS quota.
MAX_MEMORY_BYTES = 2**63 - 1
MIN_MEMORY_LIMIT = 6 * 2**20  # as Docker: below it runc cannot start the container's first process
MAX_CPU_MILLIS = 10**9  # a million cores; the kernel refuses quotas above ~1.7e8 cores
# execve's limits: one "KEY=value" string below MAX_ARG_STRLEN (128 KiB); all of them well within ARG_MAX
MAX_ENV_ENTRY = 128 * 1024 - 1
MAX_ENV_TOTAL = 1024 * 1024


def memory_bytes(text: str) -> int:
    value = parse_quantity(text, "memory")
    if value <= 0:
        raise InvalidRequest(f"invalid memory {text!r}: must be positive")
    if value > MAX_MEMORY_BYTES:
        raise InvalidRequest(f"invalid memory {text!r}: larger than {MAX_MEMORY_BYTES} bytes")
    return int(value)


def cpu_millis(text: str) -> int:
    """CPU in thousandths of a core; ``100m`` is 100, ``1`` is 1000."""
    value = parse_quantity(text, "cpu") * 1000
    if value < 1:
        raise InvalidRequest(f"invalid cpu {text!r}: must be at least 1m")
    if value > MAX_CPU_MILLIS:
        raise InvalidRequest(f"invalid cpu {text!r}: more than {MAX_CPU_MILLIS // 1000} cores")
    return int(value)


def _check_env_size(env: dict[str, str]) -> None:
    """The process's environment must fit execve, or the task fails to start (a 500, not a 400)."""
    total = 0
    for key, value in env.items():
        size = len(key.encode()) + 1 + len(value.encode())
        if size > MAX_ENV_ENTRY:
            raise InvalidRequest(f"environment variable {key!r} is too long: {size} bytes, at most {MAX_ENV_ENTRY}")
        total += size + 1
    if total > MAX_ENV_TOTAL:
        raise InvalidRequest(f"environment variables too large: {total} bytes, at most {MAX_ENV_TOTAL}")


# --- helpers for lenient JSON decoding ----------------------------------------------------------


def _str_map(data: dict[str, Any], key: str) -> dict[str, str]:
    raw = data.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{key} must be an object of strings")
    out: dict[str, str] = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise InvalidRequest(f"{key}[{k!r}] must be a string")
        out[str(k)] = v
    return out


def _str_list(data: dict[str, Any], key: str) -> list[str]:
    raw = data.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise InvalidRequest(f"{key} must be a list of strings")
    return list(raw)


def _opt_str(data: dict[str, Any], key: str) -> str:
    raw = data.get(key)
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise InvalidRequest(f"{key} must be a string")
    return raw


def _object(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return data


def format_time(ts: datetime | None) -> str | None:
    """RFC 3339 with nanosecond-free precision, as Go's time.Time marshals (faas-cli parses it)."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- wire types ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunctionResources:
    memory: str = ""
    cpu: str = ""

    @classmethod
    def from_json(cls, raw: object, what: str) -> FunctionResources | None:
        if raw is None:
            return None
        data = _object(raw, what)
        res = cls(memory=_opt_str(data, "memory"), cpu=_opt_str(data, "cpu"))
        if res.memory and memory_bytes(res.memory) < MIN_MEMORY_LIMIT and what == "limits":
            raise InvalidRequest(f"invalid memory limit {res.memory!r}: the minimum is 6Mi")
        if res.cpu:
            cpu_millis(res.cpu)
        return res if (res.memory or res.cpu) else None

    def to_json(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.memory:
            out["memory"] = self.memory
        if self.cpu:
            out["cpu"] = self.cpu
        return out


@dataclass(frozen=True, slots=True)
class FunctionDeployment:
    """``POST/PUT /system/functions`` body; also what we store with each container."""

    service: str
    image: str
    namespace: str = DEFAULT_NAMESPACE
    env_process: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    constraints: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    limits: FunctionResources | None = None
    requests: FunctionResources | None = None
    read_only_root_filesystem: bool = False

    @classmethod
    def from_json(cls, raw: object) -> FunctionDeployment:
        data = _object(raw, "function deployment")
        service = validate_name(data.get("service"), "function name (service)")
        image = data.get("image")
        if not isinstance(image, str) or not image.strip():
            raise InvalidRequest("image is required")
        env_vars = _str_map(data, "envVars")
        for key in env_vars:
            if not _ENV_KEY.match(key):
                raise InvalidRequest(f"invalid environment variable name {key!r}")
        env_process = _opt_str(data, "envProcess")
        _check_env_size({**env_vars, "fprocess": env_process})
        secrets = _str_list(data, "secrets")
        for s in secrets:
            validate_secret_name(s)
        ro = data.get("readOnlyRootFilesystem", False)
        if not isinstance(ro, bool):
            raise InvalidRequest("readOnlyRootFilesystem must be a boolean")
        return cls(
            service=service,
            image=image.strip(),
            namespace=validate_namespace(data.get("namespace")),
            env_process=env_process,
            env_vars=env_vars,
            constraints=_str_list(data, "constraints"),
            secrets=secrets,
            labels=_str_map(data, "labels"),
            annotations=_str_map(data, "annotations"),
            limits=FunctionResources.from_json(data.get("limits"), "limits"),
            requests=FunctionResources.from_json(data.get("requests"), "requests"),
            read_only_root_filesystem=ro,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"service": self.service, "image": self.image, "namespace": self.namespace}
        if self.env_process:
            out["envProcess"] = self.env_process
        if self.env_vars:
            out["envVars"] = dict(self.env_vars)
        if self.constraints:
            out["constraints"] = list(self.constraints)
        if self.secrets:
            out["secrets"] = list(self.secrets)
        out["labels"] = dict(self.labels)
        out["annotations"] = dict(self.annotations)
        if self.limits:
            out["limits"] = self.limits.to_json()
        if self.requests:
            out["requests"] = self.requests.to_json()
        if self.read_only_root_filesystem:
            out["readOnlyRootFilesystem"] = True
        return out

    @property
    def memory_limit_bytes(self) -> int | None:
        return memory_bytes(self.limits.memory) if self.limits and self.limits.memory else None

    @property
    def cpu_limit_millis(self) -> int | None:
        return cpu_millis(self.limits.cpu) if self.limits and self.limits.cpu else None


@dataclass(frozen=True, slots=True)
class FunctionUsage:
    cpu: float = 0.0  # cores (CPU seconds per second), as OpenFaaS reports it
    total_memory_bytes: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"cpu": self.cpu, "totalMemoryBytes": self.total_memory_bytes}


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """faasd-py's own view of a function (the ``faasd`` field; faas-cli ignores unknown fields)."""

    state: str  # active | paused | stopped | crashloop
    restarts: int = 0  # restarts after crashes, all replicas together
    last_exit: str = ""  # "exit status 1", "OOMKilled"; empty until a replica exits unexpectedly
    wakes: int = 0  # times woken from zero (paused or stopped) since the daemon started

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "lastExit": self.last_exit, "wakes": self.wakes}


@dataclass(frozen=True, slots=True)
class FunctionStatus:
    """``GET /system/functions`` item and ``GET /system/function/{name}`` body."""

    deployment: FunctionDeployment
    replicas: int = 0
    available_replicas: int = 0
    invocation_count: float = 0.0
    created_at: datetime | None = None
    usage: FunctionUsage | None = None
    runtime: RuntimeState | None = None

    @property
    def name(self) -> str:
        return self.deployment.service

    def to_json(self) -> dict[str, Any]:
        d = self.deployment.to_json()
        out: dict[str, Any] = {"name": d.pop("service")}
        out.update(d)
        out["invocationCount"] = self.invocation_count
        out["replicas"] = self.replicas
        out["availableReplicas"] = self.available_replicas
        out["createdAt"] = format_time(self.created_at)
        if self.usage is not None:
            out["usage"] = self.usage.to_json()
        if self.runtime is not None:
            out["faasd"] = self.runtime.to_json()
        return out


@dataclass(frozen=True, slots=True)
class DeleteFunctionRequest:
    function_name: str
    namespace: str

    @classmethod
    def from_json(cls, raw: object) -> DeleteFunctionRequest:
        data = _object(raw, "delete request")
        return cls(
            function_name=validate_name(data.get("functionName"), "functionName"),
            namespace=validate_namespace(data.get("namespace")),
        )


@dataclass(frozen=True, slots=True)
class ScaleServiceRequest:
    service_name: str
    replicas: int
    namespace: str

    @classmethod
    def from_json(cls, raw: object, path_name: str = "") -> ScaleServiceRequest:
        """The body's ``serviceName`` wins, else the path name (faas-provider reads the body)."""
        data = _object(raw, "scale request")
        name = data.get("serviceName")
        if name is None or name == "":
            name = path_name
        replicas = data.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise InvalidRequest("replicas must be a non-negative integer")
        return cls(
            service_name=validate_name(name, "serviceName"),
            replicas=replicas,
            namespace=validate_namespace(data.get("namespace")),
        )


@dataclass(frozen=True, slots=True)
class Secret:
    name: str
    namespace: str
    value: bytes = b""

    @classmethod
    def from_json(cls, raw: object, *, require_value: bool = True) -> Secret:
        import base64
        import binascii

        data = _object(raw, "secret")
        name = validate_secret_name(data.get("name"))
        namespace = validate_namespace(data.get("namespace"))
        raw_value = data.get("rawValue")
        value: bytes
        if raw_value not in (None, ""):
            if not isinstance(raw_value, str):
                raise InvalidRequest("rawValue must be base64 text")
            try:
                value = base64.b64decode(raw_value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequest("rawValue is not valid base64") from exc
        else:
            text = data.get("value")
            if text is None:
                if require_value:
                    raise InvalidRequest("secret value (value or rawValue) is required")
                text = ""
            if not isinstance(text, str):
                raise InvalidRequest("value must be a string")
            value = text.encode()
        return cls(name=name, namespace=namespace, value=value)

    def to_json(self) -> dict[str, str]:
        """Values are never returned by the API."""
        return {"name": self.name, "namespace": self.namespace}


@dataclass(frozen=True, slots=True)
class FunctionNamespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: object, path_name: str = "") -> FunctionNamespace:
        data = _object(raw, "namespace")
        name = data.get("name") or path_name
        return cls(
            name=validate_name(name, "namespace"),
            labels=_str_map(data, "labels"),
            annotations=_str_map(data, "annotations"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "labels": dict(self.labels), "annotations": dict(self.annotations)}


@dataclass(frozen=True, slots=True)
class LogMessage:
    name: str
    namespace: str
    instance: str
    timestamp: datetime
    text: str

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "instance": self.instance,
            "timestamp": self.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "text": self.text,
        }


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    provider: str
    orchestration: str
    release: str
    sha: str

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "orchestration": self.orchestration,
            "version": {"release": self.release, "sha": self.sha},
        }


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds from a Go duration (``90s``, ``1m30s``, ``250ms``) or a plain number of seconds.

    Watchdog timeouts, ``grace_period`` and the scale-to-zero labels all use Go's syntax.
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise InvalidRequest(f"invalid {what} {text!r}: expected a Go duration such as 90s or 20m")
    return total
