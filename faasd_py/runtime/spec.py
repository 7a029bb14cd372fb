"""The OCI runtime spec for one function container: a pure function of image config and deploy input.

Nothing here talks to containerd, so every security-relevant property of a function container
(capabilities, seccomp, mounts, namespaces, limits) is decided in one place and unit-tested.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

from faasd_py.errors import InvalidRequest
from faasd_py.runtime.model import ImageConfig
from faasd_py.runtime.seccomp import default_profile as default_seccomp_profile

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD_US = 100_000
NOFILE_LIMIT = 65_536


def nofile_limit() -> int:
    """65536, unless the host's hard limit is lower: runc cannot raise it past the shim's own limit
    (the shim inherits containerd's, which we assume matches ours) and the task would fail to start."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return NOFILE_LIMIT if hard == resource.RLIM_INFINITY else min(NOFILE_LIMIT, hard)


# What a web process needs and nothing more: file ownership and permission handling for its own
# files (CHOWN, DAC_OVERRIDE, FOWNER, FSETID), dropping to another user (SETUID, SETGID), signalling
# its children (KILL) and binding a low port (NET_BIND_SERVICE). Deliberately absent: NET_RAW
# (raw sockets allow ARP/DNS spoofing on the shared bridge), SYS_ADMIN (mounts and most escapes),
# MKNOD, SYS_CHROOT, SETFCAP, SETPCAP and AUDIT_WRITE, which Docker grants only for legacy reasons.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_NET_BIND_SERVICE",
)

# fmt: off
KNOWN_CAPABILITIES = frozenset((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
))
# fmt: on

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (major, minor) of the character devices a process may use; everything else is denied.
# runc creates the nodes (null, zero, full, random, urandom, tty) itself; pts/ptmx come with devpts.
ALLOWED_CHAR_DEVICES = (
    (1, 3),  # null
    (1, 5),  # zero
    (1, 7),  # full
    (1, 8),  # random
    (1, 9),  # urandom
    (5, 0),  # tty
    (5, 2),  # ptmx
    (136, None),  # pts/*
)


@dataclass(frozen=True, slots=True)
class BindMount:
    source: str
    destination: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def build_spec(
    *,
    image: ImageConfig,
    user: User,
    hostname: str,
    env: dict[str, str],
    args: list[str] | None,
    netns_path: str,
    cgroups_path: str,
    binds: list[BindMount],
    memory_limit: int | None,
    cpu_millis: int | None,
    read_only_rootfs: bool,
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES,
    seccomp: bool = True,
) -> dict[str, Any]:
    """Build the spec. ``args`` replaces the whole argv (entrypoint + cmd) when given."""
    process_args = list(args) if args is not None else [*image.entrypoint, *image.cmd]
    if not process_args:
        raise InvalidRequest("the image has no entrypoint or cmd, and no command was given")
    if len(hostname.encode()) > 64:
        raise InvalidRequest(f"hostname {hostname!r} is longer than 64 bytes")
    caps = _capabilities(capabilities)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": _user(user),
            "args": process_args,
            "env": merge_env(image.env, env),
            "cwd": _cwd(image.working_dir),
            "capabilities": {
                "bounding": caps,
                # a non-root process gets no effective capabilities, as with a normal setuid to a
                # non-root user; noNewPrivileges keeps setuid binaries from raising them again
                "effective": caps if user.uid == 0 else [],
                "permitted": caps if user.uid == 0 else [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile_limit(), "soft": nofile_limit()}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": read_only_rootfs},
        "hostname": hostname,
        "mounts": _mounts(binds, read_only_rootfs),
        "linux": {
            "resources": _resources(memory_limit, cpu_millis),
            "cgroupsPath": cgroups_path,
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": netns_path},
            ],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if seccomp:
        spec["linux"]["seccomp"] = default_seccomp_profile()
    return spec


def merge_env(image_env: tuple[str, ...] | list[str], env: dict[str, str]) -> list[str]:
    """Image env, then deploy env replacing same keys in place; one entry per key.

    Go programs (the OpenFaaS watchdog among them) take the *first* occurrence of a key, so a
    duplicate would silently hide the deploy-time value.
    """
    merged: dict[str, str] = {}
    for entry in image_env:
        key, sep, value = entry.partition("=")
        if key and sep:
            merged[key] = value
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidRequest(f"invalid environment variable name {key!r}")
        merged[key] = value
    if "PATH" not in merged:
        merged = {"PATH": DEFAULT_PATH, **merged}
    return [f"{k}={v}" for k, v in merged.items()]


def _user(user: User) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        out["additionalGids"] = list(user.additional_gids)
    return out


def _cwd(working_dir: str) -> str:
    if not working_dir:
        return "/"
    return working_dir if working_dir.startswith("/") else "/" + working_dir  # Docker reads relative as from /


def _capabilities(names: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for name in names:
        cap = name.upper()
        cap = cap if cap.startswith("CAP_") else "CAP_" + cap
        if cap not in KNOWN_CAPABILITIES:
            raise InvalidRequest(f"unknown capability {name!r}")
        if cap not in out:
            out.append(cap)
    return out


def _mounts(binds: list[BindMount], read_only_rootfs: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]
    if read_only_rootfs:
        # the watchdog writes /tmp/.lock to report health; tmpfs pages count against the memory limit
        mounts.append(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        )
    for b in binds:
        if not b.destination.startswith("/"):
            raise InvalidRequest(f"mount destination {b.destination!r} is not an absolute path")
        mounts.append(
            {
                "destination": b.destination,
                "type": "bind",
                "source": b.source,
                "options": ["rbind", "rprivate", "ro" if b.read_only else "rw"],
            }
        )
    return mounts


def _resources(memory_limit: int | None, cpu_millis: int | None) -> dict[str, Any]:
    devices: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for major, minor in ALLOWED_CHAR_DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        devices.append(rule)
    resources: dict[str, Any] = {"devices": devices}
    if memory_limit is not None:
        if memory_limit <= 0:
            raise InvalidRequest(f"memory limit must be positive, got {memory_limit}")
        # swap (memory+swap in OCI terms) equal to the limit: the function may not swap at all
        resources["memory"] = {"limit": memory_limit, "swap": memory_limit}
    if cpu_millis is not None:
        quota = cpu_millis * CPU_PERIOD_US // 1000
        if quota < 1000:  # the kernel's minimum CFS quota is 1 ms per period
            raise InvalidRequest(f"CPU limit {cpu_millis}m is below the minimum of 10m")
        resources["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    return resources
