"""End to end, the gateway API as faas-cli uses it: login, open routes, bad input, namespaces.

Every request is the one faas-cli sends (see /work/shared/reference/faas-cli-contract.md); a bad
deploy must answer 4xx *and* leave nothing in containerd, /run/netns or the IPAM directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from faasd_py.runtime.client import ContainerdClient
from faasd_py.types import DEFAULT_NAMESPACE
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import DaemonHandle, Inspector, function_body

GO_UA = {"User-Agent": "Go-http-client/1.1"}
CLI_UA = {"User-Agent": "faas-cli/e2e"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- 1. login, open routes, /system/info ---------------------------------------------------------


async def test_login_check_accepts_the_credentials_and_lists_nothing(daemon: DaemonHandle) -> None:
    status, headers, body = await daemon.raw("GET", "/system/functions", headers={**GO_UA, **daemon.auth})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == []


async def test_bad_or_missing_credentials_get_401_with_a_challenge(daemon: DaemonHandle) -> None:
    password = daemon.settings.password_file.read_text().strip()
    attempts = {
        "wrong password": {**GO_UA, **basic("admin", password + "x")},
        "wrong user": {**GO_UA, **basic("root", password)},
        "faas-cli without login (empty Bearer)": {**CLI_UA, "Authorization": "Bearer"},
        "Bearer with the password as token": {**CLI_UA, "Authorization": f"Bearer {password}"},
        "no header": CLI_UA,
    }
    for what, headers in attempts.items():
        for method, path in (("GET", "/system/functions"), ("GET", "/system/info"),
                             ("GET", "/system/function/x?usage=1")):
            status, hdrs, _ = await daemon.raw(method, path, headers=headers)
            assert status == 401, (what, path, status)
            assert hdrs.get("WWW-Authenticate", "").startswith("Basic realm="), (what, hdrs)
    # a deploy without credentials changes nothing
    status, _, _ = await daemon.raw("POST", "/system/functions", headers=CLI_UA,
                                    json=function_body("nope", "127.0.0.1:1/x:y"))
    assert status == 401
    assert await daemon.list() == []


async def test_healthz_is_open_and_root_redirects_to_the_portal(daemon: DaemonHandle) -> None:
    status, _, body = await daemon.raw("GET", "/healthz", headers=GO_UA)
    assert (status, body) == (200, b"OK")
    status, headers, _ = await daemon.raw("GET", "/", headers=GO_UA)
    assert status == 307
    assert headers["Location"] == "/ui/"


async def test_system_info_has_the_fields_faas_cli_version_reads(daemon: DaemonHandle) -> None:
    status, body = await daemon.request("GET", "/system/info", headers=GO_UA)
    assert status == 200
    info = json.loads(body)
    assert info["provider"]["provider"] == "faasd-py"
    assert info["provider"]["orchestration"] == "containerd"
    assert info["provider"]["version"]["release"] and info["provider"]["version"]["sha"]
    assert info["version"]["release"] and "sha" in info["version"]
    assert info["arch"] in ("amd64", "arm64", "arm")


# --- 6. bad input --------------------------------------------------------------------------------


async def test_invalid_json_is_a_400_with_the_reason(daemon: DaemonHandle) -> None:
    for method in ("PUT", "POST"):
        status, body = await daemon.request(method, "/system/functions", data=b'{"service": "x", "image": ',
                                            headers={"Content-Type": "application/json"})
        assert status == 400, (method, status, body)
        assert b"JSON" in body
    status, body = await daemon.request("POST", "/system/functions", json=["not", "an", "object"])
    assert status == 400 and body
    status, body = await daemon.request("POST", "/system/functions", json={"service": "no-image"})
    assert status == 400 and b"image" in body
    status, body = await daemon.request("DELETE", "/system/functions", data=b"{",
                                        headers={"Content-Type": "application/json"})
    assert status == 400 and body


async def test_bad_names_are_400(daemon: DaemonHandle, images: PushedImages, inspect: Inspector) -> None:
    for name in ("Echo", "a" * 64, "echo.fn", "-echo", "echo_fn"):
        status, body = await daemon.deploy(function_body(name, images["echo"]))
        assert status == 400, (name, status, body)
        assert b"name" in body
    assert await daemon.list() == []
    assert inspect.netns() == []


async def test_unknown_namespace_is_400(daemon: DaemonHandle, images: PushedImages, inspect: Inspector) -> None:
    status, body = await daemon.deploy(function_body("lost", images["echo"], namespace="no-such-ns"))
    assert status == 400, body
    assert b"no-such-ns" in body
    status, body = await daemon.request("GET", "/system/functions?namespace=no-such-ns")
    assert status == 400
    assert await inspect.leftovers("lost", DEFAULT_NAMESPACE) == []


def ctr_images(env_socket: str, namespace: str) -> list[str]:
    out = subprocess.run(["ctr", "-a", env_socket, "-n", namespace, "images", "ls", "-q"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


async def test_missing_secret_is_400_and_creates_nothing(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, ctd: ContainerdClient
) -> None:
    ref = images.push_as("echo", "secret-probe")
    before = (inspect.netns(), inspect.ipam(), inspect.veths())
    status, body = await daemon.deploy(function_body("needs-secret", ref, secrets=["no-such-secret"]))
    assert status == 400, body
    assert b"no-such-secret" in body
    assert await inspect.containers("needs-secret") == []
    assert await inspect.leftovers("needs-secret") == []
    assert ref not in ctr_images(inspect.env.containerd_socket, DEFAULT_NAMESPACE)  # not even pulled
    assert (inspect.netns(), inspect.ipam(), inspect.veths()) == before
    status, _ = await daemon.describe("needs-secret")
    assert status == 404


async def test_unknown_image_is_400_and_leaves_nothing(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    before = (inspect.netns(), inspect.ipam(), inspect.veths())
    status, body = await daemon.deploy(function_body("ghost", images.missing()))
    assert status == 400, body
    assert b"does-not-exist" in body
    assert await inspect.leftovers("ghost") == []
    assert (inspect.netns(), inspect.ipam(), inspect.veths()) == before
    assert await daemon.list() == []


async def test_a_function_that_exits_at_start_fails_the_deploy_and_leaves_nothing(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    before = (inspect.netns(), inspect.ipam(), inspect.veths())
    status, body = await daemon.deploy(function_body("crasher", images["crash"]))
    assert status >= 500 and status != 502, (status, body)
    assert b"exited" in body
    await daemon.settle()
    assert await inspect.settled("crasher") == []
    assert (inspect.netns(), inspect.ipam(), inspect.veths()) == before
    assert await daemon.list() == []
    status, _ = await daemon.describe("crasher")
    assert status == 404
    # and the name is free again: the same (failing) deploy answers the same way, not 409
    status, body = await daemon.deploy(function_body("crasher", images["crash"]))
    assert status >= 500 and b"exited" in body
    await daemon.settle()
    assert await inspect.settled("crasher") == []


# --- 10. namespaces ------------------------------------------------------------------------------

TEAM = "e2e-team"


def _cgroup_parents(namespace: str) -> list[Path]:
    return [d for d in (c / namespace for c in Path("/sys/fs/cgroup").iterdir()) if d.is_dir()]


def _runtime_leftovers(namespace: str) -> list[Path]:
    """What runc leaves per containerd namespace: cgroup parents and the shim's runc root."""
    runc_root = Path(f"/run/containerd/runc/{namespace}")
    return _cgroup_parents(namespace) + ([runc_root] if runc_root.exists() else [])


