"""Keeps the namespaces' functions apart on the bridge they share (nftables).

Every function's veth hangs off one Linux bridge, so without a filter any function could open
connections to any other function's address, whatever its namespace. With br_netfilter, frames
bridged between two ports pass the IP forward hook with the bridge as both the in and the out
device; one ``inet`` table per bridge filters exactly those:

* both ends in the same namespace's set: accepted;
* either end a core service (set ``shared``: NATS, Prometheus, the compose file's services):
  accepted (functions use them; NATS has its own token);
* anything else between ports is dropped: other namespaces, addresses not admitted yet (a
  replica between CNI ADD and :meth:`TenantFirewall.admit`, so it never starts unfiltered), and
  IPv6, which nothing here uses and whose link-local addresses would bypass the sets.

Traffic between a function and the host (the gateway, DNS, the Internet) is routed, not bridged
between ports, and never affected. The table is rewritten whole and atomically (one ``nft -f``
transaction) on every change. Callers evict an address *before* CNI releases it, so a reused
address never inherits another namespace's rights.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from faasd_py.errors import NetworkError
from faasd_py.network.tool import run_tool

log = logging.getLogger(__name__)

NFT = "nft"
SHARED = ""  # the "namespace" of core services
BRIDGE_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
SYSCTL_DIR = Path("/proc/sys/net/bridge")


def table_name(bridge: str) -> str:
    return "faasd_py_" + "".join(c if c.isalnum() else "_" for c in bridge)


def set_name(namespace: str) -> str:
    """A valid nft identifier for any namespace name, reversible (see :func:`namespace_of`)."""
    return "shared" if namespace == SHARED else "t_" + namespace.encode().hex()


def namespace_of(name: str) -> str | None:
    if name == "shared":
        return SHARED
    if not name.startswith("t_"):
        return None
    try:
        return bytes.fromhex(name[2:]).decode()
    except ValueError:
        return None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "") + '"'


def render(bridge: str, members: Mapping[str, str]) -> str:
    """The ``nft -f`` script that replaces the bridge's table with one for ``members`` (ip -> namespace)."""
    table = table_name(bridge)
    by_namespace: dict[str, list[str]] = {SHARED: []}
    for ip, namespace in members.items():
        by_namespace.setdefault(namespace, []).append(ip)
    lines = [f"table inet {table}", f"delete table inet {table}", f"table inet {table} {{"]
    for namespace in sorted(by_namespace):
        ips = sorted(by_namespace[namespace], key=ipaddress.IPv4Address)
        elements = f" elements = {{ {', '.join(ips)} }};" if ips else ""
        lines.append(f"  set {set_name(namespace)} {{ type ipv4_addr;{elements} }}")
    lines += [
        "  chain forward {",
        "    type filter hook forward priority -10; policy accept;",
        f"    iifname != {_quote(bridge)} accept",
        f"    oifname != {_quote(bridge)} accept",
        "    ip saddr @shared accept",
        "    ip daddr @shared accept",
    ]
    for namespace in sorted(n for n in by_namespace if n != SHARED):
        name = set_name(namespace)
        lines.append(f"    ip saddr @{name} ip daddr @{name} accept comment {_quote('namespace ' + namespace)}")
    lines += [
        '    counter drop comment "between namespaces, unadmitted addresses, IPv6"',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def parse_members(listing: str) -> dict[str, str]:
    """ip -> namespace from ``nft -j list table`` output (what the kernel enforces now)."""
    members: dict[str, str] = {}
    for item in json.loads(listing).get("nftables", []):
        found = item.get("set")
        if not isinstance(found, dict):
            continue
        namespace = namespace_of(str(found.get("name", "")))
        if namespace is None:
            continue
        for element in found.get("elem", []):
            if isinstance(element, str):
                members[element] = namespace
    return members


async def _nft(*args: str, script: str | None = None) -> tuple[int, str]:
    rc, text = await run_tool(NFT, *args, stdin=script)
    return rc, text.strip()


def _enable_bridge_filtering() -> str:
    """'' once bridged IP traffic passes the IP hooks (br_netfilter, as Docker and Kubernetes
    need it too), else why it cannot. Blocking: run it in a thread."""
    if not SYSCTL_DIR.is_dir() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    for name in BRIDGE_SYSCTLS:
        path = SYSCTL_DIR / name
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
        except OSError as exc:
            return f"cannot enable {path} ({exc.strerror}): the br_netfilter module is needed"
    return ""


class TenantFirewall:
    """The namespaces' sets of one bridge. ``problem`` says why isolation is off, if it is."""

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge
        self.table = table_name(bridge)
        self.problem = "not started"
        self._members: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._changes = 0
        self._applied = 0

    @property
    def active(self) -> bool:
        return not self.problem

    async def start(self) -> None:
        """Check the host can filter bridged traffic and take over what the kernel enforces now
        (a restarted daemon's running functions keep their rights). Without nft or br_netfilter,
        isolation stays off and says why; nothing else fails."""
        if shutil.which(NFT) is None:
            self.problem = "nft is not installed (apt-get install nftables)"
        else:
            self.problem = await asyncio.to_thread(_enable_bridge_filtering)
        if not self.active:
            log.warning("namespaces are NOT isolated from each other on %s: %s", self.bridge, self.problem)
            await self.remove()  # an earlier table would go stale: new replicas cut off, reused addresses
            return
        rc, listing = await _nft("-j", "list", "table", "inet", self.table)
        if rc == 0:
            self._members = parse_members(listing)
        try:
            await self._apply()
        except NetworkError as exc:
            self.problem = exc.message
            log.warning("namespaces are NOT isolated from each other on %s: %s", self.bridge, self.problem)
            await self.remove()

    async def admit(self, ip: str, namespace: str) -> None:
        """``ip`` may talk to its namespace (``SHARED``: to everyone) from now on."""
        if self._members.get(ip) != namespace:
            self._members[ip] = namespace
            await self._apply()

    async def evict(self, ip: str) -> None:
        """``ip`` is about to be released: it talks to nobody any more."""
        if self._members.pop(ip, None) is not None:
            await self._apply()

    async def retain(self, allocated: Callable[[], Collection[str]]) -> None:
        """Drop the addresses ``allocated()`` no longer lists: those of replicas that vanished while
        no daemon ran, whose release never evicted them. ``allocated`` runs under the write lock,
        in the loop, so no admit can slip between the look and the write."""
        if not self.active:
            return
        async with self._lock:
            keep = set(allocated())
            gone = [ip for ip in self._members if ip not in keep]
            if not gone:
                return
            for ip in gone:
                del self._members[ip]
            self._changes += 1
            await self._write()
            log.info("namespace isolation: dropped %d address(es) no replica holds any more", len(gone))

    def members(self) -> dict[str, str]:
        return dict(self._members)

    async def remove(self) -> None:
        """The table goes and isolation ends: on uninstall, and whenever it is off (a table left from
        when it was on would keep stale rights for addresses CNI hands out again)."""
        self._members.clear()
        if shutil.which(NFT) is not None:
            await _nft("delete", "table", "inet", self.table)

    async def _apply(self) -> None:
        """Write the current members; calls that queue behind a write made after their change return."""
        if not self.active:
            return
        self._changes += 1
        wanted = self._changes
        async with self._lock:
            if self._applied < wanted:
                await self._write()

    async def _write(self) -> None:
        current = self._changes
        rc, err = await _nft("-f", "-", script=render(self.bridge, self._members))
        if rc != 0:
            raise NetworkError(f"nftables refused the namespace isolation rules for {self.bridge}: {err}")
        self._applied = current
