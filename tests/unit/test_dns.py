"""The shared hosts / resolv.conf: derivation from (fake) host files and in-place updates."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from faasd_py.config import NetworkSettings
from faasd_py.errors import InvalidRequest
from faasd_py.network.dns import ResolvConf, SharedFiles, derive_resolv, gateway_ip, render_hosts

SYSTEMD_STUB = """# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search lan
"""
SYSTEMD_UPSTREAM = """# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).
nameserver 192.168.1.1
nameserver fe80::1%eth0
search home.arpa
"""


def test_gateway_is_the_first_host() -> None:
    assert gateway_ip("10.62.0.0/16") == "10.62.0.1"
    assert gateway_ip("192.168.7.0/24") == "192.168.7.1"


def test_plain_host_resolv_is_passed_through_minus_loopback() -> None:
    host = (
        "nameserver 127.0.0.1\nnameserver 10.255.255.53 # dhcp\nnameserver ::1\n"
        "search a.b c.d\noptions ndots:2 rotate\n"
    )
    conf = derive_resolv(NetworkSettings(), host, None)
    assert conf == ResolvConf(nameservers=["10.255.255.53"], search=["a.b", "c.d"], options=["ndots:2", "rotate"])
    assert conf.render() == "nameserver 10.255.255.53\nsearch a.b c.d\noptions ndots:2 rotate\n"


def test_systemd_resolved_stub_falls_back_to_the_upstream_list() -> None:
    conf = derive_resolv(NetworkSettings(), SYSTEMD_STUB, SYSTEMD_UPSTREAM)
    assert conf.nameservers == ["192.168.1.1", "fe80::1%eth0"]
    assert conf.search == ["home.arpa"]  # search/options come from the file that supplied the servers


def test_configured_nameservers_win_and_search_overrides() -> None:
    settings = NetworkSettings(nameservers=["10.0.0.2", "10.0.0.3"], search=["svc.local"])
    conf = derive_resolv(settings, "nameserver 10.255.255.53\nsearch x\noptions edns0\n", SYSTEMD_UPSTREAM)
    assert conf == ResolvConf(nameservers=["10.0.0.2", "10.0.0.3"], search=["svc.local"], options=["edns0"])
    with pytest.raises(InvalidRequest, match="not an IP"):
        derive_resolv(NetworkSettings(nameservers=["dns.example"]), None, None)


def test_no_usable_nameserver_writes_none_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        conf = derive_resolv(NetworkSettings(), SYSTEMD_STUB, None)
    assert conf.nameservers == [] and "8.8.8.8" not in conf.render()
    assert conf.render() == "search lan\noptions edns0 trust-ad\n"
    assert "no nameserver" in caplog.text
    assert derive_resolv(NetworkSettings(), None, None).render() == ""


def test_domain_line_counts_as_search() -> None:
    assert derive_resolv(NetworkSettings(), "domain corp\nnameserver 10.1.1.1\n", None).search == ["corp"]


def test_render_hosts() -> None:
    text = render_hosts("10.62.0.1", {})
    assert text.splitlines() == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                                 "10.62.0.1\tfaasd-py gateway"]


@pytest.fixture
def shared(tmp_path: Path) -> SharedFiles:
    host = tmp_path / "host-resolv.conf"
    host.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream = tmp_path / "systemd-resolv.conf"
    upstream.write_text("nameserver 10.20.30.40\n")
    return SharedFiles(tmp_path / "shared", NetworkSettings(subnet="10.93.0.0/16"), host, upstream)


def test_shared_files_keep_their_inode(shared: SharedFiles) -> None:
    """A file bind mount pins the inode: every update must write into the same one."""
    shared.write()
    assert shared.resolv_path.read_text() == "nameserver 10.20.30.40\n"
    assert "10.93.0.1\tfaasd-py gateway" in shared.hosts_path.read_text()
    assert oct(shared.hosts_path.stat().st_mode & 0o777) == "0o644"
    inodes = (shared.hosts_path.stat().st_ino, shared.resolv_path.stat().st_ino)

    shared.add_host("nats", "10.93.0.5")
    shared.add_host("queue-worker", "10.93.0.6")
    shared.add_host("nats", "10.93.0.7")  # replaces
    assert shared.hosts() == {"nats": "10.93.0.7", "queue-worker": "10.93.0.6"}
    assert "10.93.0.7\tnats" in shared.hosts_path.read_text().splitlines()
    assert shared.remove_host("queue-worker") is True
    assert shared.remove_host("queue-worker") is False
    shared.write()  # a restart rewrites the base and keeps the run-time hosts
    assert shared.hosts() == {"nats": "10.93.0.7"}
    lines = shared.hosts_path.read_text().splitlines()
    assert lines[2] == "10.93.0.1\tfaasd-py gateway" and lines[-1] == "10.93.0.7\tnats"
    assert (shared.hosts_path.stat().st_ino, shared.resolv_path.stat().st_ino) == inodes
    assert not [p for p in os.listdir(shared.directory) if p not in ("hosts", "resolv.conf")]


def test_shrinking_rewrite_leaves_no_tail(shared: SharedFiles) -> None:
    shared.add_host("a-very-long-service-name-for-padding", "10.93.0.200")
    shared.remove_host("a-very-long-service-name-for-padding")
    assert shared.hosts_path.read_text() == render_hosts("10.93.0.1", {})


@pytest.mark.parametrize(("name", "ip"), [("gateway", "10.93.0.9"), ("bad name", "10.93.0.9"), ("ok", "10.93.0.300")])
def test_add_host_validates(shared: SharedFiles, name: str, ip: str) -> None:
    with pytest.raises(InvalidRequest):
        shared.add_host(name, ip)
