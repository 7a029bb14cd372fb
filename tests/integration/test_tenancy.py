"""Secrets and namespaces end to end: the real daemon over HTTP, with faas-cli's exact requests
(faas-cli-contract.md, "secret" and "namespace"), checked against the disk, containerd and what
a function really reads from its mounts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faasd_py.network.tenant_firewall import parse_members, table_name
from faasd_py.runtime.client import ContainerdClient
from faasd_py.types import DEFAULT_NAMESPACE
from tests.infra import TestEnv
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import DaemonHandle, Inspector, function_body, proc_mounts
from tests.integration.fn_images import build_and_push

OF = {"openfaas": "1"}
CLI = {"User-Agent": "faas-cli/e2e"}
GO_SDK = {"User-Agent": "openfaas-go-sdk"}
TEAM = "team-a"
MOUNT = "/var/openfaas/secrets"


@pytest.fixture(scope="module")
async def reader(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> str:
    return await build_and_push(testenv, tmp_path_factory.mktemp("tenancy-images"), "reader")


# --- faas-cli's requests ----------------------------------------------------------------------------


async def secret(daemon: DaemonHandle, method: str, name: str, namespace: str = "", *, value: str | None = None,
                 raw: bytes | None = None, auth: bool = True, query: str = "") -> tuple[int, bytes]:
    """``faas-cli secret create|update|remove``: JSON body {name, namespace?, value?, rawValue?}."""
    body: dict[str, Any] = {"name": name}
    if namespace:
        body["namespace"] = namespace
    if value is not None:
        body["value"] = value
    if raw is not None:
        body["rawValue"] = base64.b64encode(raw).decode()
    return await daemon.request(method, "/system/secrets" + query, json=body, auth=auth, headers=CLI)


async def list_secrets(daemon: DaemonHandle, namespace: str = "") -> list[dict[str, Any]]:
    status, body = await daemon.request("GET", "/system/secrets" + (f"?namespace={namespace}" if namespace else ""),
                                        headers=CLI)
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)
    return result


def ns_body(name: str, labels: dict[str, str] | None = None, **annotations: str) -> dict[str, Any]:
    """What ``faas-cli namespace create|update`` sends (the go-sdk always adds openfaas=1)."""
    return {"name": name, "annotations": {"openfaas": "1", **annotations}, "labels": OF if labels is None else labels}


async def create_namespace(daemon: DaemonHandle, name: str) -> None:
    status, body = await daemon.request("POST", "/system/namespace/", json=ns_body(name), headers=GO_SDK)
    assert status == 201, body


async def delete_namespace(daemon: DaemonHandle, name: str) -> tuple[int, bytes]:
    """``faas-cli namespace remove``: DELETE with {name, labels: {openfaas: 1}}."""
    return await daemon.request("DELETE", f"/system/namespace/{name}", json={"name": name, "labels": OF},
                                headers=GO_SDK)


async def read_secret(daemon: DaemonHandle, fn: str, name: str = "s1") -> dict[str, Any]:
    status, out = await daemon.invoke(fn, path=f"?name={name}")
    assert status == 200, out
    result: dict[str, Any] = json.loads(out)
    return result


async def clear_namespace(daemon: DaemonHandle, namespace: str) -> None:
    """Best effort: whatever a failed test left in ``namespace``, and the namespace itself."""
    for fn in await daemon.list(namespace):
        await daemon.remove(fn["name"], namespace)
    await daemon.settle()
    for s in await list_secrets(daemon, namespace):
        await secret(daemon, "DELETE", s["name"], namespace)
    if namespace != DEFAULT_NAMESPACE:
        await delete_namespace(daemon, namespace)


@pytest.fixture
async def clean(daemon: DaemonHandle) -> AsyncIterator[None]:
    """Each test starts and ends with no secret, no extra namespace and no function."""
    yield
    _, body = await daemon.request("GET", "/system/namespaces")
    for ns in json.loads(body):
        await clear_namespace(daemon, ns)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# --- secrets: the API ----------------------------------------------------------------------------------


async def test_secret_api_as_faas_cli_uses_it(daemon: DaemonHandle, clean: None) -> None:
    await create_namespace(daemon, TEAM)
    status, body = await secret(daemon, "POST", "s1", value="one")
    assert status in (200, 201, 202), body
    # faas-cli secret create --from-file: the trimmed text and the raw bytes
    blob = bytes(range(256))
    status, body = await secret(daemon, "POST", "bin", TEAM, value=blob.decode("latin-1").strip(), raw=blob)
    assert status in (200, 201, 202), body

    listed = await list_secrets(daemon)
    assert listed == [{"name": "s1", "namespace": DEFAULT_NAMESPACE}]  # names only, never a value
    assert await list_secrets(daemon, TEAM) == [{"name": "bin", "namespace": TEAM}]
    status, body = await daemon.request("GET", "/system/secrets?namespace=openfaas-fn", headers=CLI)
    assert b"one" not in body and b"value" not in body.lower()

    status, body = await secret(daemon, "POST", "s1", value="two")
    assert status == 409, body  # faas-cli prints: secret with the name "s1" already exists
    assert b"already exists" in body
    status, body = await secret(daemon, "PUT", "s1", value="two")
    assert status in (200, 202), body
    status, body = await secret(daemon, "PUT", "nope", value="x")
    assert status == 404, body  # faas-cli prints: unable to find secret: nope
    status, body = await secret(daemon, "PUT", "s1", TEAM, value="x")  # same name, other namespace
    assert status == 404, body

    # remove: faas-cli sends the namespace in the body; the OpenFaaS UI in the query
    status, body = await secret(daemon, "DELETE", "bin", TEAM)
    assert status in (200, 202), body
    status, body = await secret(daemon, "POST", "q", TEAM, value="v")
    assert status in (200, 201, 202), body
    status, body = await secret(daemon, "DELETE", "q", query=f"?namespace={TEAM}")
    assert status in (200, 202), body
    assert await list_secrets(daemon, TEAM) == []
    status, body = await secret(daemon, "DELETE", "bin", TEAM)
    assert status == 404, body  # faas-cli: Unable to find secret: bin
    status, body = await secret(daemon, "DELETE", "s1")
    assert status in (200, 202), body
    assert await list_secrets(daemon) == []


async def test_bad_secret_requests_are_400_and_store_nothing(daemon: DaemonHandle, clean: None) -> None:
    store = daemon.settings.state_dir / "function-secrets"
    before = sorted(store.rglob("*")) if store.exists() else []
    for name in ("../../etc/passwd", "a/b", "..", ".hidden", "UPPER", "a..b", "-x", "x_y", "x" * 254, ""):
        for method in ("POST", "PUT", "DELETE"):
            status, body = await secret(daemon, method, name, value="v")
            assert status == 400, (name, method, status, body)
    for method in ("POST", "PUT"):
        status, body = await daemon.request(method, "/system/secrets", data=b'{"name": "x", ', headers=CLI)
        assert status == 400, body
        status, body = await daemon.request(method, "/system/secrets", json={"name": "x"}, headers=CLI)
        assert status == 400 and b"value" in body
        status, body = await daemon.request(method, "/system/secrets", json={"name": "x", "rawValue": "%%%"},
                                            headers=CLI)
        assert status == 400 and b"base64" in body
    for method in ("POST", "PUT", "DELETE"):
        status, body = await secret(daemon, method, "x", "no-such-ns", value="v")
        assert status == 400 and b"no-such-ns" in body, (method, status, body)
    status, body = await daemon.request("GET", "/system/secrets?namespace=no-such-ns", headers=CLI)
    assert status == 400, body
    after = sorted(store.rglob("*")) if store.exists() else []
    assert after == before


async def test_secret_routes_need_auth(daemon: DaemonHandle, clean: None) -> None:
    for method in ("GET", "POST", "PUT", "DELETE"):
        status, _ = await secret(daemon, method, "s1", value="v", auth=False)
        assert status == 401, method
        status, _ = await daemon.request(method, "/system/secrets", auth=False, json={"name": "s1", "value": "v"},
                                         headers={"Authorization": "Bearer", **CLI})
        assert status == 401, method
    assert await list_secrets(daemon) == []


async def test_secrets_are_root_only_files_on_disk(daemon: DaemonHandle, clean: None) -> None:
    await create_namespace(daemon, TEAM)
    blob = b"\x00\xff\r\n binary \x80"
    for ns, value in ((DEFAULT_NAMESPACE, None), (TEAM, blob)):
        status, body = await secret(daemon, "POST", "s1", ns, value="text value" if value is None else "",
                                    raw=value)
        assert status == 201, body
    store = daemon.settings.state_dir / "function-secrets"
    assert mode(store) == 0o700
    for ns, expected in ((DEFAULT_NAMESPACE, b"text value"), (TEAM, blob)):
        f = store / ns / "s1"
        assert mode(f.parent) == 0o700 and mode(f) == 0o600
        assert (f.stat().st_uid, f.stat().st_gid) == (0, 0)
        assert f.read_bytes() == expected  # rawValue is stored byte for byte


# --- secrets: in functions --------------------------------------------------------------------------


async def test_a_non_root_function_reads_its_secret_and_sees_updates(
    daemon: DaemonHandle, inspect: Inspector, reader: str, clean: None
) -> None:
    blob = bytes(range(256))
    assert (await secret(daemon, "POST", "s1", value="first value"))[0] == 201
    assert (await secret(daemon, "POST", "bin", value="", raw=blob))[0] == 201
    await daemon.deploy_ok(function_body("reader", reader, secrets=["s1", "bin"]))

    got = await read_secret(daemon, "reader")
    assert bytes.fromhex(got["value"]) == b"first value"
    assert got["me"] == 12000 and (got["uid"], got["gid"]) == (12000, 12000)  # the image's user owns its copy
    assert got["mode"] == "0o400"
    assert got["write"] in ("EACCES", "EROFS")
    assert bytes.fromhex((await read_secret(daemon, "reader", "bin"))["value"]) == blob
    missing = await read_secret(daemon, "reader", "other")
    assert missing["error"] == "ENOENT" and missing["listing"] == ["bin", "s1"]  # only what it lists

    c = await inspect.instance("reader")
    task = await inspect.task("reader")
    assert "ro" in proc_mounts(task.pid)[MOUNT]
    # the store itself is not what is mounted: its files stay root-only 0600
    assert mode(daemon.settings.state_dir / "function-secrets" / DEFAULT_NAMESPACE / "s1") == 0o600

    # faas-cli secret update: the running function sees the new value on its next read, no restart
    status, body = await secret(daemon, "PUT", "s1", value="second, longer value")
    assert status in (200, 202), body
    got = await read_secret(daemon, "reader")
    assert bytes.fromhex(got["value"]) == b"second, longer value"
    assert got["mode"] == "0o400" and got["uid"] == 12000 and got["listing"] == ["bin", "s1"]
    status, body = await secret(daemon, "PUT", "s1", value="3")
    assert bytes.fromhex((await read_secret(daemon, "reader"))["value"]) == b"3"
    assert (await inspect.instance("reader")).id == c.id and (await inspect.task("reader")).pid == task.pid

    status, body = await daemon.remove("reader")
    assert status == 202, body
    await daemon.settle()
    assert await inspect.settled("reader") == []
    copies = daemon.settings.state_dir / "secret-mounts" / DEFAULT_NAMESPACE
    assert not (copies / c.id).exists()  # the per-instance copies go with the instance


async def test_deploy_or_update_with_a_missing_secret_is_400_and_changes_nothing(
    daemon: DaemonHandle, inspect: Inspector, reader: str, clean: None
) -> None:
    before = (inspect.netns(), inspect.ipam(), inspect.veths())
    status, body = await daemon.deploy(function_body("reader", reader, secrets=["missing-one"]))
    assert status == 400, body
    assert b"missing-one" in body
    assert await inspect.containers("reader") == [] and await inspect.leftovers("reader") == []
    assert (inspect.netns(), inspect.ipam(), inspect.veths()) == before
    assert (await daemon.describe("reader"))[0] == 404

    assert (await secret(daemon, "POST", "s1", value="v"))[0] == 201
    await daemon.deploy_ok(function_body("reader", reader, secrets=["s1"]))
    running = await inspect.instance("reader")
    status, body = await daemon.deploy(function_body("reader", reader, secrets=["s1", "missing-one"]))
    assert status == 400 and b"missing-one" in body
    assert [c.id for c in await inspect.containers("reader")] == [running.id]  # untouched
    assert bytes.fromhex((await read_secret(daemon, "reader"))["value"]) == b"v"

    # a secret of another namespace does not count
    await create_namespace(daemon, TEAM)
    assert (await secret(daemon, "POST", "only-team", TEAM, value="t"))[0] == 201
    status, body = await daemon.deploy(function_body("reader2", reader, secrets=["only-team"]))
    assert status == 400 and b"only-team" in body
    assert await inspect.containers("reader2") == []


# --- namespaces ----------------------------------------------------------------------------------


async def test_namespace_routes_need_auth(daemon: DaemonHandle, ctd: ContainerdClient, clean: None) -> None:
    """faasd leaves these open; the go-sdk sends no credentials at all without a login."""
    for method, path, body in (("GET", "/system/namespaces", None), ("GET", "/system/namespace/team-x", None),
                               ("POST", "/system/namespace/", ns_body("team-x")),
                               ("PUT", "/system/namespace/team-x", ns_body("team-x")),
                               ("DELETE", "/system/namespace/openfaas-fn", {"name": "openfaas-fn", "labels": OF})):
        for headers in (GO_SDK, {**GO_SDK, "Authorization": "Basic YWRtaW46d3Jvbmc="}):
            status, hdrs, _ = await daemon.raw(method, path, json=body, headers=headers)
            assert status == 401, (method, path, status)
            assert hdrs.get("WWW-Authenticate", "").startswith("Basic")
    assert "team-x" not in await ctd.list_namespaces()


async def test_namespace_lifecycle_as_faas_cli_uses_it(
    daemon: DaemonHandle, ctd: ContainerdClient, clean: None
) -> None:
    name = "team-b"
    # faas-cli namespace create team-b -l team=b --annotation owner=me
    status, body = await daemon.request("POST", "/system/namespace/",
                                        json=ns_body(name, {**OF, "team": "b"}, owner="me"), headers=GO_SDK)
    assert status == 201, body
    assert (await ctd.list_namespaces())[name]["openfaas"] == "1"
    status, body = await daemon.request("POST", "/system/namespace/", json=ns_body(name), headers=GO_SDK)
    assert status == 409, body
    status, body = await daemon.request("POST", "/system/namespace/", json=ns_body("team-c", {"team": "c"}),
                                        headers=GO_SDK)
    assert status == 400 and b"openfaas=1" in body
    for bad in ("Team", "a_b", "x" * 64):
        status, body = await daemon.request("POST", "/system/namespace/", json=ns_body(bad), headers=GO_SDK)
        assert status == 400, (bad, body)

    status, body = await daemon.request("GET", f"/system/namespace/{name}", headers=GO_SDK)
    assert status == 200, body
    got = json.loads(body)
    assert got["name"] == name and got["labels"] == {"openfaas": "1", "team": "b"}
    assert got["annotations"] == {"openfaas": "1", "owner": "me"}
    status, body = await daemon.request("GET", "/system/namespace/team-nope", headers=GO_SDK)
    assert status == 404, body  # faas-cli: namespace team-nope not found

    status, body = await daemon.request("GET", "/system/namespaces", headers=GO_SDK)
    assert status == 200
    listed = json.loads(body)
    assert listed[0] == DEFAULT_NAMESPACE and name in listed

    status, body = await daemon.request("PUT", f"/system/namespace/{name}",
                                        json=ns_body(name, {**OF, "tier": "gold"}), headers=GO_SDK)
    assert status == 202, body
    got = json.loads((await daemon.request("GET", f"/system/namespace/{name}"))[1])
    assert got["labels"] == {"openfaas": "1", "tier": "gold"}  # the new set replaces the old one
    status, body = await daemon.request("PUT", "/system/namespace/team-nope", json=ns_body("team-nope"),
                                        headers=GO_SDK)
    assert status == 404, body
    status, body = await daemon.request("PUT", f"/system/namespace/{name}", json=ns_body(name, {"tier": "x"}),
                                        headers=GO_SDK)
    assert status == 400, body

    status, body = await delete_namespace(daemon, name)
    assert status == 202, body
    assert name not in await ctd.list_namespaces()
    assert (await daemon.request("GET", f"/system/namespace/{name}"))[0] == 404
    assert name not in json.loads((await daemon.request("GET", "/system/namespaces"))[1])
    assert (await delete_namespace(daemon, name))[0] == 404  # faas-cli: namespace team-b not found


async def test_there_is_no_cap_on_namespaces(daemon: DaemonHandle, ctd: ContainerdClient, clean: None) -> None:
    names = [f"tenant-{i:02d}" for i in range(30)]
    for n in names:
        await create_namespace(daemon, n)
    listed = json.loads((await daemon.request("GET", "/system/namespaces"))[1])
    assert set(names) <= set(listed)
    for n in names:
        assert (await secret(daemon, "POST", "s", n, value=n))[0] == 201
    assert await list_secrets(daemon, "tenant-29") == [{"name": "s", "namespace": "tenant-29"}]
    for n in names:
        assert (await secret(daemon, "DELETE", "s", n))[0] == 202
        status, body = await delete_namespace(daemon, n)
        assert status == 202, body
    assert not set(names) & set(await ctd.list_namespaces())


def runtime_dirs(namespace: str) -> list[Path]:
    """What runc keeps per namespace: a cgroup parent per controller and the shim's runc root."""
    dirs = [c / namespace for c in Path("/sys/fs/cgroup").iterdir()] + [Path("/run/containerd/runc") / namespace]
    return [d for d in dirs if d.is_dir()]


