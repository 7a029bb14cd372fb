"""The OCI spec builder: every security and contract property checked on the built dict."""

from __future__ import annotations

import json
import resource
from typing import Any

import pytest

from faasd_py.errors import InvalidRequest
from faasd_py.runtime import seccomp
from faasd_py.runtime.model import ImageConfig
from faasd_py.runtime.spec import DEFAULT_CAPABILITIES, DEFAULT_PATH, BindMount, User, build_spec, merge_env

IMAGE = ImageConfig(
    entrypoint=("/usr/bin/fwatchdog",),
    cmd=("--verbose",),
    env=("PATH=/usr/local/bin:/usr/bin:/bin", "fprocess=cat", "NODE_VERSION=20"),
    user="app",
    working_dir="/home/app",
)


def build(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "image": IMAGE,
        "user": User(12000, 12000),
        "hostname": "figlet",
        "env": {},
        "args": None,
        "netns_path": "/var/run/netns/faasd-openfaas-fn-figlet",
        "cgroups_path": "/openfaas-fn/figlet",
        "binds": [],
        "memory_limit": None,
        "cpu_millis": None,
        "read_only_rootfs": False,
    }
    kwargs.update(overrides)
    return build_spec(**kwargs)


def mount_at(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    matches = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(matches) == 1, f"{destination}: {matches}"
    found: dict[str, Any] = matches[0]
    return found


# --- process ---------------------------------------------------------------------------------


def test_deploy_env_replaces_image_env_in_place_without_duplicates() -> None:
    env = build(env={"fprocess": "figlet", "write_timeout": "1s"})["process"]["env"]
    assert env == [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "fprocess=figlet",
        "NODE_VERSION=20",
        "write_timeout=1s",
    ]
    keys = [e.split("=", 1)[0] for e in env]
    assert len(keys) == len(set(keys))


def test_env_values_may_contain_equals_signs() -> None:
    assert "DSN=a=b;c=d" in build(env={"DSN": "a=b;c=d"})["process"]["env"]


def test_default_path_when_image_has_none() -> None:
    env = build(image=ImageConfig(cmd=("/bin/app",)))["process"]["env"]
    assert env[0] == f"PATH={DEFAULT_PATH}"


def test_image_env_duplicates_collapse_to_the_last_value() -> None:
    assert merge_env(["A=1", "B=2", "A=3", "junk"], {}) == [f"PATH={DEFAULT_PATH}", "A=3", "B=2"]


@pytest.mark.parametrize("key", ["", "A=B", "NUL\0"])
def test_invalid_env_names_are_rejected(key: str) -> None:
    with pytest.raises(InvalidRequest):
        build(env={key: "x"})


def test_args_are_entrypoint_plus_cmd() -> None:
    assert build()["process"]["args"] == ["/usr/bin/fwatchdog", "--verbose"]


def test_args_override_replaces_the_whole_command() -> None:
    assert build(args=["/bin/sleep", "10"])["process"]["args"] == ["/bin/sleep", "10"]


def test_no_command_at_all_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="no entrypoint or cmd"):
        build(image=ImageConfig())


@pytest.mark.parametrize(("workdir", "cwd"), [("/home/app", "/home/app"), ("", "/"), ("srv", "/srv")])
def test_cwd(workdir: str, cwd: str) -> None:
    image = ImageConfig(cmd=("/bin/app",), working_dir=workdir)
    assert build(image=image)["process"]["cwd"] == cwd


def test_user_and_additional_groups() -> None:
    assert build()["process"]["user"] == {"uid": 12000, "gid": 12000}
    spec = build(user=User(1000, 1000, (27, 100)))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [27, 100]}


def test_hostname() -> None:
    assert build()["hostname"] == "figlet"
    with pytest.raises(InvalidRequest):
        build(hostname="x" * 65)


def test_no_new_privileges_and_nofile_rlimit() -> None:
    process = build()["process"]
    assert process["noNewPrivileges"] is True
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": expected, "soft": expected}]


# --- capabilities ----------------------------------------------------------------------------


