"""Our default seccomp profile: allow everything except the syscalls a function has no business making.

A deny-list (rather than Docker's allow-list) keeps the profile short enough to review and
cannot break a runtime that uses some new, harmless syscall; what it denies is the kernel
surface container escapes and host-level damage go through: mounting, namespaces, kernel
modules and kexec, BPF and perf, the keyring, swap/reboot/clock, handle-based open, userfaultfd
and tracing other processes. Most of these also need capabilities we never grant; the filter
is the second wall for the day a kernel bug makes one of them reachable without.
"""

from __future__ import annotations

import copy
import platform
from typing import Any

EPERM = 1
ENOSYS = 38  # the same number on every architecture below

_DENIED = (
    # filesystems and mounts
    "mount", "umount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # namespaces: joining or creating them undoes the isolation runc set up
    "unshare", "setns",
    # kernel code and kernel replacement
    "init_module", "finit_module", "delete_module", "create_module", "kexec_load", "kexec_file_load",
    # in-kernel programs, profiling and the key store (frequent privilege-escalation vectors)
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    # host-wide state
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "settimeofday", "clock_settime", "stime",
    "iopl", "ioperm", "uselib", "lookup_dcookie", "vhangup", "nfsservctl", "_sysctl",
    # handle-based open bypasses path checks (the "shocker" escape); userfaultfd widens kernel races
    "open_by_handle_at", "userfaultfd",
    # io_uring: a large kernel surface with a history of escapes, which seccomp cannot see into
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # inspecting or modifying other processes
    "ptrace", "process_vm_readv", "process_vm_writev",
)  # fmt: skip

_CLONE_NEWUSER = 0x10000000
# personality() flags that weaken ASLR or make data executable. Bit 31 set means the call is the
# query personality(0xffffffff), which stays allowed: each rule matches "flag set, bit 31 clear".
_PERSONALITY_QUERY_BIT = 0x80000000
_PERSONALITY_FLAGS = (
    0x0040000,  # ADDR_NO_RANDOMIZE
    0x0100000,  # MMAP_PAGE_ZERO
    0x0200000,  # ADDR_COMPAT_LAYOUT
    0x0400000,  # READ_IMPLIES_EXEC
)

_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def _masked(index: int, mask: int, value: int) -> dict[str, Any]:
    # OCI/runc: for MASKED_EQ "value" is the mask and "valueTwo" the value compared after masking
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def _build(machine: str) -> dict[str, Any]:
    deny: list[dict[str, Any]] = [{"names": list(_DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}]
    # clone(CLONE_NEWUSER) is how an unprivileged process gets a fresh set of capabilities
    deny.append(
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [_masked(0, _CLONE_NEWUSER, _CLONE_NEWUSER)],
        }
    )
    # clone3 passes its flags in memory where seccomp cannot look; ENOSYS makes libc fall back to clone
    deny.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    for flag in _PERSONALITY_FLAGS:
        deny.append(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [_masked(0, flag | _PERSONALITY_QUERY_BIT, flag)],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        # the native architecture plus its 32-bit companions, so a 32-bit binary meets the same filter
        "architectures": list(_ARCHITECTURES.get(machine, [])),
        "syscalls": deny,
    }


_PROFILE = _build(platform.machine())


def default_profile() -> dict[str, Any]:
    """A fresh copy of the profile for this host's architecture (callers may modify it)."""
    return copy.deepcopy(_PROFILE)


def profile_for(machine: str) -> dict[str, Any]:
    """The profile for another architecture (``uname -m`` spelling); unknown ones filter native only."""
    return _build(machine)


def denied_syscalls() -> frozenset[str]:
    """Names denied outright (without argument conditions)."""
    return frozenset(_DENIED)
