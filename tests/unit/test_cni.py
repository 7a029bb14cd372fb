"""CNI: conflist rendering, result parsing and the plugin protocol, against fake plugins and a fake
netns layer (no root, no kernel state). The real plugins run in tests/integration/test_network.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from faasd_py.config import NetworkSettings
from faasd_py.errors import InvalidRequest, NetworkError
from faasd_py.network import cni, iptables, netns
from faasd_py.network.cni import FunctionNetwork, exec_plugin, minimal_result, parse_result, plugin_error
from faasd_py.network.netns import NsState, check_key

REPO = Path(__file__).resolve().parents[2]

RESULT = {
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "openfaas0", "mac": "62:0e:65:b7:58:31"},
        {"name": "vethea4e2044", "mac": "12:99:6a:1b:1e:49"},
        {"name": "eth0", "mac": "ca:e4:1f:36:1a:90", "sandbox": "/run/netns/faasd-k1"},
    ],
    "ips": [{"version": "4", "interface": 2, "address": "10.62.0.7/16", "gateway": "10.62.0.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


# --- rendering -------------------------------------------------------------------------------------


def test_repository_cni_dir_holds_the_defaults_rendered() -> None:
    """cni/ is generated from faasd_py/network/templates with default settings: it must not drift."""
    assert (REPO / "cni" / cni.CONFLIST_FILE).read_text() == cni.render_conflist(NetworkSettings())
    assert (REPO / "cni" / cni.LOOPBACK_FILE).read_text() == cni.render_loopback()


def test_conflist_follows_settings() -> None:
    settings = NetworkSettings(bridge="br-x", subnet="10.70.0.0/24", ipam_dir='/var/x "y"/ipam', network_name="n1")
    conf = json.loads(cni.render_conflist(settings))
    assert conf["name"] == "n1" and conf["cniVersion"] == "0.4.0"
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "firewall"]  # no portmap
    bridge = conf["plugins"][0]
    assert bridge["bridge"] == "br-x" and bridge["isGateway"] is True and bridge["ipMasq"] is True
    assert bridge["ipam"] == {
        "type": "host-local", "subnet": "10.70.0.0/24", "dataDir": '/var/x "y"/ipam', "routes": [{"dst": "0.0.0.0/0"}],
    }
    assert json.loads(cni.render_loopback()) == {"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}


@pytest.mark.parametrize(
    "change",
    [{"subnet": "10.62.0.1/16"}, {"subnet": "nonsense"}, {"subnet": "10.0.0.0/31"}, {"bridge": "a-very-long-bridge0"},
     {"bridge": ""}, {"netns_prefix": "bad/prefix"}],
)
def test_invalid_settings_are_rejected(change: dict[str, str]) -> None:
    with pytest.raises((InvalidRequest, NetworkError)):
        cni.render_conflist(NetworkSettings(**change))  # type: ignore[arg-type]


def test_write_configs_rewrites_only_on_change(tmp_path: Path) -> None:
    path = cni.write_configs(NetworkSettings(), tmp_path)
    before = path.stat()
    os.utime(path, (1, 1))
    cni.write_configs(NetworkSettings(), tmp_path)
    assert path.stat().st_mtime == 1  # unchanged content: not touched
    cni.write_configs(NetworkSettings(subnet="10.99.0.0/16"), tmp_path)
    assert "10.99.0.0/16" in path.read_text() and path.stat().st_mtime != 1
    assert before.st_size > 0 and (tmp_path / cni.LOOPBACK_FILE).is_file()


def test_operator_conflist_is_used_as_is(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    conf = json.loads(cni.render_conflist(NetworkSettings(bridge="opbr0", subnet="10.71.0.0/16")))
    (own / cni.CONFLIST_FILE).write_text(json.dumps(conf))
    fn = FunctionNetwork(NetworkSettings(cni_conf_dir=str(own)), tmp_path / "unused")
    assert fn.bridge == "opbr0" and fn.subnet == "10.71.0.0/16" and fn.conflist_path == own / cni.CONFLIST_FILE
    assert not (tmp_path / "unused").exists()
    with pytest.raises(NetworkError, match="cannot read"):
        FunctionNetwork(NetworkSettings(cni_conf_dir=str(tmp_path / "missing")), tmp_path / "unused")


# --- results and errors ----------------------------------------------------------------------------


def test_parse_result_picks_the_container_interface() -> None:
    assert parse_result(RESULT) == ("10.62.0.7", "10.62.0.1")
    host_first = dict(RESULT, ips=[{"version": "4", "interface": 0, "address": "10.62.0.1/16"}, *RESULT["ips"]])
    assert parse_result(host_first) == ("10.62.0.7", "10.62.0.1")
    no_gateway = dict(RESULT, ips=[{"address": "10.62.3.9/16"}])  # cniVersion 1.0 style, no index
    assert parse_result(no_gateway) == ("10.62.3.9", "10.62.0.1")


def test_parse_result_without_ipv4_fails() -> None:
    with pytest.raises(NetworkError, match="no IPv4"):
        parse_result(dict(RESULT, ips=[{"interface": 2, "address": "fd00::5/64"}]))
    with pytest.raises(NetworkError):
        parse_result({"cniVersion": "0.4.0"})


def test_plugin_error_message() -> None:
    out = b'{"cniVersion":"0.4.0","code":11,"msg":"failed to allocate","details":"range is full"}'
    assert plugin_error(out, b"") == "failed to allocate: range is full"
    assert plugin_error(b'{"code":7,"msg":"bad conf"}', b"") == "bad conf"
    assert plugin_error(b"", b"panic: boom\n") == "panic: boom"


def test_minimal_result_for_a_del_without_cache() -> None:
    assert minimal_result("0.4.0", "10.62.0.9/16") == {
        "cniVersion": "0.4.0", "ips": [{"address": "10.62.0.9/16", "version": "4"}],
    }
    assert minimal_result("1.0.0", "10.62.0.9/16") == {"cniVersion": "1.0.0", "ips": [{"address": "10.62.0.9/16"}]}


@pytest.mark.parametrize("key", ["", "-x", "a/b", "a b", "x" * 129, "ä"])
def test_bad_keys_are_rejected(key: str) -> None:
    with pytest.raises(NetworkError, match="invalid network key"):
        check_key(key)


def test_good_keys_pass() -> None:
    assert check_key("openfaas-fn-figlet-1a2b3c4d") == "openfaas-fn-figlet-1a2b3c4d"
    assert check_key("A.b_c-9") == "A.b_c-9"


# --- the protocol, with fake plugins ----------------------------------------------------------------

FAKE_PLUGIN = r"""#!/bin/sh
# fake CNI plugin: logs the call and its stdin, answers with result.json on ADD
d=$(dirname "$0"); t=$(basename "$0"); input=$(cat)
echo "$CNI_COMMAND $t id=$CNI_CONTAINERID netns=$CNI_NETNS if=$CNI_IFNAME path=$CNI_PATH" >> "$d/calls.log"
printf '%s\n' "$input" >> "$d/stdin.log"
if [ -s "$d/fail-$t-$CNI_COMMAND" ]; then cat "$d/fail-$t-$CNI_COMMAND"; exit 1; fi
if [ -e "$d/fail-$t-$CNI_COMMAND" ]; then
  echo '{"cniVersion":"0.4.0","code":11,"msg":"no IP addresses available in range set","details":"10.62.0.0/30"}'
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then cat "$d/result-$t.json"; fi
"""


class FakeNetns:
    """Stands in for faasd_py.network.netns: namespaces are names in a set."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.repairs: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(netns, "create", self.create)
        monkeypatch.setattr(netns, "remove", self.names.discard)
        monkeypatch.setattr(netns, "state", self.state)
        monkeypatch.setattr(netns, "repair_bridge_mac", self.repair)
        monkeypatch.setattr(netns, "list_names", lambda prefix: sorted(n for n in self.names if n.startswith(prefix)))

    def create(self, name: str, *, loopback: bool = False) -> None:
        assert name not in self.names and loopback  # lo must come up with the namespace
        self.names.add(name)

    def repair(self, bridge: str) -> bool:
        self.repairs.append(bridge)
        return False

    def state(self, name: str) -> NsState:
        return NsState.MOUNTED if name in self.names else NsState.ABSENT