async def test_namespaces_hold_separate_functions_of_the_same_name(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, ctd: ContainerdClient
) -> None:
    ns_body = {"name": TEAM, "annotations": {"openfaas": "1"}, "labels": {"openfaas": "1"}}
    status, body = await daemon.request("POST", "/system/namespace/", json=ns_body,
                                        headers={"User-Agent": "openfaas-go-sdk"})
    assert status in (200, 201, 202), body
    assert (await ctd.list_namespaces()).get(TEAM, {}).get("openfaas") == "1"
    status, body = await daemon.request("GET", "/system/namespaces")
    assert status == 200 and TEAM in json.loads(body)

    env = images["env"]
    await daemon.deploy_ok(function_body("twin", env, envVars={"WHO": "default"}))
    await daemon.deploy_ok(function_body("twin", env, namespace=TEAM, envVars={"WHO": "team"}))

    default_list, team_list = await daemon.list(), await daemon.list(TEAM)
    assert [(f["name"], f["namespace"]) for f in default_list] == [("twin", DEFAULT_NAMESPACE)]
    assert [(f["name"], f["namespace"]) for f in team_list] == [("twin", TEAM)]
    status, described = await daemon.describe("twin", TEAM)
    assert status == 200 and described["envVars"] == {"WHO": "team"}

    for target, who in (("twin", "default"), ("twin.openfaas-fn", "default"), (f"twin.{TEAM}", "team")):
        status, out = await daemon.invoke(target)
        assert status == 200, (target, out)
        assert f"WHO={who}\n".encode() in out, (target, out)

    a, b = await inspect.instance("twin"), await inspect.instance("twin", TEAM)
    assert sorted(inspect.netns()) == sorted([inspect.netns_name(DEFAULT_NAMESPACE, a.id),
                                              inspect.netns_name(TEAM, b.id)])
    assert sorted(inspect.ipam().values()) == sorted(inspect.netns())

    # a namespace that still has functions cannot go
    status, body = await daemon.request("DELETE", f"/system/namespace/{TEAM}",
                                        json={"name": TEAM, "labels": {"openfaas": "1"}})
    assert status == 409, body

    status, body = await daemon.remove("twin", TEAM)
    assert status == 202, body
    await daemon.settle()
    assert await inspect.settled("twin", TEAM) == []
    status, out = await daemon.invoke("twin")
    assert status == 200 and b"WHO=default" in out
    status, out = await daemon.invoke(f"twin.{TEAM}")
    assert status == 404, out
    status, body = await daemon.remove("twin")
    assert status == 202, body
    await daemon.settle()
    assert await inspect.settled("twin") == []


async def test_an_emptied_namespace_can_be_deleted(daemon: DaemonHandle, ctd: ContainerdClient) -> None:
    if TEAM not in await ctd.list_namespaces():
        pytest.skip("the namespace test did not run")
    try:
        status, body = await daemon.request("DELETE", f"/system/namespace/{TEAM}",
                                            json={"name": TEAM, "labels": {"openfaas": "1"}})
        assert status == 202, body  # although containerd still held the function's pulled image
        assert TEAM not in await ctd.list_namespaces()
        status, body = await daemon.request("GET", "/system/namespaces")
        assert TEAM not in json.loads(body)
        # nor did runc's per-namespace leftovers stay
        assert _runtime_leftovers(TEAM) == []
    finally:
        for d in _cgroup_parents(TEAM):  # only if the test failed: leave the host clean anyway
            for child in [*sorted((p for p in d.rglob("*") if p.is_dir()), reverse=True), d]:
                with contextlib.suppress(OSError):
                    child.rmdir()
