"""End to end: what a deploy request turns into inside the kernel.

The functions are deployed through the API like faas-cli does; the checks read the truth from
the host: the task's /proc entries (environment, mounts, capabilities), its cgroups, and what
the function itself observes when invoked.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from faasd_py.types import DEFAULT_NAMESPACE
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import (
    DaemonHandle,
    Inspector,
    function_body,
    proc_environ,
    proc_mounts,
    proc_status,
    task_file,
    task_hostname,
)

PY = "/usr/bin/python3.11"
ENV_PROCESS = f"{PY} -S -B /home/app/env.py"  # the image's fprocess plus -B: visibly ours
# capability numbers (linux/capability.h) of runtime.spec.DEFAULT_CAPABILITIES
CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
        "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10}


@pytest.fixture(scope="module")
async def functions(daemon: DaemonHandle, images: PushedImages) -> dict[str, str]:
    """Every function of this module, deployed at once (each deploy waits for its own readiness)."""
    bodies = {
        "envfn": function_body("envfn", images["env"], envProcess=ENV_PROCESS,
                               envVars={"LANG": "C", "GREETING": "hallo welt", "fprocess": "ignored",
                                        "UNICODE": "ünïcødé"}),
        "jsonfn": function_body("jsonfn", images["env"], envProcess=f"{PY} -S -m json.tool"),
        "cpufn": function_body("cpufn", images["cpu"], limits={"cpu": "250m", "memory": "96Mi"}),
        "memfn": function_body("memfn", images["mem"], limits={"memory": "64Mi"}),
        "writer-ro": function_body("writer-ro", images["writer"], readOnlyRootFilesystem=True),
        "writer-rw": function_body("writer-rw", images["writer"]),
    }
    await asyncio.gather(*(daemon.deploy_ok(b) for b in bodies.values()))
    return {name: body["image"] for name, body in bodies.items()}


def _cgroup(controller: str, container_id: str) -> Path:
    return Path("/sys/fs/cgroup") / controller / DEFAULT_NAMESPACE / container_id


# --- environment, hostname, mounts ---------------------------------------------------------------


async def test_env_vars_and_env_process_reach_the_function(
    daemon: DaemonHandle, functions: dict[str, str], inspect: Inspector
) -> None:
    status, out = await daemon.invoke("envfn")
    assert status == 200, out
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert env["GREETING"] == "hallo welt"
    assert env["UNICODE"] == "ünïcødé"
    assert env["LANG"] == "C"  # the image says C.UTF-8: the deploy value replaces it
    assert env["fprocess"] == ENV_PROCESS  # envProcess wins over an envVars fprocess
    assert env["PYTHONPATH"] == "/opt/faasd-watchdog"  # image env that was not overridden stays

    # in the task's raw environment block every key appears once (Go takes the first duplicate)
    task = await inspect.task("envfn")
    raw = proc_environ(task.pid)
    keys = [e.split("=", 1)[0] for e in raw]
    assert sorted(keys) == sorted(set(keys)), raw
    assert "LANG=C" in raw and f"fprocess={ENV_PROCESS}" in raw


async def test_env_process_replaces_the_images_command(daemon: DaemonHandle, functions: dict[str, str]) -> None:
    status, out = await daemon.invoke("jsonfn", b'{"b": [1, 2], "a": "x"}')
    assert status == 200, out
    assert out == b'{\n    "b": [\n        1,\n        2\n    ],\n    "a": "x"\n}\n'


async def test_hostname_hosts_and_resolv_conf(functions: dict[str, str], inspect: Inspector) -> None:
    task = await inspect.task("envfn")
    assert task_hostname(task.pid) == "envfn"
    mounts = proc_mounts(task.pid)
    for path in ("/etc/hosts", "/etc/resolv.conf"):
        assert path in mounts, sorted(mounts)
        assert "ro" in mounts[path], (path, mounts[path])
    resolv = task_file(task.pid, "/etc/resolv.conf")
    nameservers = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver")]
    assert nameservers == inspect.settings.network.nameservers == ["127.0.0.1"]
    hosts = task_file(task.pid, "/etc/hosts")
    assert "127.0.0.1" in hosts and "localhost" in hosts


# --- limits --------------------------------------------------------------------------------------


async def test_cpu_and_memory_limits_are_in_the_cgroup_and_enforced(
    daemon: DaemonHandle, functions: dict[str, str], inspect: Inspector
) -> None:
    c = await inspect.instance("cpufn")
    assert int((_cgroup("memory", c.id) / "memory.limit_in_bytes").read_text()) == 96 << 20
    assert int((_cgroup("cpu", c.id) / "cpu.cfs_period_us").read_text()) == 100_000
    assert int((_cgroup("cpu", c.id) / "cpu.cfs_quota_us").read_text()) == 25_000

    status, out = await daemon.invoke("cpufn", path="?ms=1500")
    assert status == 200, out
    burned = json.loads(out)
    ratio = burned["cpu_ms"] / burned["wall_ms"]
    # 250m of a core: about a quarter of the wall time on the CPU (unlimited it is ~1.0)
    assert 0.05 < ratio < 0.4, burned

    # no limits asked, none set: the cgroup says "unlimited"
    free = await inspect.instance("envfn")
    assert int((_cgroup("cpu", free.id) / "cpu.cfs_quota_us").read_text()) == -1


async def test_a_function_over_its_memory_limit_is_oom_killed_and_keeps_serving(
    daemon: DaemonHandle, functions: dict[str, str], inspect: Inspector
) -> None:
    c = await inspect.instance("memfn")
    cg = _cgroup("memory", c.id)
    assert int((cg / "memory.limit_in_bytes").read_text()) == 64 << 20
    before = await inspect.task("memfn")

    status, out = await daemon.invoke("memfn", path="?mb=8")
    assert (status, json.loads(out)["allocated_mb"]) == (200, 8)
    status, out = await daemon.invoke("memfn", path="?mb=256")
    assert status == 500, out
    oom = dict(line.split() for line in (cg / "memory.oom_control").read_text().splitlines())
    assert int(oom["oom_kill"]) >= 1, oom

    # the watchdog survived (only the fprocess was killed): same task, and it still serves
    status, out = await daemon.invoke("memfn", path="?mb=8")
    assert status == 200, out
    after = await inspect.task("memfn")
    assert after.pid == before.pid
    [listed] = [f for f in await daemon.list() if f["name"] == "memfn"]
    assert listed["availableReplicas"] == 1


# --- filesystem and privileges -------------------------------------------------------------------


async def test_read_only_root_filesystem(daemon: DaemonHandle, functions: dict[str, str], inspect: Inspector) -> None:
    status, out = await daemon.invoke("writer-ro")
    assert status == 200, out
    assert json.loads(out) == {"/": "EROFS", "/home/app": "EROFS", "/tmp": "ok"}
    task = await inspect.task("writer-ro")
    assert "ro" in proc_mounts(task.pid)["/"]

    status, out = await daemon.invoke("writer-rw")
    assert status == 200, out
    assert json.loads(out) == {"/": "EACCES", "/home/app": "ok", "/tmp": "ok"}  # uid 12000 owns only its home
    task = await inspect.task("writer-rw")
    assert "rw" in proc_mounts(task.pid)["/"]


async def test_no_new_privileges_and_the_capability_set(functions: dict[str, str], inspect: Inspector) -> None:
    bounding = sum(1 << n for n in CAPS.values())
    for name in ("envfn", "writer-ro"):
        task = await inspect.task(name)
        status = proc_status(task.pid)
        assert status["NoNewPrivs"] == "1", (name, status)
        assert status["Seccomp"] == "2", (name, status)  # filter mode
        assert int(status["CapBnd"], 16) == bounding, (name, status["CapBnd"])
        # the function runs as uid 12000: nothing effective or permitted
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, (name, status)
        assert status["Uid"].split()[:2] == ["12000", "12000"], status["Uid"]
