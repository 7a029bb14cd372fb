"""The namespace isolation rules (network/tenant_firewall.py) as text and as parsed back.

Whether the kernel enforces them is tested against real functions in
tests/integration/test_tenant_isolation.py.
"""

from __future__ import annotations

import json

from faasd_py.network.tenant_firewall import SHARED, namespace_of, parse_members, render, set_name, table_name


def test_names_are_nft_identifiers_and_reversible() -> None:
    assert table_name("openfaas0") == "faasd_py_openfaas0"
    assert table_name("br-x.1") == "faasd_py_br_x_1"
    for namespace in ("openfaas-fn", "team-a", "a" * 63, SHARED):
        name = set_name(namespace)
        assert name.replace("_", "").isalnum()
        assert namespace_of(name) == namespace
    assert set_name("a-b") != set_name("a_b")
    assert namespace_of("CNI-FORWARD") is None and namespace_of("t_zz") is None


def test_render_keeps_each_namespace_to_itself() -> None:
    script = render("openfaas0", {"10.62.0.10": "team-a", "10.62.0.9": "team-a", "10.62.0.11": "team-b",
                                  "10.62.0.2": SHARED})
    lines = [ln.strip() for ln in script.splitlines()]
    # replaced whole in one transaction: create (so the delete cannot fail), delete, define
    assert lines[:3] == ["table inet faasd_py_openfaas0", "delete table inet faasd_py_openfaas0",
                         "table inet faasd_py_openfaas0 {"]
    a, b = set_name("team-a"), set_name("team-b")
    assert f"set {a} {{ type ipv4_addr; elements = {{ 10.62.0.9, 10.62.0.10 }}; }}" in lines
    assert f"set {b} {{ type ipv4_addr; elements = {{ 10.62.0.11 }}; }}" in lines
    assert "set shared { type ipv4_addr; elements = { 10.62.0.2 }; }" in lines
    chain = lines[lines.index("chain forward {") + 1:]
    assert chain[:5] == [
        "type filter hook forward priority -10; policy accept;",
        'iifname != "openfaas0" accept',  # only frames bridged between two ports of our bridge
        'oifname != "openfaas0" accept',
        "ip saddr @shared accept",
        "ip daddr @shared accept",
    ]
    assert f'ip saddr @{a} ip daddr @{a} accept comment "namespace team-a"' in chain
    assert f'ip saddr @{b} ip daddr @{b} accept comment "namespace team-b"' in chain
    # no rule lets one namespace's set reach another's, and the last word is drop
    assert not [ln for ln in chain if f"@{a}" in ln and f"@{b}" in ln]
    assert chain[-3].startswith("counter drop")


def test_an_empty_bridge_still_gets_the_drop_rule() -> None:
    script = render("openfaas0", {})
    assert "set shared { type ipv4_addr; }" in script
    assert "counter drop" in script and "ip saddr @t_" not in script


def test_parse_members_reads_what_nft_lists() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "faasd_py_openfaas0"}},
        {"set": {"family": "inet", "name": "shared", "type": "ipv4_addr", "elem": ["10.62.0.2"]}},
        {"set": {"family": "inet", "name": set_name("team-a"), "type": "ipv4_addr",
                 "elem": ["10.62.0.9", "10.62.0.10"]}},
        {"set": {"family": "inet", "name": set_name("empty"), "type": "ipv4_addr"}},
        {"set": {"family": "inet", "name": "someone_elses", "elem": ["10.1.1.1"]}},
        {"chain": {"family": "inet", "name": "forward"}},
    ]}
    assert parse_members(json.dumps(listing)) == {"10.62.0.2": SHARED, "10.62.0.9": "team-a",
                                                  "10.62.0.10": "team-a"}
