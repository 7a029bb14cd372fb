"""The test infrastructure itself: it is up, and down() removes what a crashed run leaves behind."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.infra import TestEnv

pytestmark = pytest.mark.integration


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def test_containerd_registry_and_journald_answer(testenv: TestEnv) -> None:
    out = subprocess.run(["ctr", "-a", testenv.containerd_socket, "version"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0 and "Server:" in out.stdout
    with urllib.request.urlopen(f"http://{testenv.registry}/v2/", timeout=5) as r:
        assert r.status == 200
    assert testenv.journald and Path("/run/systemd/journal/socket").is_socket()
    assert json.loads((testenv.path / "env.json").read_text())["containerd_socket"] == testenv.containerd_socket


def test_settings_keep_the_daemon_inside_the_env(testenv: TestEnv) -> None:
    s = testenv.settings()
    assert str(s.state_dir).startswith(testenv.dir) and str(s.run_dir).startswith(testenv.dir)
    assert s.network.ipam_dir.startswith(testenv.dir)
    assert (s.network.bridge, s.network.subnet, s.network.netns_prefix) == (
        testenv.bridge, testenv.subnet, testenv.netns_prefix)
    assert s.host == "127.0.0.1" and s.port != s.metrics_port


def test_down_removes_what_a_crashed_run_left(testenv: TestEnv, tmp_path: Path) -> None:
    """A second env (no services) in a /24 of the session's subnet, with leftovers planted by hand."""
    net = ipaddress.IPv4Network(testenv.subnet)
    sub = list(net.subnets(new_prefix=24))[-2]
    ip = str(sub.network_address + 5)
    crashed = TestEnv(dir=str(tmp_path / "crashed"), bridge=f"{testenv.bridge[:11]}lk", subnet=str(sub),
                      netns_prefix=f"{testenv.netns_prefix}lk-")
    crashed.path.mkdir()
    chain = "CNI-fdpytestleak0000000000"
    try:
        sh("ip", "netns", "add", f"{crashed.netns_prefix}c1")
        sh("ip", "link", "add", crashed.bridge, "type", "bridge")
        sh("iptables", "-w", "-t", "nat", "-N", chain)
        sh("iptables", "-w", "-t", "nat", "-A", chain, "-d", str(sub), "-j", "ACCEPT")
        sh("iptables", "-w", "-t", "nat", "-A", chain, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE")
        sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", f"{ip}/32", "-m", "comment", "--comment",
           'name: "fdpy-test" id: "leak"', "-j", chain)
        sh("iptables", "-w", "-A", "FORWARD", "-d", f"{ip}/32", "-j", "ACCEPT")
        (crashed.path / "mnt").mkdir()
        sh("mount", "-t", "tmpfs", "tmpfs", str(crashed.path / "mnt"))

        found = crashed.leaks()
        assert f"netns {crashed.netns_prefix}c1" in found
        assert f"bridge {crashed.bridge}" in found
        assert f"mount {crashed.path / 'mnt'}" in found
        assert sum(1 for f in found if f.startswith("iptables")) == 3  # chain rule, jump, FORWARD rule

        crashed.down()

        assert crashed.leaks() == []
        chains = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout
        assert chain not in chains
    finally:
        crashed.down()  # idempotent: a failed assertion must not leave the leftovers behind