async def test_functions_and_secrets_live_per_namespace(
    daemon: DaemonHandle, inspect: Inspector, ctd: ContainerdClient, testenv: TestEnv, reader: str, clean: None
) -> None:
    await create_namespace(daemon, TEAM)
    assert (await secret(daemon, "POST", "s1", TEAM, value="team value"))[0] == 201
    assert (await secret(daemon, "POST", "s1", value="default value"))[0] == 201
    # the same function name in two namespaces: two functions, each with its own secret
    await daemon.deploy_ok(function_body("fn", reader, namespace=TEAM, secrets=["s1"], readOnlyRootFilesystem=True))
    await daemon.deploy_ok(function_body("fn", reader, secrets=["s1"]))

    assert [f["name"] for f in await daemon.list(TEAM)] == ["fn"]
    assert [f["name"] for f in await daemon.list()] == ["fn"]
    status, described = await daemon.describe("fn", TEAM)
    assert status == 200 and described["namespace"] == TEAM and described["secrets"] == ["s1"]
    for target, value in ((f"fn.{TEAM}", b"team value"), ("fn", b"default value"),
                          ("fn.openfaas-fn", b"default value")):
        got = await read_secret(daemon, target)
        assert bytes.fromhex(got["value"]) == value, target
    team_fn, default_fn = await inspect.instance("fn", TEAM), await inspect.instance("fn")
    assert team_fn.id != default_fn.id

    # an update of the team's secret reaches the team's function only
    assert (await secret(daemon, "PUT", "s1", TEAM, value="team v2"))[0] == 202
    assert bytes.fromhex((await read_secret(daemon, f"fn.{TEAM}"))["value"]) == b"team v2"
    assert bytes.fromhex((await read_secret(daemon, "fn"))["value"]) == b"default value"

    # a namespace that still has a function or a secret cannot go: 409 naming them
    status, body = await delete_namespace(daemon, TEAM)
    assert status == 409, body
    assert b"function fn" in body and b"secret s1" in body
    assert (await daemon.remove("fn", TEAM))[0] == 202
    await daemon.settle()
    assert await inspect.settled("fn", TEAM) == []
    status, body = await delete_namespace(daemon, TEAM)
    assert status == 409 and b"secret s1" in body and b"function" not in body, body
    assert (await secret(daemon, "DELETE", "s1", TEAM))[0] == 202

    # empty now (only the image pulled for it is left in containerd): it goes, with its leftovers
    status, body = await delete_namespace(daemon, TEAM)
    assert status == 202, body
    assert TEAM not in await ctd.list_namespaces()
    assert runtime_dirs(TEAM) == []
    status, out = await daemon.invoke(f"fn.{TEAM}")
    assert status == 404, out
    # the default namespace's function is untouched
    assert bytes.fromhex((await read_secret(daemon, "fn"))["value"]) == b"default value"
    assert (await inspect.instance("fn")).id == default_fn.id
    with contextlib.suppress(FileNotFoundError):
        assert not list((daemon.settings.state_dir / "function-secrets" / TEAM).iterdir())


