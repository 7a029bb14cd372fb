"""CNI wiring of function instances: render the conflist, run its plugins from asyncio, undo them.

The plugins are exec'd directly (the CNI protocol is only env vars plus JSON on stdin/stdout):
a Python libcni equivalent per call costs 150-300 ms of interpreter start, the plugins themselves
40-100 ms. Everything a key owns can be found again without this process's memory:

* the netns ``/run/netns/<prefix><key>``;
* the ADD result in ``<cache_dir>/<key>.json``, DEL's prevResult (libcni keeps the same cache);
* the host-local reservation ``<dataDir>/<network>/<ip>`` whose first line is the container id.

The CNI container id is the netns name (``<prefix><key>``), so IPAM files and ipMasq comments of
two installs with different prefixes never mix. Keys are validated, never rewritten (see
:func:`faasd_py.network.netns.check_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import string
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from faasd_py.config import NetworkSettings
from faasd_py.errors import InvalidRequest, NetworkError
from faasd_py.network import iptables, netns
from faasd_py.network.netns import NsState
from faasd_py.network.tenant_firewall import SHARED, TenantFirewall

log = logging.getLogger(__name__)

JSON = dict[str, Any]

CONFLIST_FILE = "10-openfaas.conflist"
LOOPBACK_FILE = "99-loopback.conf"
IFNAME = "eth0"
PLUGIN_TIMEOUT = 30.0
_IFNAMSIZ = 15  # usable characters in a Linux interface name
_MISSING = "does not exist"  # iptables-nft's wording for a chain that is already gone


# --- configuration -------------------------------------------------------------------------------


def template(name: str) -> str:
    """A packaged template (``faasd_py/network/templates``, the canonical copy; ``cni/`` at the
    repository top holds them rendered with the default settings)."""
    return (resources.files("faasd_py.network") / "templates" / name).read_text()


def _check_settings(settings: NetworkSettings) -> str:
    try:
        subnet = ipaddress.ip_network(settings.subnet, strict=True)
    except ValueError as exc:
        raise InvalidRequest(f"config: network.subnet {settings.subnet!r} is not a network: {exc}") from exc
    if subnet.num_addresses < 4:
        raise InvalidRequest(f"config: network.subnet {subnet} leaves no address for a function")
    if not 0 < len(settings.bridge) <= _IFNAMSIZ or any(c in settings.bridge for c in "/: \t\n"):
        raise InvalidRequest(f"config: network.bridge {settings.bridge!r} is not a valid interface name")
    if not settings.network_name or not settings.ipam_dir:
        raise InvalidRequest("config: network.network_name and network.ipam_dir must be set")
    if settings.netns_prefix:
        netns.check_key(settings.netns_prefix)
    return str(subnet)


def render_conflist(settings: NetworkSettings) -> str:
    values = {
        "network_name": settings.network_name,
        "bridge": settings.bridge,
        "subnet": _check_settings(settings),
        "ipam_dir": settings.ipam_dir,
    }
    escaped = {k: json.dumps(v)[1:-1] for k, v in values.items()}  # a quote in a path stays JSON
    text = string.Template(template(CONFLIST_FILE)).substitute(escaped)
    json.loads(text)  # a broken template fails here rather than inside a plugin
    return text


def render_loopback() -> str:
    return template(LOOPBACK_FILE)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_configs(settings: NetworkSettings, conf_dir: Path) -> Path:
    """Render both files into ``conf_dir`` (only rewritten when they change); returns the conflist."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((CONFLIST_FILE, render_conflist(settings)), (LOOPBACK_FILE, render_loopback())):
        path = conf_dir / name
        if not path.is_file() or path.read_text() != text:
            _atomic_write(path, text)
    return conf_dir / CONFLIST_FILE


