"""Named network namespaces under /run/netns, one per function instance.

No fork anywhere: pyroute2's ``netns.create``/``NetNS`` fork a helper process, and a fork in a
process that runs gRPC (the daemon) aborts in gRPC's fork handlers; pyroute2 also stops such
helpers with SIGTERM, which a still-running child would route into the daemon's own asyncio
signal wakeup fd. unshare(CLONE_NEWNET) applies to the calling thread only, so a short-lived
thread creates the namespace, bind-mounts it and brings ``lo`` up with an ioctl.

Every function here is blocking: async callers use ``asyncio.to_thread``. pyroute2's sync
``IPRoute`` (host netns only) must never run on the event loop's thread: it drives a loop of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import os
import re
import socket
import struct
import threading
from collections.abc import Callable

from pyroute2 import IPRoute

from faasd_py.errors import NetworkError

NETNS_DIR = "/run/netns"
# A key becomes part of a file name, a CNI container id and an iptables comment: keep it to the
# characters all three accept, and short enough for NAME_MAX with any sane prefix.
MAX_KEY_LENGTH = 128
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class NsState(enum.Enum):
    ABSENT = "absent"
    MOUNTED = "mounted"  # an nsfs bind mount: a live namespace
    STALE = "stale"  # a plain file left behind (e.g. /run survived a reboot, the mount did not)


def check_key(key: str) -> str:
    """Reject rather than rewrite: a rewritten key could collide with another and would not
    round-trip through :func:`list_names`, which reconciliation depends on."""
    if not (0 < len(key) <= MAX_KEY_LENGTH) or not _KEY_RE.fullmatch(key):
        raise NetworkError(
            f"invalid network key {key!r}: use 1-{MAX_KEY_LENGTH} characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return key


def path_of(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def state(name: str) -> NsState:
    """One stat per call: every nsfs inode shares the nsfs device, a leftover plain file does not."""
    try:
        st = os.stat(path_of(name))
    except FileNotFoundError:
        return NsState.ABSENT
    return NsState.MOUNTED if st.st_dev == _nsfs_dev() else NsState.STALE


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _in_fresh_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a new thread that dies afterwards, so its changed netns never leaks into a
    pooled thread (see the module docstring for why not pyroute2)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    t = threading.Thread(target=target, name="netns", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def create(name: str, *, loopback: bool = False) -> None:
    """``ip netns add``: a new netns bind-mounted at /run/netns/<name>; optionally ``lo`` up."""
    path = path_of(name)
    os.makedirs(NETNS_DIR, exist_ok=True)

    def work() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
        os.close(fd)
        try:
            _check(_libc.unshare(_CLONE_NEWNET), "unshare")
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(_libc.mount(src, path.encode(), b"none", _MS_BIND, None), "mount")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if loopback:
            _loopback_up_here()

    try:
        _in_fresh_thread(work)
    except OSError as exc:
        raise NetworkError(f"cannot create network namespace {name}: {exc}") from exc


def _loopback_up_here() -> None:
    """SIOCSIFFLAGS on a socket opened in the current thread's netns (no netlink, no fork)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def remove(name: str) -> None:
    """Idempotent; also clears a stale plain file. Lazy unmount (MNT_DETACH) never blocks."""
    path = path_of(name)
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return
        if err != errno.EINVAL:  # EINVAL: not a mount point (a stale plain file): just unlink it
            raise NetworkError(f"cannot remove network namespace {name}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise NetworkError(f"cannot remove network namespace {name}: {exc}") from exc


def list_names(prefix: str) -> list[str]:
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if e.startswith(prefix))


def delete_link(ifname: str) -> bool:
    """Delete a host link (the bridge on uninstall). False when it did not exist."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])
        except Exception as exc:  # NetlinkError; ENODEV when it vanished meanwhile
            if ipr.link_lookup(ifname=ifname):
                raise NetworkError(f"cannot delete link {ifname}: {exc}") from exc
        return True


def repair_bridge_mac(bridge: str) -> bool:
    """Give a port-less bridge with an all-zero MAC a random one; True when it had to.

    The bridge plugin creates the bridge, and only at the very end of a successful ADD pins its
    MAC. When that first ADD fails (and its veth is removed), the kernel leaves the bridge with
    00:00:00:00:00:00, and every later ADD fails with "could not set bridge's mac: invalid
    argument". A zero MAC means no ports, so nothing can be disturbed by fixing it.
    """
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=bridge)
        if not idx:
            return False
        link = ipr.get_links(idx[0])[0]
        if link.get("address") not in (None, "00:00:00:00:00:00"):
            return False
        mac = bytearray(os.urandom(6))
        mac[0] = (mac[0] & 0xFE) | 0x02  # unicast, locally administered
        ipr.link("set", index=idx[0], address=":".join(f"{b:02x}" for b in mac))
        return True
