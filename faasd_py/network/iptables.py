"""Clean up the iptables state the CNI plugins leave behind when their own DEL cannot.

* bridge ``ipMasq`` adds a nat chain per container plus a POSTROUTING jump; its DEL removes them
  only when it still finds the container's interface, i.e. not once the netns is gone.
* firewall adds two CNI-FORWARD rules per IP and the shared CNI-FORWARD / CNI-ADMIN chains, which
  no DEL ever removes.

Everything here matches only what is provably ours (the CNI comment naming our network and a
container id with our prefix, or an address inside our subnet), because other CNI users share
these chains. Only abnormal paths (reconciliation, uninstall) call this module.
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
from collections.abc import Callable

from faasd_py.network.tool import run_tool

log = logging.getLogger(__name__)

IPTABLES = "iptables"


async def run(*args: str, table: str = "filter") -> tuple[int, str]:
    return await run_tool(IPTABLES, "-w", "-t", table, *args)


async def list_rules(chain: str, table: str = "filter") -> list[list[str]] | None:
    """``iptables -S chain`` split into argument lists; None when the chain does not exist."""
    rc, out = await run("-S", chain, table=table)
    if rc != 0:
        return None
    return [shlex.split(line) for line in out.splitlines() if line.startswith("-A ")]


def masq_owner(rule: list[str], network: str) -> str | None:
    """The container id in a bridge ipMasq POSTROUTING rule of ``network``, else None."""
    try:
        comment = rule[rule.index("--comment") + 1]
    except (ValueError, IndexError):
        return None
    head = f'name: "{network}" id: "'
    if not (comment.startswith(head) and comment.endswith('"')):
        return None
    return comment[len(head):-1]


async def remove_masq(network: str, wanted: Callable[[str], bool]) -> list[str]:
    """Delete the ipMasq jump and chain of every container id for which ``wanted(id)`` is true."""
    rules = await list_rules("POSTROUTING", table="nat")
    removed: list[str] = []
    for rule in rules or []:
        cid = masq_owner(rule, network)
        if cid is None or not wanted(cid) or "-j" not in rule:
            continue
        chain = rule[rule.index("-j") + 1]
        await run("-D", *rule[1:], table="nat")
        if chain.startswith("CNI-"):
            await run("-F", chain, table="nat")
            await run("-X", chain, table="nat")
        removed.append(cid)
    if removed:
        log.info("removed leftover ipMasq rules of %s", ", ".join(sorted(set(removed))))
    return removed


def _rule_addresses(rule: list[str]) -> list[str]:
    return [rule[i + 1].split("/")[0] for i, arg in enumerate(rule[:-1]) if arg in ("-s", "-d")]


async def remove_firewall_rules(subnet: str) -> int:
    """Delete CNI-FORWARD rules that accept an address inside ``subnet`` (left by a DEL without IPs)."""
    net = ipaddress.ip_network(subnet, strict=False)
    rules = await list_rules("CNI-FORWARD")
    count = 0
    for rule in rules or []:
        addrs = _rule_addresses(rule)
        if addrs and all(ipaddress.ip_address(a) in net for a in addrs):
            rc, _ = await run("-D", *rule[1:])
            count += rc == 0
    return count


async def remove_empty_firewall_chains() -> bool:
    """Drop CNI-FORWARD / CNI-ADMIN and the FORWARD jump when no CNI user has a rule in them.

    ``iptables -X`` refuses a chain that still has rules or references, so a rule another CNI
    user adds meanwhile makes the deletion fail instead of being lost.
    """
    admin = await list_rules("CNI-ADMIN")
    forward = await list_rules("CNI-FORWARD")
    if forward is None and admin is None:
        return True
    if admin or any(rule[-2:] != ["-j", "CNI-ADMIN"] for rule in forward or []):
        return False
    for rule in await list_rules("FORWARD") or []:
        if rule[-2:] == ["-j", "CNI-FORWARD"]:
            await run("-D", *rule[1:])
    if forward is not None:
        for rule in forward:
            await run("-D", *rule[1:])
        rc, err = await run("-X", "CNI-FORWARD")
        if rc != 0:
            log.warning("CNI-FORWARD not removed: %s", err.strip())
            return False
    if admin is not None:
        rc, err = await run("-X", "CNI-ADMIN")
        if rc != 0:
            log.warning("CNI-ADMIN not removed: %s", err.strip())
            return False
    return True