def test_default_capabilities_are_minimal() -> None:
    caps = build(user=User(0, 0))["process"]["capabilities"]
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert "inheritable" not in caps and "ambient" not in caps
    for dangerous in ("CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_MKNOD", "CAP_SYS_MODULE"):
        assert dangerous not in caps["bounding"]


def test_non_root_user_gets_no_effective_capabilities() -> None:
    caps = build(user=User(12000, 12000))["process"]["capabilities"]
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES)
    assert caps["effective"] == [] and caps["permitted"] == []


def test_capabilities_are_normalised_and_validated() -> None:
    caps = build(user=User(0, 0), capabilities=("net_raw", "CAP_NET_RAW", "CHOWN"))["process"]["capabilities"]
    assert caps["bounding"] == ["CAP_NET_RAW", "CAP_CHOWN"]
    with pytest.raises(InvalidRequest, match="unknown capability"):
        build(capabilities=("CAP_MAKE_ME_ROOT",))


# --- namespaces, cgroups, root ---------------------------------------------------------------


def test_namespaces_join_the_netns_and_create_the_rest() -> None:
    namespaces = build()["linux"]["namespaces"]
    by_type = {n["type"]: n for n in namespaces}
    assert set(by_type) == {"pid", "ipc", "uts", "mount", "network"}
    assert by_type["network"] == {"type": "network", "path": "/var/run/netns/faasd-openfaas-fn-figlet"}
    assert all("path" not in n for t, n in by_type.items() if t != "network")
    assert "user" not in by_type


def test_cgroups_path_is_as_given() -> None:
    assert build()["linux"]["cgroupsPath"] == "/openfaas-fn/figlet"


def test_writable_rootfs_has_no_tmp_mount() -> None:
    spec = build(read_only_rootfs=False)
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert all(m["destination"] != "/tmp" for m in spec["mounts"])


def test_read_only_rootfs_gets_a_writable_tmp() -> None:
    spec = build(read_only_rootfs=True)
    assert spec["root"]["readonly"] is True
    tmp = mount_at(spec, "/tmp")
    assert tmp["type"] == "tmpfs"
    assert "mode=1777" in tmp["options"] and "ro" not in tmp["options"]


# --- mounts ----------------------------------------------------------------------------------


def test_standard_mounts() -> None:
    spec = build()
    assert mount_at(spec, "/proc")["type"] == "proc"
    assert mount_at(spec, "/dev")["type"] == "tmpfs"
    assert mount_at(spec, "/dev/pts")["type"] == "devpts"
    assert mount_at(spec, "/dev/shm")["type"] == "tmpfs"
    assert mount_at(spec, "/dev/mqueue")["type"] == "mqueue"
    sysfs = mount_at(spec, "/sys")
    assert sysfs["type"] == "sysfs" and "ro" in sysfs["options"]
    cgroup = mount_at(spec, "/sys/fs/cgroup")
    assert cgroup["type"] == "cgroup" and "ro" in cgroup["options"]
    for m in spec["mounts"]:
        if m["destination"] != "/dev":
            assert "nosuid" in m["options"], m


def test_bind_mounts_ro_and_rw() -> None:
    spec = build(
        binds=[
            BindMount("/var/lib/faasd-py/hosts", "/etc/hosts"),
            BindMount("/srv/data", "/data", read_only=False),
        ]
    )
    hosts = mount_at(spec, "/etc/hosts")
    assert hosts["type"] == "bind" and hosts["source"] == "/var/lib/faasd-py/hosts"
    assert "rbind" in hosts["options"] and "ro" in hosts["options"]
    data = mount_at(spec, "/data")
    assert "rw" in data["options"] and "ro" not in data["options"]


def test_binds_come_after_tmp_so_they_can_live_under_it() -> None:
    spec = build(read_only_rootfs=True, binds=[BindMount("/srv/x", "/tmp/x")])
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations.index("/tmp") < destinations.index("/tmp/x")


def test_relative_bind_destination_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        build(binds=[BindMount("/srv/x", "etc/x")])


def test_masked_and_readonly_paths() -> None:
    linux = build()["linux"]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/acpi"):
        assert path in linux["maskedPaths"]
    for path in ("/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/irq", "/proc/fs"):
        assert path in linux["readonlyPaths"]


# --- resources -------------------------------------------------------------------------------