class Fake:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for kind in ("bridge", "firewall"):
            plugin = self.bin / kind
            plugin.write_text(FAKE_PLUGIN)
            plugin.chmod(0o755)
            (self.bin / f"result-{kind}.json").write_text(json.dumps(RESULT))
        self.ns = FakeNetns()
        self.ns.install(monkeypatch)
        self.masq_swept: list[str] = []

        async def remove_masq(network: str, wanted: Any) -> list[str]:
            self.masq_swept += [network]
            return []

        monkeypatch.setattr(iptables, "remove_masq", remove_masq)
        self.settings = NetworkSettings(
            cni_bin_dirs=[str(tmp_path / "nothing-here"), str(self.bin)], ipam_dir=str(tmp_path / "ipam"),
            netns_prefix="fdpyt-",
        )
        self.net = FunctionNetwork(self.settings, tmp_path / "conf", cache_dir=tmp_path / "cache")
        self.ipam = tmp_path / "ipam" / "openfaas-cni-bridge"

    def calls(self) -> list[str]:
        log = self.bin / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def stdin(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.bin / "stdin.log").read_text().splitlines()]

    def reset_logs(self) -> None:
        for name in ("calls.log", "stdin.log"):
            (self.bin / name).unlink(missing_ok=True)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    return Fake(tmp_path, monkeypatch)


