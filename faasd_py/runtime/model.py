"""Plain data the runtime layer hands upwards, so no caller ever touches a protobuf message."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Mount:
    """A containerd mount (rootfs layers from a snapshot, or a bind mount in a spec)."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an OCI image config a container spec needs."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """An image that is present in a containerd namespace and unpacked for the snapshotter."""

    name: str  # normalised reference, e.g. docker.io/library/alpine:latest
    digest: str  # digest of the image record's target (index or manifest)
    manifest_digest: str  # the platform manifest that was chosen
    config_digest: str
    chain_id: str  # parent for Snapshots.Prepare
    config: ImageConfig
    size: int = 0  # compressed bytes of the chosen manifest's layers


class TaskState(enum.Enum):
    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    id: str
    pid: int
    state: TaskState
    exit_status: int = 0
    exited_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    image: str
    labels: dict[str, str]
    snapshotter: str
    snapshot_key: str
    runtime: str
    created_at: datetime | None
    updated_at: datetime | None
    spec: dict[str, Any] | None  # the OCI runtime spec, decoded from JSON
    extensions: dict[str, bytes] = field(default_factory=dict)  # extension name -> Any.value


@dataclass(frozen=True, slots=True)
class Event:
    """A containerd event; ``payload`` is the decoded message (e.g. events TaskExit) or None."""

    namespace: str
    topic: str
    timestamp: datetime | None
    payload: Any
