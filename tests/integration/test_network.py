"""The real thing: pyroute2 netns + the Debian CNI plugins (bridge, host-local, firewall) + iptables.

Needs root and the plugins in /usr/lib/cni (no containerd). Uses only this test's own bridge,
subnet and netns prefix, and traffic only to addresses inside the namespaces it creates.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from faasd_py.config import NetworkSettings
from faasd_py.errors import NetworkError
from faasd_py.network import Attachment, FunctionNetwork, cni, netns

ROOT = Path("/tmp/fdpy-c")
SUBNET = "10.93.0.0/16"
SETTINGS = NetworkSettings(bridge="fdpyc0", subnet=SUBNET, ipam_dir=str(ROOT / "ipam"), netns_prefix="fdpyc-")
# a /30 has one address left once the gateway took the first: the second setup must fail
TINY = NetworkSettings(
    bridge="fdpyc1", subnet="10.93.255.252/30", ipam_dir=str(ROOT / "ipam30"), netns_prefix="fdpycx-"
)
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3") or "python3"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # no *_proxy: talk to the netns directly


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not any(os.path.exists(os.path.join(d, "bridge")) for d in SETTINGS.cni_bin_dirs):
        return "CNI plugins are not installed"
    for tool in ("iptables", "ip"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


pytestmark = [pytest.mark.integration, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


# --- probes of the kernel state --------------------------------------------------------------------


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, env=CLEAN_ENV).stdout


def _host_links() -> set[str]:
    with IPRoute() as ipr:
        return {str(link.get("ifname")) for link in ipr.get_links()}


async def host_links() -> set[str]:
    """pyroute2's sync API runs its own event loop: never call it on the running one."""
    return await asyncio.to_thread(_host_links)


def ipam_ips(fn: FunctionNetwork) -> set[str]:
    if not fn.ipam_dir.is_dir():
        return set()
    return {p.name for p in fn.ipam_dir.iterdir() if p.name[0].isdigit() and p.name != "last_reserved_ip.0"}


def nat_rules() -> str:
    return sh("iptables", "-t", "nat", "-S")


def forward_rules() -> str:
    return sh("iptables", "-S", "CNI-FORWARD")


def host_veth(fn: FunctionNetwork, key: str) -> str:
    result = json.loads((fn.cache_dir / f"{key}.json").read_text())["result"]
    names = [i["name"] for i in result["interfaces"] if "sandbox" not in i and i["name"].startswith("veth")]
    assert len(names) == 1
    return str(names[0])


async def assert_released(fn: FunctionNetwork, att: Attachment, veth: str | None = None) -> None:
    name = os.path.basename(att.netns_path)
    assert not exists(att.netns_path)
    assert att.ip not in ipam_ips(fn)
    assert not (fn.cache_dir / f"{att.key}.json").exists()
    assert f'id: \\"{name}\\"' not in nat_rules()  # the ipMasq chain's comment
    assert f"{att.ip}/32" not in forward_rules()
    if veth:
        assert veth not in await host_links()