async def test_exec_plugin_speaks_cni(fake: Fake) -> None:
    out = await exec_plugin(
        str(fake.bin / "bridge"), "ADD", {"type": "bridge", "name": "n"}, container_id="c1",
        netns_path="/run/netns/x", ifname="eth0", cni_path="/a:/b",
    )
    assert out == RESULT
    assert fake.calls() == ["ADD bridge id=c1 netns=/run/netns/x if=eth0 path=/a:/b"]
    assert fake.stdin() == [{"type": "bridge", "name": "n"}]
    (fake.bin / "fail-bridge-ADD").touch()
    with pytest.raises(NetworkError, match=r"bridge ADD failed: no IP addresses available in range set: 10\.62"):
        await exec_plugin(str(fake.bin / "bridge"), "ADD", {}, container_id="c1", netns_path="", ifname="eth0",
                          cni_path="")


async def test_exec_plugin_timeout_kills(tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(0o755)
    with pytest.raises(NetworkError, match="timed out"):
        await exec_plugin(str(slow), "ADD", {}, container_id="c", netns_path="", ifname="eth0", cni_path="",
                          timeout=0.2)


async def test_setup_chains_and_teardown_reverses_with_cache(fake: Fake) -> None:
    att = await fake.net.setup("fn-a")
    assert (att.key, att.ip, att.gateway, att.ifname) == ("fn-a", "10.62.0.7", "10.62.0.1", "eth0")
    assert att.netns_path == "/run/netns/fdpyt-fn-a" and fake.ns.names == {"fdpyt-fn-a"}
    calls = fake.calls()
    assert [c.split()[:2] for c in calls] == [["ADD", "bridge"], ["ADD", "firewall"]]
    assert f"path={fake.bin.parent / 'nothing-here'}:{fake.bin}" in calls[0]
    assert "id=fdpyt-fn-a netns=/run/netns/fdpyt-fn-a if=eth0" in calls[0]
    bridge_in, firewall_in = fake.stdin()
    assert "prevResult" not in bridge_in and bridge_in["name"] == "openfaas-cni-bridge"
    assert firewall_in["prevResult"] == RESULT and firewall_in["cniVersion"] == "0.4.0"
    assert await fake.net.list_keys() == {"fn-a"}
    assert await fake.net.lookup("fn-a") == att

    fake.reset_logs()
    assert await fake.net.setup("fn-a") == att  # idempotent: no plugin call
    assert fake.calls() == []

    await fake.net.teardown("fn-a")
    assert [c.split()[:2] for c in fake.calls()] == [["DEL", "firewall"], ["DEL", "bridge"]]
    assert all(d["prevResult"] == RESULT for d in fake.stdin())
    assert fake.ns.names == set() and await fake.net.list_keys() == set()
    assert fake.masq_swept == []  # the netns was there: bridge DEL removed its own ipMasq chain

    fake.reset_logs()
    await fake.net.teardown("fn-a")  # idempotent: nothing left, no plugin call
    assert fake.calls() == []


async def test_failed_add_rolls_back(fake: Fake) -> None:
    (fake.bin / "fail-firewall-ADD").touch()
    with pytest.raises(NetworkError, match="firewall ADD failed: no IP addresses"):
        await fake.net.setup("fn-b")
    ops = [c.split()[:2] for c in fake.calls()]
    assert ops == [["ADD", "bridge"], ["ADD", "firewall"], ["DEL", "firewall"], ["DEL", "bridge"]]
    assert fake.stdin()[2]["prevResult"] == RESULT  # DEL knows what the half-done ADD made
    assert fake.ns.names == set() and await fake.net.list_keys() == set()


async def test_teardown_without_cache_finds_the_ip_in_ipam(fake: Fake) -> None:
    """The crash/reboot case: no netns, no cache, only host-local's reservation."""
    fake.ipam.mkdir(parents=True)
    (fake.ipam / "10.62.0.9").write_text("fdpyt-lost\r\neth0")
    (fake.ipam / "10.62.0.10").write_text("someone-else\r\neth0")
    (fake.ipam / "last_reserved_ip.0").write_text("10.62.0.10")
    assert await fake.net.list_keys() == {"lost"}
    await fake.net.teardown("lost")
    calls = fake.calls()
    assert [c.split()[:2] for c in calls] == [["DEL", "firewall"], ["DEL", "bridge"]]
    assert all("netns= " in c for c in calls)  # CNI_NETNS empty: bridge DEL only releases the IP
    assert fake.stdin()[0]["prevResult"]["ips"] == [{"address": "10.62.0.9/16", "version": "4"}]
    assert fake.masq_swept == ["openfaas-cni-bridge"]


async def test_failed_del_keeps_state_for_a_retry(fake: Fake) -> None:
    await fake.net.setup("fn-c")
    (fake.bin / "fail-bridge-DEL").touch()
    with pytest.raises(NetworkError, match="bridge DEL failed"):
        await fake.net.teardown("fn-c")
    assert fake.ns.names == {"fdpyt-fn-c"} and (fake.net.cache_dir / "fn-c.json").exists()
    (fake.bin / "fail-bridge-DEL").unlink()
    await fake.net.teardown("fn-c")
    assert fake.ns.names == set() and not (fake.net.cache_dir / "fn-c.json").exists()


async def test_gc_keeps_only_what_is_asked(fake: Fake) -> None:
    for key in ("k1", "k2", "k3"):
        await fake.net.setup(key)
    fake.ns.names.add("fdpyt-orphan")  # a netns without cache: a crash between create and ADD
    assert await fake.net.gc({"k2"}) == ["k1", "k3", "orphan"]
    assert await fake.net.list_keys() == {"k2"}
    assert fake.ns.names == {"fdpyt-k2"}


async def test_setup_releases_leftovers_first(fake: Fake) -> None:
    fake.ns.names.add("fdpyt-again")  # netns without result: a previous setup died half-way
    await fake.net.setup("again")
    ops = [c.split()[:2] for c in fake.calls()]
    assert ops == [["DEL", "firewall"], ["DEL", "bridge"], ["ADD", "bridge"], ["ADD", "firewall"]]


async def test_missing_plugin_is_a_network_error(fake: Fake) -> None:
    (fake.bin / "firewall").unlink()
    with pytest.raises(NetworkError, match="'firewall' not found"):
        await fake.net.setup("fn-d")
    assert fake.ns.names == set()



async def test_bridge_is_checked_before_the_first_add_and_after_a_failure(fake: Fake) -> None:
    await fake.net.setup("w1")
    await fake.net.setup("w2")
    assert fake.ns.repairs == ["openfaas0"]  # once: the first ADD of the process
    (fake.bin / "fail-bridge-ADD").touch()
    with pytest.raises(NetworkError):
        await fake.net.setup("w3")
    (fake.bin / "fail-bridge-ADD").unlink()
    await fake.net.setup("w3")
    assert fake.ns.repairs == ["openfaas0", "openfaas0"]  # a failed ADD may have left it broken


async def test_del_of_an_already_missing_masq_chain_counts_as_done(fake: Fake) -> None:
    """iptables-nft says "Chain 'X' does not exist" where go-iptables expects legacy wording."""
    await fake.net.setup("nft")
    (fake.bin / "fail-bridge-DEL").write_text(
        '{"code":999,"msg":"running [/usr/sbin/iptables -t nat -D POSTROUTING -s 10.62.0.7 -j CNI-4b99e92b]: '
        "exit status 2: iptables v1.8.9 (nf_tables): Chain 'CNI-4b99e92b' does not exist\"}"
    )
    await fake.net.teardown("nft")
    assert fake.ns.names == set() and await fake.net.list_keys() == set()
    assert fake.masq_swept == ["openfaas-cni-bridge"]  # we removed the chain ourselves, to be sure
