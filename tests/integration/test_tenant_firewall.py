"""TenantFirewall against the kernel's nftables (no bridge needed: the table only names it).

That the rules stop traffic between real functions is tested in test_tenancy.py.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest

from faasd_py.network.tenant_firewall import SHARED, TenantFirewall, parse_members, table_name

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed (apt-get install nftables)")]

BRIDGE = "fdpyfwtest0"


def kernel_members() -> dict[str, str] | None:
    """What the kernel enforces now; None if there is no table."""
    listed = subprocess.run(["nft", "-j", "list", "table", "inet", table_name(BRIDGE)], capture_output=True, text=True)
    return parse_members(listed.stdout) if listed.returncode == 0 else None


@pytest.fixture
async def firewall() -> AsyncIterator[TenantFirewall]:
    fw = TenantFirewall(BRIDGE)
    await fw.start()
    assert fw.active, fw.problem
    try:
        yield fw
    finally:
        await fw.remove()
        assert kernel_members() is None


async def test_admit_evict_and_a_restart_taking_over(firewall: TenantFirewall) -> None:
    long_name = "n" * 63  # the longest namespace name: its set name must still be valid
    await firewall.admit("10.99.0.2", SHARED)
    await firewall.admit("10.99.0.3", "team-a")
    await firewall.admit("10.99.0.4", long_name)
    assert kernel_members() == {"10.99.0.2": SHARED, "10.99.0.3": "team-a", "10.99.0.4": long_name}
    await firewall.evict("10.99.0.3")
    await firewall.evict("10.99.0.3")  # twice: nothing to do
    assert kernel_members() == {"10.99.0.2": SHARED, "10.99.0.4": long_name}

    restarted = TenantFirewall(BRIDGE)  # a new daemon: starts from what the kernel enforces
    await restarted.start()
    assert restarted.members() == {"10.99.0.2": SHARED, "10.99.0.4": long_name}
    assert kernel_members() == restarted.members()


async def test_concurrent_changes_all_land(firewall: TenantFirewall) -> None:
    """Changes made while a write runs are folded into the next one, none is lost."""
    ips = [f"10.99.1.{i}" for i in range(2, 42)]
    await asyncio.gather(*(firewall.admit(ip, f"ns{i % 3}") for i, ip in enumerate(ips)))
    assert kernel_members() == {ip: f"ns{i % 3}" for i, ip in enumerate(ips)}
    await asyncio.gather(*(firewall.evict(ip) for ip in ips[::2]))
    assert kernel_members() == {ip: f"ns{i % 3}" for i, ip in enumerate(ips) if i % 2}


async def test_retain_drops_what_no_replica_holds(firewall: TenantFirewall) -> None:
    await firewall.admit("10.99.2.2", "team-a")
    await firewall.admit("10.99.2.3", "team-b")
    await firewall.admit("10.99.2.4", SHARED)
    await firewall.retain(lambda: {"10.99.2.2", "10.99.2.4", "10.99.2.200"})
    assert kernel_members() == {"10.99.2.2": "team-a", "10.99.2.4": SHARED}