async def in_netns(key: str, code: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", f"{SETTINGS.netns_prefix}{key}", PY, "-c", code, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLEAN_ENV,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


def fetch(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=2) as r:
        return str(r.read().decode())


FETCH = (
    "import sys, urllib.request as u; "
    "print(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=3).read().decode())"
)
LOOPBACK = (
    "import socket; s = socket.create_server(('127.0.0.1', 0)); "
    "c = socket.create_connection(s.getsockname(), timeout=2); print('lo ok')"
)


# --- fixtures --------------------------------------------------------------------------------------


async def _fresh(settings: NetworkSettings, conf: str) -> AsyncIterator[FunctionNetwork]:
    fn = FunctionNetwork(settings, ROOT / conf)
    await fn.remove_all()  # whatever a crashed earlier run left
    yield fn
    await fn.remove_all()
    assert netns.list_names(settings.netns_prefix) == []
    assert settings.bridge not in await host_links()
    assert f'id: \\"{settings.netns_prefix}' not in nat_rules()


@pytest.fixture
async def fnet() -> AsyncIterator[FunctionNetwork]:
    async for fn in _fresh(SETTINGS, "cni"):
        yield fn


@pytest.fixture
async def tiny() -> AsyncIterator[FunctionNetwork]:
    async for fn in _fresh(TINY, "cni30"):
        yield fn


# --- tests -----------------------------------------------------------------------------------------


async def test_two_functions_are_wired_and_reach_each_other(fnet: FunctionNetwork, tmp_path: Path) -> None:
    a, b = await asyncio.gather(fnet.setup("web-a"), fnet.setup("web-b"))  # cold: creates the bridge
    net = ipaddress.ip_network(SUBNET)
    assert ipaddress.ip_address(a.ip) in net and ipaddress.ip_address(b.ip) in net and a.ip != b.ip
    assert a.gateway == b.gateway == "10.93.0.1"
    assert a.netns_path == "/run/netns/fdpyc-web-a" and exists(a.netns_path)
    links = {link["ifname"]: link for link in json.loads(sh("ip", "-n", "fdpyc-web-a", "-j", "link", "show"))}
    assert set(links) == {"lo", "eth0"} and "UP" in links["lo"]["flags"]
    assert await in_netns("web-a", LOOPBACK) == "lo ok"
    assert await fnet.list_keys() == {"web-a", "web-b"}

    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from web-a")
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", "fdpyc-web-a", PY, "-m", "http.server", "18080", "--bind", a.ip,
        "--directory", str(www), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=CLEAN_ENV,
    )
    url = f"http://{a.ip}:18080/index.html"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                body = await asyncio.to_thread(fetch, url)  # from the host, over the bridge
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert body == "hello from web-a"
        assert await in_netns("web-b", FETCH, url) == "hello from web-a"  # function to function
    finally:
        server.kill()
        await server.wait()

    veth = host_veth(fnet, "web-a")
    assert veth in await host_links()
    await fnet.teardown("web-a")
    await assert_released(fnet, a, veth)
    await fnet.teardown("web-a")  # again: a no-op
    assert await fnet.list_keys() == {"web-b"}
    assert b.ip in ipam_ips(fnet)


async def test_setup_is_idempotent_across_a_restart(fnet: FunctionNetwork) -> None:
    att = await fnet.setup("keep")
    restarted = FunctionNetwork(SETTINGS, ROOT / "cni")
    assert await restarted.setup("keep") == att
    assert await restarted.lookup("keep") == att
    assert ipam_ips(fnet) == {att.ip}


async def test_lost_cache_and_lost_netns_are_still_released(fnet: FunctionNetwork) -> None:
    gone, nocache = await fnet.setup("gone"), await fnet.setup("nocache")
    veths = host_veth(fnet, "gone"), host_veth(fnet, "nocache")
    for key in ("gone", "nocache"):
        (fnet.cache_dir / f"{key}.json").unlink()
    netns.remove("fdpyc-gone")  # as if someone ran `ip netns del`: the ipMasq chain outlives it
    assert 'id: \\"fdpyc-gone\\"' in nat_rules()
    assert await fnet.list_keys() == {"gone", "nocache"}  # found through IPAM (and the netns)
    await fnet.teardown("gone")
    await fnet.teardown("nocache")
    await assert_released(fnet, gone, veths[0])
    await assert_released(fnet, nocache, veths[1])


async def test_gc_releases_keys_whose_container_is_gone(fnet: FunctionNetwork) -> None:
    alive, dead = await fnet.setup("alive"), await fnet.setup("dead")
    stale = "/run/netns/fdpyc-stale"  # a plain file: /run outlived the nsfs mount
    await asyncio.to_thread(Path(stale).touch)
    assert await fnet.list_keys() == {"alive", "dead", "stale"}
    assert await fnet.gc({"alive"}) == ["dead", "stale"]
    await assert_released(fnet, dead)
    assert not exists(stale)
    assert await fnet.list_keys() == {"alive"} and await fnet.lookup("alive") == alive
    assert await fnet.gc({"alive"}) == []


async def test_failing_setup_leaves_nothing_behind(tiny: FunctionNetwork) -> None:
    first = await tiny.setup("x1")
    assert first.ip == "10.93.255.254"
    with pytest.raises(NetworkError, match="no IP addresses available"):
        await tiny.setup("x2")
    assert not exists("/run/netns/fdpycx-x2")
    assert ipam_ips(tiny) == {first.ip}
    assert not (tiny.cache_dir / "x2.json").exists()
    assert 'id: \\"fdpycx-x2\\"' not in nat_rules()
    assert await tiny.list_keys() == {"x1"}