# --- network isolation between namespaces ----------------------------------------------------------

PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 8080), timeout=float(sys.argv[2])).close()
    print("open")
except OSError as exc:
    print(type(exc).__name__)
"""


def reaches(pid: int, address: str, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from inside the task's network namespace to address:8080 opens."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", PROBE, address, str(timeout)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out in ("open", "TimeoutError", "ConnectionRefusedError", "OSError"), out
    return out == "open"


def link_local(pid: int) -> str | None:
    """The task's IPv6 link-local address once duplicate address detection is over (a tentative
    one refuses connections whatever the firewall does); None if IPv6 is off there."""
    for _ in range(50):
        out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-6", "-o", "addr", "show", "dev", "eth0",
                              "scope", "link", "-tentative"], capture_output=True, text=True, check=True).stdout.split()
        if "inet6" in out:
            return f"{out[out.index('inet6') + 1].split('/')[0]}%eth0"
        time.sleep(0.1)
    return None


def firewall_sets(daemon: DaemonHandle) -> dict[str, str]:
    listing = subprocess.run(["nft", "-j", "list", "table", "inet", table_name(daemon.settings.network.bridge)],
                             capture_output=True, text=True, check=True).stdout
    return parse_members(listing)


async def where(inspect: Inspector, name: str, namespace: str = DEFAULT_NAMESPACE) -> tuple[int, str]:
    """(pid, ip) of a one-replica function's task."""
    c = await inspect.instance(name, namespace)
    task = await inspect.client.get_task(namespace, c.id)
    assert task is not None
    [ip] = [ip for ip, owner in inspect.ipam().items() if owner == inspect.netns_name(namespace, c.id)]
    return task.pid, ip