def load_conflist(path: Path) -> JSON:
    try:
        conf = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NetworkError(f"cannot read CNI conflist {path}: {exc}") from exc
    plugins = conf.get("plugins") if isinstance(conf, dict) else None
    if (
        not isinstance(plugins, list)
        or not plugins
        or not all(isinstance(p, dict) and p.get("type") for p in plugins)
        or not conf.get("name")
        or not conf.get("cniVersion")
    ):
        raise NetworkError(f"CNI conflist {path} needs name, cniVersion and plugins with a type")
    return dict(conf)


# --- results ---------------------------------------------------------------------------------------


def parse_result(result: Mapping[str, Any], ifname: str = IFNAME) -> tuple[str, str]:
    """(ip, gateway) of the first IPv4 address on the container side ``ifname``.

    An ``ips`` entry names its interface by index into ``interfaces``; entries without a usable
    index are accepted (older plugins omit it). A missing gateway defaults to the first host.
    """
    interfaces = result.get("interfaces") or []

    def on_container(entry: Mapping[str, Any]) -> bool:
        idx = entry.get("interface")
        if not isinstance(idx, int) or not 0 <= idx < len(interfaces):
            return True
        iface = interfaces[idx]
        return bool(iface.get("name") == ifname and iface.get("sandbox"))

    for entry in result.get("ips") or []:
        if not isinstance(entry, Mapping) or not on_container(entry):
            continue
        try:
            addr = ipaddress.ip_interface(str(entry["address"]))
        except (KeyError, ValueError):
            continue
        if addr.version == 4:
            gateway = str(entry.get("gateway") or next(addr.network.hosts()))
            return str(addr.ip), gateway
    raise NetworkError(f"CNI result has no IPv4 address for {ifname}: {json.dumps(result)[:300]}")


def minimal_result(cni_version: str, address: str) -> JSON:
    """prevResult for a DEL whose cached ADD result is lost: the firewall plugin needs the IPs."""
    entry: JSON = {"address": address}
    if cni_version.startswith("0."):
        entry["version"] = "4" if ipaddress.ip_interface(address).version == 4 else "6"
    return {"cniVersion": cni_version, "ips": [entry]}


def plugin_error(stdout: bytes, stderr: bytes) -> str:
    """The plugin's own message: CNI errors are JSON on stdout ({code, msg, details})."""
    text = stdout.decode(errors="replace").strip()
    try:
        err = json.loads(text)
    except ValueError:
        err = None
    if isinstance(err, dict) and err.get("msg"):
        msg = str(err["msg"])
        return f"{msg}: {err['details']}" if err.get("details") else msg
    return text or stderr.decode(errors="replace").strip() or "no error message"


# --- running plugins -------------------------------------------------------------------------------