def test_no_limits_by_default() -> None:
    resources = build()["linux"]["resources"]
    assert "memory" not in resources and "cpu" not in resources


def test_memory_limit_without_swap() -> None:
    resources = build(memory_limit=128 * 1024 * 1024)["linux"]["resources"]
    assert resources["memory"] == {"limit": 134217728, "swap": 134217728}


def test_cpu_limit_as_quota_over_period() -> None:
    assert build(cpu_millis=500)["linux"]["resources"]["cpu"] == {"quota": 50000, "period": 100000}
    assert build(cpu_millis=2000)["linux"]["resources"]["cpu"] == {"quota": 200000, "period": 100000}


@pytest.mark.parametrize(("field", "value"), [("memory_limit", 0), ("memory_limit", -1), ("cpu_millis", 5)])
def test_nonsense_limits_are_rejected(field: str, value: int) -> None:
    with pytest.raises(InvalidRequest):
        build(**{field: value})


def test_devices_default_deny_plus_the_usual_char_devices() -> None:
    devices = build()["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    allowed = {(d["type"], d["major"], d.get("minor")) for d in devices[1:] if d["allow"]}
    for dev in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0)):  # null zero full random urandom tty
        assert ("c", *dev) in allowed
    assert all(d["type"] == "c" for d in devices[1:])


# --- seccomp ---------------------------------------------------------------------------------


def _denied(profile: dict[str, Any]) -> set[str]:
    return {n for rule in profile["syscalls"] if "args" not in rule for n in rule["names"]}


def test_seccomp_allows_by_default_and_denies_dangerous_syscalls_with_eperm() -> None:
    profile = build()["linux"]["seccomp"]
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    required = {
        "mount", "umount2", "pivot_root", "kexec_load", "kexec_file_load", "init_module", "finit_module",
        "delete_module", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "unshare", "setns",
        "swapon", "swapoff", "reboot", "open_by_handle_at", "userfaultfd", "ptrace",
    }  # fmt: skip
    assert required <= _denied(profile)
    for rule in profile["syscalls"]:
        assert rule["action"] == "SCMP_ACT_ERRNO"
        if "clone3" not in rule["names"]:
            assert rule["errnoRet"] == 1
    assert not {"read", "write", "clone", "execve", "personality", "socket"} & _denied(profile)


def test_seccomp_personality_denies_aslr_off_but_allows_the_query() -> None:
    rules = [r for r in build()["linux"]["seccomp"]["syscalls"] if r["names"] == ["personality"]]
    assert rules

    def denied(persona: int) -> bool:
        return any(
            all((persona & a["value"]) == a["valueTwo"] for a in r["args"] if a["op"] == "SCMP_CMP_MASKED_EQ")
            for r in rules
        )

    assert denied(0x0040000)  # ADDR_NO_RANDOMIZE
    assert denied(0x0400000)  # READ_IMPLIES_EXEC
    assert not denied(0xFFFFFFFF)  # query
    assert not denied(0)  # PER_LINUX
    assert not denied(8)  # PER_LINUX32


def test_seccomp_blocks_new_user_namespaces_via_clone() -> None:
    [rule] = [r for r in build()["linux"]["seccomp"]["syscalls"] if r["names"] == ["clone"]]
    [arg] = rule["args"]
    assert arg["index"] == 0 and arg["op"] == "SCMP_CMP_MASKED_EQ"
    assert arg["value"] == arg["valueTwo"] == 0x10000000


def test_seccomp_architectures() -> None:
    assert seccomp.profile_for("x86_64")["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert seccomp.profile_for("aarch64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert seccomp.profile_for("riscv64")["architectures"] == []


def test_seccomp_can_be_turned_off_and_copies_are_independent() -> None:
    assert "seccomp" not in build(seccomp=False)["linux"]
    a = build()
    a["linux"]["seccomp"]["syscalls"].clear()
    assert build()["linux"]["seccomp"]["syscalls"]


def test_spec_is_json_serialisable() -> None:
    spec = build(memory_limit=1 << 27, cpu_millis=250, read_only_rootfs=True, binds=[BindMount("/a", "/b")])
    assert json.loads(json.dumps(spec)) == spec