async def test_stale_reservation_on_a_fresh_bridge(fnet: FunctionNetwork) -> None:
    """After a reboot that kept /run: host-local still holds the key's IP, the bridge is gone.
    The first ADD fails half-way (which leaves the new bridge without a MAC), the rollback must
    still succeed on iptables-nft, and the retry must work on that bridge."""
    assert "fdpyc0" not in await host_links()
    fnet.ipam_dir.mkdir(parents=True, exist_ok=True)
    (fnet.ipam_dir / "10.93.0.77").write_text("fdpyc-dup\r\neth0")
    att = await fnet.setup("dup")
    assert ipam_ips(fnet) == {att.ip} and att.ip != "10.93.0.77"
    other = await fnet.setup("other")
    assert ipam_ips(fnet) == {att.ip, other.ip}
    assert await fnet.list_keys() == {"dup", "other"}


async def test_missing_plugin_rolls_back(tmp_path: Path) -> None:
    settings = NetworkSettings(
        bridge="fdpyc1", subnet="10.93.254.0/24", ipam_dir=str(ROOT / "ipam-np"), netns_prefix="fdpycn-",
        cni_bin_dirs=[str(tmp_path)],
    )
    fn = FunctionNetwork(settings, ROOT / "cni-np")
    with pytest.raises(NetworkError, match="'bridge' not found"):
        await fn.setup("np")
    assert netns.list_names("fdpycn-") == []
    await fn.remove_all()


async def test_cancelled_setup_rolls_back(fnet: FunctionNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    await fnet.setup("warm")  # the bridge exists: the cancel lands in the per-key ADD chain
    started = asyncio.Event()
    real = cni.exec_plugin

    async def spy(binary: str, command: str, conf: Any, **kw: Any) -> Any:
        if command == "ADD" and kw["container_id"] == "fdpyc-cx":
            started.set()
        return await real(binary, command, conf, **kw)

    monkeypatch.setattr(cni, "exec_plugin", spy)
    task = asyncio.create_task(fnet.setup("cx"))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.005)  # the bridge plugin is running now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not exists("/run/netns/fdpyc-cx")
    assert 'id: \\"fdpyc-cx\\"' not in nat_rules()
    assert await fnet.list_keys() == {"warm"}
    assert len(ipam_ips(fnet)) == 1


async def test_remove_all_leaves_no_bridge_and_no_empty_chains(fnet: FunctionNetwork) -> None:
    await asyncio.gather(fnet.setup("r1"), fnet.setup("r2"))
    assert "fdpyc0" in await host_links() and "10.93." in forward_rules()
    await fnet.remove_all()
    assert "fdpyc0" not in await host_links()
    assert netns.list_names("fdpyc-") == [] and await fnet.list_keys() == set()
    assert "10.93." not in forward_rules() and "fdpyc-" not in nat_rules()
    assert not fnet.ipam_dir.exists()
    forward = [r for r in forward_rules().splitlines() if r.startswith("-A ")]
    # the shared chains may stay only while another CNI user still has rules in them
    assert not forward or any("CNI-ADMIN" not in r for r in forward) or sh("iptables", "-S", "CNI-ADMIN").count("-A ")


async def test_setup_and_teardown_cost(fnet: FunctionNetwork) -> None:
    await fnet.setup("warm")
    setup_ms, teardown_ms = [], []
    for i in range(10):
        t0 = time.perf_counter()
        await fnet.setup(f"t{i}")
        setup_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        await fnet.teardown(f"t{i}")
        teardown_ms.append((time.perf_counter() - t0) * 1000)
    print(f"\nnetwork setup median {statistics.median(setup_ms):.1f} ms (min {min(setup_ms):.1f}), "
          f"teardown median {statistics.median(teardown_ms):.1f} ms (min {min(teardown_ms):.1f})")
    assert statistics.median(setup_ms) < 150  # the whole deploy -> first 200 budget is 250 ms
    assert statistics.median(teardown_ms) < 400