async def test_functions_reach_their_own_namespace_only(
    daemon: DaemonHandle, inspect: Inspector, images: PushedImages, clean: None
) -> None:
    await create_namespace(daemon, TEAM)
    await daemon.deploy_ok(function_body("iso-a1", images["echo"]))
    await daemon.deploy_ok(function_body("iso-a2", images["echo"]))
    await daemon.deploy_ok(function_body("iso-b1", images["echo"], namespace=TEAM))
    (a1, a1_ip), (a2, a2_ip), (b1, b1_ip) = [await where(inspect, n, ns) for n, ns in
                                             (("iso-a1", DEFAULT_NAMESPACE), ("iso-a2", DEFAULT_NAMESPACE),
                                              ("iso-b1", TEAM))]
    assert firewall_sets(daemon) == {a1_ip: DEFAULT_NAMESPACE, a2_ip: DEFAULT_NAMESPACE, b1_ip: TEAM}

    async def check() -> None:
        assert await asyncio.to_thread(reaches, a1, a2_ip)  # same namespace: open
        assert await asyncio.to_thread(reaches, a2, a1_ip)
        assert not await asyncio.to_thread(reaches, a1, b1_ip)  # across namespaces: dropped, both ways
        assert not await asyncio.to_thread(reaches, b1, a2_ip)
        # IPv6 link-local would go around the address sets (the watchdog listens on [::]): dropped too
        b1_v6 = await asyncio.to_thread(link_local, b1)
        if b1_v6 is not None:
            assert not await asyncio.to_thread(reaches, a1, b1_v6)
        # the gateway (on the host, not bridged) still reaches all of them
        for name in ("iso-a1", "iso-a2", f"iso-b1.{TEAM}"):
            assert (await daemon.invoke(name, b"hi"))[0] == 200

    await check()
    # a restarted daemon keeps enforcing (and takes over) the same sets
    await daemon.stop()
    assert firewall_sets(daemon) == {a1_ip: DEFAULT_NAMESPACE, a2_ip: DEFAULT_NAMESPACE, b1_ip: TEAM}
    await daemon.start()
    await check()
    # a removed replica's address leaves its set before CNI hands it to anyone else
    assert (await daemon.remove("iso-b1", TEAM))[0] == 202
    assert await inspect.settled("iso-b1", TEAM) == []
    assert firewall_sets(daemon) == {a1_ip: DEFAULT_NAMESPACE, a2_ip: DEFAULT_NAMESPACE}

    # turned off, the table goes (stale sets would cut off new replicas and let reused addresses
    # keep their old namespace's rights); turned on again, it is rebuilt from the running replicas
    daemon.settings.network.isolate_namespaces = False
    try:
        await daemon.stop()
        await daemon.start()
        with pytest.raises(subprocess.CalledProcessError):
            firewall_sets(daemon)
    finally:
        daemon.settings.network.isolate_namespaces = True
        await daemon.stop()
        await daemon.start()
    assert firewall_sets(daemon) == {a1_ip: DEFAULT_NAMESPACE, a2_ip: DEFAULT_NAMESPACE}
    assert await asyncio.to_thread(reaches, a1, a2_ip)