async def exec_plugin(
    binary: str,
    command: str,
    conf: Mapping[str, Any],
    *,
    container_id: str,
    netns_path: str,
    ifname: str,
    cni_path: str,
    timeout: float = PLUGIN_TIMEOUT,
) -> JSON | None:
    """One CNI plugin call; NetworkError carries the plugin's message. The process never outlives
    the call: on timeout or cancellation it is killed and reaped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=container_id,
        CNI_NETNS=netns_path,
        CNI_IFNAME=ifname,
        CNI_PATH=cni_path,
    )
    kind = os.path.basename(binary)
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )
    except OSError as exc:
        raise NetworkError(f"CNI {kind} {command}: cannot run {binary}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(json.dumps(conf).encode())
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise NetworkError(f"CNI {kind} {command} timed out after {timeout:g} s") from None
        raise
    if proc.returncode != 0:
        raise NetworkError(f"CNI {kind} {command} failed: {plugin_error(out, err)}")
    if not out.strip():
        return None
    try:
        parsed = json.loads(out)
    except ValueError as exc:
        raise NetworkError(f"CNI {kind} {command} printed invalid JSON: {out[:200]!r}") from exc
    return parsed if isinstance(parsed, dict) else None


# --- function networks -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    key: str
    netns_path: str
    ip: str
    gateway: str
    ifname: str = IFNAME


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _Progress:
    """How far an ADD chain got, for its rollback."""

    __slots__ = ("result", "started")

    def __init__(self) -> None:
        self.started = 0
        self.result: JSON | None = None


class FunctionNetwork:
    """One netns plus a CNI attachment per key; every path that fails releases what it made.

    The conflist: when ``settings.cni_conf_dir`` is set it names an operator-owned directory whose
    ``10-openfaas.conflist`` is used as is; otherwise the packaged template is rendered from the
    settings into ``conf_dir``. ADD results are cached in ``cache_dir`` (default: ``cni-cache``
    beside ``settings.ipam_dir``, so it lives and dies with the IPAM state).

    Concurrency: calls for one key are serialised; different keys run in parallel, except that
    the first ADD of this process runs alone (it creates the bridge and the shared iptables
    chains, which the plugins do not create race-free).
    """

    def __init__(self, settings: NetworkSettings, conf_dir: Path, cache_dir: Path | None = None,
                 firewall: TenantFirewall | None = None) -> None:
        if settings.cni_conf_dir:
            path = Path(settings.cni_conf_dir) / CONFLIST_FILE
            if settings.netns_prefix:
                netns.check_key(settings.netns_prefix)
        else:
            path = write_configs(settings, conf_dir)
        conf = load_conflist(path)
        self.conflist_path = path
        self.network: str = conf["name"]
        self._version: str = conf["cniVersion"]
        self._plugins: list[JSON] = conf["plugins"]
        bridge: JSON = next((p for p in self._plugins if p.get("type") == "bridge"), {})
        ipam = bridge.get("ipam") or {}
        self.bridge: str = bridge.get("bridge") or "cni0"
        self.subnet: str = ipam.get("subnet") or settings.subnet
        self.ipam_dir = Path(ipam.get("dataDir") or "/var/lib/cni/networks") / self.network
        self.cache_dir = cache_dir or Path(settings.ipam_dir).parent / "cni-cache"
        self.timeout = PLUGIN_TIMEOUT
        self._prefixlen = ipaddress.ip_network(self.subnet, strict=False).prefixlen
        self._prefix = settings.netns_prefix
        self._bin_dirs = list(settings.cni_bin_dirs)
        self._cni_path = os.pathsep.join(self._bin_dirs)
        self._binaries: dict[str, str] = {}
        self._locks: dict[str, _KeyLock] = {}
        self._first_add = asyncio.Lock()
        self._warm = False
        self.firewall = firewall

    # --- public API ---------------------------------------------------------------------------

    def netns_path(self, key: str) -> str:
        return netns.path_of(self._name(key))

    async def setup(self, key: str, netns_ready: asyncio.Event | None = None, *,
                    namespace: str | None = SHARED) -> Attachment:
        """Wire ``key``; idempotent: an intact earlier attachment is returned as it is (a restarted
        daemon finds its running functions this way), leftovers of a broken one are released first.

        ``netns_ready`` is set as soon as the namespace exists, before the CNI plugins run: a task
        can be created in it meanwhile (the plugins then take ~45 ms in parallel with runc).
        ``namespace``: whose peers the address may reach (the firewall); the default, SHARED, is
        a core service's, which everyone may reach; None: no one on the bridge (the host can).
        """
        name = self._name(key)
        async with self._locked(key):
            cached, state = await asyncio.to_thread(self._probe, key, name)
            if cached is not None and state is NsState.MOUNTED:
                if netns_ready is not None:
                    netns_ready.set()
                attachment = self._attachment(key, cached)
            else:
                if cached is not None or state is not NsState.ABSENT:
                    log.warning("network %s: releasing leftovers of an earlier attachment (netns %s)", key,
                                state.value)
                    await self._release(key, cached, scan=cached is None)
                try:
                    attachment = await self._wire(key, name, netns_ready)
                except NetworkError as exc:
                    # an IPAM reservation without netns or cache (its state dir outlived them): the
                    # rollback's DEL released it by container id, so one more try succeeds
                    if "duplicate allocation" not in exc.message:
                        raise
                    log.warning("network %s: stale IPAM reservation released, retrying", key)
                    attachment = await self._wire(key, name, netns_ready)
            await self._place(attachment.ip, namespace)  # on failure the caller tears down
            return attachment

    async def teardown(self, key: str) -> None:
        """Release everything of ``key``; a no-op when nothing is left. Without a cached ADD result
        the host-local reservation is looked up by container id (a scan of the IPAM directory, only
        on this path) so the firewall rules can still be removed."""
        self._name(key)
        async with self._locked(key):
            t0 = time.perf_counter()
            cached = await asyncio.to_thread(self._read_cache, key)
            await self._release(key, cached, scan=cached is None)
            log.debug("network %s: teardown in %.1f ms", key, (time.perf_counter() - t0) * 1000)

    async def lookup(self, key: str, *, namespace: str | None = None) -> Attachment | None:
        """The live attachment of ``key`` (from the cache), or None. Its address is placed in the
        firewall as :meth:`setup` does, since a restarted daemon adopts running replicas this way."""
        name = self._name(key)
        cached, state = await asyncio.to_thread(self._probe, key, name)
        if cached is None or state is not NsState.MOUNTED:
            return None
        attachment = self._attachment(key, cached)
        await self._place(attachment.ip, namespace)
        return attachment

    async def list_keys(self) -> set[str]:
        """Keys with a netns, a cached result or an IPAM reservation (for reconciliation)."""
        return set(await asyncio.to_thread(self._scan))

    async def gc(self, keep: set[str]) -> list[str]:
        """Tear down every key not in ``keep``; returns those released. Call it before serving:
        a key being set up concurrently is skipped, but one not yet started is not known here."""
        found = await asyncio.to_thread(self._scan)
        removed: list[str] = []
        for key in sorted(set(found) - keep - set(self._locks)):
            try:
                async with self._locked(key):
                    cached = await asyncio.to_thread(self._read_cache, key)
                    hint = minimal_result(self._version, f"{found[key]}/{self._prefixlen}") if found[key] else None
                    await self._release(key, cached or hint, scan=False)
            except NetworkError as exc:
                log.warning("network %s: gc could not release it: %s", key, exc)
                continue
            removed.append(key)
        live = {self._prefix + k for k in keep | set(self._locks)}
        await iptables.remove_masq(self.network, lambda cid: cid.startswith(self._prefix) and cid not in live)
        if self.firewall is not None:  # the IPAM directory is shared with the core services' network
            await self.firewall.retain(lambda: set(self._reservations().values()))
        if removed:
            log.info("network: released %d stale attachment(s): %s", len(removed), ", ".join(removed))
        return removed

    async def remove_all(self) -> None:
        """Uninstall (and tests): every key, the bridge, our leftover rules, then the shared CNI
        chains if nobody else has rules in them."""
        await self.gc(set())
        if self.firewall is not None:
            await self.firewall.remove()
        await asyncio.to_thread(netns.delete_link, self.bridge)
        self._warm = False
        await iptables.remove_firewall_rules(self.subnet)
        await iptables.remove_empty_firewall_chains()
        await asyncio.to_thread(self._wipe_state)

    # --- internals ----------------------------------------------------------------------------

    async def _place(self, ip: str, namespace: str | None) -> None:
        if self.firewall is not None:
            if namespace is None:
                await self.firewall.evict(ip)
            else:
                await self.firewall.admit(ip, namespace)

    def _name(self, key: str) -> str:
        return self._prefix + netns.check_key(key)

    @contextlib.asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    @contextlib.asynccontextmanager
    async def _serial_until_warm(self) -> AsyncIterator[None]:
        """Until an ADD succeeds (at start, and again after any failed one), ADDs run one at a
        time and first repair a bridge that an earlier failed ADD left unusable."""
        if self._warm:
            try:
                yield
            except BaseException:
                self._warm = False
                raise
            return
        async with self._first_add:
            if await asyncio.to_thread(netns.repair_bridge_mac, self.bridge):
                log.warning("network: bridge %s had no MAC (left by a failed ADD); gave it one", self.bridge)
            try:
                yield
            except BaseException:
                self._warm = False
                raise
            self._warm = True

    def _binary(self, kind: str) -> str:
        path = self._binaries.get(kind)
        if path is None:
            for directory in self._bin_dirs:
                candidate = os.path.join(directory, kind)
                if os.access(candidate, os.X_OK):
                    path = self._binaries[kind] = candidate
                    break
            else:
                raise NetworkError(f"CNI plugin {kind!r} not found in {', '.join(self._bin_dirs)}")
        return path

    async def _exec(
        self, command: str, plugin: JSON, name: str, netns_path: str, prev: JSON | None, binary: str = ""
    ) -> JSON | None:
        conf = dict(plugin, name=self.network, cniVersion=self._version)
        if prev is not None:
            conf["prevResult"] = prev
        return await exec_plugin(
            binary or self._binary(plugin["type"]), command, conf, container_id=name, netns_path=netns_path,
            ifname=IFNAME, cni_path=self._cni_path, timeout=self.timeout,
        )

    async def _add_chain(self, name: str, path: str, done: _Progress) -> JSON:
        async with self._serial_until_warm():
            prev: JSON | None = None
            for plugin in self._plugins:
                binary = self._binary(plugin["type"])
                done.started += 1
                out = await self._exec("ADD", plugin, name, path, prev, binary)
                if out is None:
                    raise NetworkError(f"CNI {plugin['type']} ADD returned no result")
                prev = done.result = out
        assert prev is not None  # load_conflist guarantees at least one plugin
        return prev

    async def _wire(self, key: str, name: str, netns_ready: asyncio.Event | None = None) -> Attachment:
        t0 = time.perf_counter()
        path = netns.path_of(name)
        done = _Progress()
        try:
            # inside the try: a cancellation landing right after the thread made the netns must
            # still remove it (the caller checked under the key lock that none existed before).
            # lo comes up in the same thread (an ioctl, ~0 ms): cheaper than the loopback plugin
            # (3.0 ms exec) or pyroute2's NetNS (3.7 ms and a fork, see netns.py)
            await asyncio.to_thread(netns.create, name, loopback=True)
            if netns_ready is not None:
                netns_ready.set()
            result = await self._add_chain(name, path, done)
            attachment = self._attachment(key, result)
            await asyncio.to_thread(self._write_cache, key, result)
        except BaseException as exc:
            log.warning("network %s: setup failed (%s), rolling back", key, exc or type(exc).__name__)
            # DEL only the plugins that were started (one that never ran has nothing to undo and
            # may not even exist), with the last result any of them returned
            await asyncio.shield(self._rollback(key, done))
            raise
        log.debug("network %s: %s in %.1f ms", key, attachment.ip, (time.perf_counter() - t0) * 1000)
        return attachment

    async def _rollback(self, key: str, done: _Progress) -> None:
        try:
            await self._release(key, done.result, scan=False, plugins=self._plugins[: done.started])
        except Exception as exc:
            log.error("network %s: rollback failed too, gc will retry: %s", key, exc)

    async def _release(
        self, key: str, prev: JSON | None, *, scan: bool, plugins: list[JSON] | None = None
    ) -> None:
        """DEL in reverse order with the ADD result, then drop cache and netns. If a DEL fails the
        cache and netns stay, so a retry (or gc) still has what it needs."""
        name = self._prefix + key
        state = await asyncio.to_thread(netns.state, name)
        if prev is None and scan:
            ip = await asyncio.to_thread(self._reserved_ip, name)
            if ip:
                prev = minimal_result(self._version, f"{ip}/{self._prefixlen}")
        if prev is not None and self.firewall is not None:
            address = ""
            with contextlib.suppress(NetworkError):  # a result without our interface: no address to evict
                address = parse_result(prev, IFNAME)[0]
            if address:  # before the DEL frees it: its next owner must not inherit these rights
                await self.firewall.evict(address)
        if state is NsState.MOUNTED or prev is not None:
            # without the netns, bridge DEL only releases the IP (CNI_NETNS may be empty on DEL)
            ns_arg = netns.path_of(name) if state is NsState.MOUNTED else ""
            errors: list[NetworkError] = []
            sweep = state is not NsState.MOUNTED  # bridge DEL removes ipMasq only via the interface
            for plugin in reversed(self._plugins if plugins is None else plugins):
                try:
                    await self._exec("DEL", plugin, name, ns_arg, prev)
                except NetworkError as exc:
                    if _MISSING not in exc.message:
                        errors.append(exc)
                        continue
                    # go-iptables does not recognise iptables-nft's "Chain 'X' does not exist" as
                    # "already gone" (e.g. DEL after an ADD that failed before ipMasq); the IP and
                    # the link were released before that step, we sweep the chain ourselves
                    log.info("network %s: ignoring %s", key, exc.message)
                    sweep = True
            if errors:
                raise NetworkError(f"network {key}: " + "; ".join(e.message for e in errors))
            if sweep:
                await iptables.remove_masq(self.network, lambda cid: cid == name)
        await asyncio.to_thread(self._forget, key, name, state)

    def _attachment(self, key: str, result: Mapping[str, Any]) -> Attachment:
        ip, gateway = parse_result(result, IFNAME)
        return Attachment(key=key, netns_path=self.netns_path(key), ip=ip, gateway=gateway)

    # --- files (blocking; run in a thread) ----------------------------------------------------

    def _cache_file(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def _read_cache(self, key: str) -> JSON | None:
        try:
            data = json.loads(self._cache_file(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("network %s: unreadable CNI cache, ignoring it: %s", key, exc)
            return None
        result = data.get("result") if isinstance(data, dict) else None
        return result if isinstance(result, dict) else None

    def _write_cache(self, key: str, result: JSON) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "containerId": self._prefix + key, "ifname": IFNAME, "network": self.network,
                  "result": result}
        _atomic_write(self._cache_file(key), json.dumps(record))

    def _probe(self, key: str, name: str) -> tuple[JSON | None, NsState]:
        return self._read_cache(key), netns.state(name)

    def _forget(self, key: str, name: str, state: NsState) -> None:
        self._cache_file(key).unlink(missing_ok=True)
        if state is not NsState.ABSENT:
            netns.remove(name)

    def _reservations(self) -> dict[str, str]:
        """host-local's files: <ip> -> "<container id>\\r\\n<ifname>"; returns container id -> ip."""
        found: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.ipam_dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            try:
                ipaddress.ip_address(entry.name)
                with open(entry.path) as f:
                    owner = f.readline().strip()
            except (ValueError, OSError):
                continue
            found[owner] = entry.name
        return found

    def _reserved_ip(self, name: str) -> str | None:
        return self._reservations().get(name)

    def _scan(self) -> dict[str, str | None]:
        keys: dict[str, str | None] = {}
        for name in netns.list_names(self._prefix):
            keys[name[len(self._prefix):]] = None
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.cache_dir):
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    keys.setdefault(entry.name[: -len(".json")], None)
        for owner, ip in self._reservations().items():
            if owner.startswith(self._prefix):
                keys[owner[len(self._prefix):]] = ip
        valid: dict[str, str | None] = {}
        for key, reserved in keys.items():
            with contextlib.suppress(NetworkError):
                valid[netns.check_key(key)] = reserved
        return valid

    def _wipe_state(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        shutil.rmtree(self.ipam_dir, ignore_errors=True)
