"""ContainerdClient, build_spec and resolve_user against a real containerd + runc.

The container's root filesystem is an empty snapshot that the test fills with an /etc/passwd
and the merged-usr symlinks; the host's /usr is bind-mounted read-only, so /bin/sh, sleep,
id and unshare come from the host without building or importing an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from faasd_py.errors import ContainerdAlreadyExists, ContainerdError, ContainerdNotFound
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.model import Event, ImageConfig, TaskState
from faasd_py.runtime.rootfs import resolve_user
from faasd_py.runtime.spec import BindMount, User, build_spec
from tests.infra import TestEnv

pytestmark = pytest.mark.integration

NS = "fdpya-test"
CGROUP_PARENT = "fdpya-test"
FUNCTION_LABEL = "com.openfaas.function"


@pytest.fixture(scope="module")
async def client(testenv: TestEnv) -> AsyncIterator[ContainerdClient]:
    c = ContainerdClient(testenv.containerd_socket, timeout=20)
    await c.connect()
    try:
        await c.create_namespace(NS, {"openfaas": "1"})
        yield c
        await c.delete_namespace(NS)
    finally:
        await c.close()
        await asyncio.to_thread(_remove_cgroup_parent)


def _remove_cgroup_parent() -> None:
    """runc leaves the (empty) parent cgroup of our containers behind."""
    for d in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"):
        with contextlib.suppress(OSError):
            d.rmdir()


@pytest.fixture
def netns(testenv: TestEnv) -> Iterator[str]:
    name = f"{testenv.netns_prefix}c1"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def sleeper_spec(netns_path: str, cid: str, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "image": ImageConfig(cmd=("/bin/sleep", "1000")),
        "user": User(0, 0),
        "hostname": cid,
        "env": {},
        "args": None,
        "netns_path": netns_path,
        "cgroups_path": f"/{CGROUP_PARENT}/{cid}",
        "binds": [BindMount("/usr", "/usr")],
        "memory_limit": None,
        "cpu_millis": None,
        "read_only_rootfs": False,
    }
    kwargs.update(overrides)
    return build_spec(**kwargs)


async def test_version(client: ContainerdClient) -> None:
    assert re.match(r"\d+\.\d+", await client.version())


async def test_namespace_labels(client: ContainerdClient) -> None:
    assert (await client.list_namespaces())[NS] == {"openfaas": "1"}
    other = "fdpya-labels"
    await client.create_namespace(other, {"openfaas": "1", "team": "a"})
    try:
        with pytest.raises(ContainerdAlreadyExists):
            await client.create_namespace(other, {})
        await client.set_namespace_labels(other, {"openfaas": "1", "owner": "b"})
        assert await client.get_namespace(other) == {"openfaas": "1", "owner": "b"}  # "team" is gone
        await client.set_namespace_labels(other, {})
        assert await client.get_namespace(other) == {}
    finally:
        await client.delete_namespace(other)
    with pytest.raises(ContainerdNotFound, match=other):
        await client.get_namespace(other)


async def test_container_labels_and_large_extension_round_trip(client: ContainerdClient, tmp_path: Path) -> None:
    cid = "meta1"
    blob = os.urandom(100 * 1024)
    spec = sleeper_spec("/var/run/netns/none", cid, env={"fprocess": "cat", "DSN": "a=b"})
    labels = {FUNCTION_LABEL: "true", "com.openfaas.annotations.topic": "x=y"}
    created = await client.create_container(
        NS,
        cid,
        image="localhost/test:latest",
        spec=spec,
        labels=labels,
        snapshot_key=f"{cid}-snapshot",
        extensions={"faasd-py/deployment": blob},
    )
    try:
        assert created.labels == labels and created.extensions["faasd-py/deployment"] == blob
        got = await client.get_container(NS, cid)
        assert got.labels == labels
        assert got.extensions == {"faasd-py/deployment": blob}
        assert got.spec == spec
        assert (got.image, got.snapshot_key, got.snapshotter, got.runtime) == (
            "localhost/test:latest",
            f"{cid}-snapshot",
            "overlayfs",
            "io.containerd.runc.v2",
        )
        assert got.created_at is not None and got.updated_at is not None

        with pytest.raises(ContainerdAlreadyExists, match=cid):
            await client.create_container(NS, cid, image="x", spec=spec, labels={}, snapshot_key="k")

        await client.set_container_labels(
            NS, cid, {"com.openfaas.scale.zero": "true", "com.openfaas.annotations.topic": ""}
        )
        assert (await client.get_container(NS, cid)).labels == {
            FUNCTION_LABEL: "true",
            "com.openfaas.scale.zero": "true",
        }
        assert (await client.get_container(NS, cid)).extensions["faasd-py/deployment"] == blob  # untouched

        listed = await client.list_containers(NS, f'labels."{FUNCTION_LABEL}"')
        assert [c.id for c in listed] == [cid] and listed[0].extensions["faasd-py/deployment"] == blob
        assert await client.list_containers(NS, 'labels."no.such.label"') == []
        assert await client.get_task(NS, cid) is None  # a container without a task
        assert await client.delete_task(NS, cid) is None
    finally:
        await client.delete_container(NS, cid)
    with pytest.raises(ContainerdNotFound, match=f"get container {NS}/{cid}"):
        await client.get_container(NS, cid)
    with pytest.raises(ContainerdNotFound):
        await client.delete_container(NS, cid)


async def _collect(stream: AsyncIterator[Event], into: list[Event]) -> None:
    async for event in stream:
        into.append(event)


async def _wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _wait_ready(client: ContainerdClient, cid: str, out: Path, timeout: float = 10.0) -> None:
    """Until the script prints "ready"; fails at once, with its exit code (2, 3, 4 above), if it exits."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        text = await _read(out) if await asyncio.to_thread(out.exists) else ""
        if "ready" in text:
            return
        task = await client.get_task(NS, cid)
        if task is not None and task.state == TaskState.STOPPED:
            raise AssertionError(f"the container exited with status {task.exit_status}; output: {text!r}")
        await asyncio.sleep(0.02)
    raise AssertionError("the container did not get ready")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def _read(path: str | Path) -> str:
    return (await asyncio.to_thread(Path(path).read_text)).strip()


def _fill_rootfs(rootfs: Path) -> None:
    """A minimal image: merged-usr symlinks into the bind-mounted host /usr, and one user."""
    for link in ("bin", "lib", "lib64", "sbin"):
        (rootfs / link).symlink_to(f"usr/{link}")
    (rootfs / "etc").mkdir()
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:12000:12000::/home/app:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:12000:\n")


async def test_task_lifecycle(client: ContainerdClient, netns: str, testenv: TestEnv) -> None:
    cid = "c1"
    key = f"{cid}-snapshot"
    cgroup = f"{CGROUP_PARENT}/{cid}"
    out = Path(testenv.dir) / f"{cid}.out"
    events: list[Event] = []
    stream = client.subscribe(f'namespace=={NS},topic~="/tasks/"')
    await stream.started()
    collector = asyncio.create_task(_collect(stream, events))

    # gc.root: an unreferenced snapshot is collected by the GC any deletion triggers (as in the provider)
    mounts = await client.prepare_snapshot(NS, key, "", labels={"containerd.io/gc.root": "test"})
    assert key in await client.list_snapshots(NS)
    assert await client.snapshot_mounts(NS, key) == mounts
    assert [m.type for m in mounts] == ["bind"]  # an empty parent gives a plain bind mount of the snapshot dir
    await asyncio.to_thread(_fill_rootfs, Path(mounts[0].source))
    user = await asyncio.to_thread(resolve_user, "app", mounts)
    assert user == User(12000, 12000)

    script = (
        "echo uid=$(id -u) gid=$(id -g); echo ok > /tmp/.lock || exit 2; "
        "if (echo x > /probe) 2>/dev/null; then exit 3; fi; "  # the rootfs must be read-only
        "if unshare -U true 2>/dev/null; then exit 4; fi; "  # seccomp denies unshare
        "echo ready; exec sleep 1000"
    )
    spec = sleeper_spec(
        netns, cid, user=user, args=["/bin/sh", "-c", script], read_only_rootfs=True,
        memory_limit=64 * 1024 * 1024, cpu_millis=250,
    )  # fmt: skip
    await client.create_container(NS, cid, image="localhost/test:latest", spec=spec, labels={}, snapshot_key=key)
    try:
        pid = await client.create_task(
            NS, cid, rootfs=mounts, stdout=f"file://{out}", stderr=f"file://{out}",
            runc_options={"root": f"{testenv.dir}/runc"},
        )  # fmt: skip
        assert pid > 0
        assert (await client.get_task(NS, cid)).state == TaskState.CREATED  # type: ignore[union-attr]
        assert await client.start_task(NS, cid) == pid
        await _wait_ready(client, cid, out)
        assert "uid=12000 gid=12000" in await _read(out)

        task = await client.get_task(NS, cid)
        assert task is not None and task.state == TaskState.RUNNING and task.pid == pid
        assert [t.id for t in await client.list_tasks(NS)] == [cid]
        assert pid in await client.task_pids(NS, cid)
        status = await asyncio.to_thread(_status, pid)
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert status["CapEff"] == "0000000000000000"  # non-root: no effective capabilities
        assert int(status["CapBnd"], 16) != 0 and not int(status["CapBnd"], 16) & (1 << 13)  # no CAP_NET_RAW
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        assert await _read(f"/sys/fs/cgroup/memory/{cgroup}/memory.limit_in_bytes") == str(64 * 1024 * 1024)
        assert await _read(f"/sys/fs/cgroup/cpu/{cgroup}/cpu.cfs_quota_us") == "25000"

        await client.pause_task(NS, cid)
        assert (await client.get_task(NS, cid)).state == TaskState.PAUSED  # type: ignore[union-attr]
        assert await _read(f"/sys/fs/cgroup/freezer/{cgroup}/freezer.state") == "FROZEN"
        await client.resume_task(NS, cid)
        assert (await client.get_task(NS, cid)).state == TaskState.RUNNING  # type: ignore[union-attr]
        assert await _read(f"/sys/fs/cgroup/freezer/{cgroup}/freezer.state") == "THAWED"

        waiter = asyncio.create_task(client.wait_task(NS, cid))
        await asyncio.sleep(0.05)  # Wait must be registered before the exit
        await client.kill_task(NS, cid, signal.SIGKILL)
        assert await asyncio.wait_for(waiter, 10) == 128 + signal.SIGKILL
        assert (await client.get_task(NS, cid)).state == TaskState.STOPPED  # type: ignore[union-attr]
        assert await client.delete_task(NS, cid) == 128 + signal.SIGKILL
        assert await client.get_task(NS, cid) is None

        await _wait_for(lambda: any(e.topic == "/tasks/delete" for e in events), "the delete event", 5)
        topics = [e.topic for e in events]
        assert topics == ["/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed", "/tasks/exit",
                          "/tasks/delete"], topics  # fmt: skip
        exit_event = events[topics.index("/tasks/exit")]
        assert exit_event.namespace == NS and exit_event.timestamp is not None
        assert type(exit_event.payload).__name__ == "TaskExit"
        assert exit_event.payload.container_id == cid and exit_event.payload.exit_status == 137
    finally:
        collector.cancel()
        await stream.aclose()
        with contextlib.suppress(ContainerdError):
            await client.kill_task(NS, cid, signal.SIGKILL)
        with contextlib.suppress(ContainerdError):
            await client.delete_task(NS, cid)
        await client.delete_container(NS, cid)
        await client.remove_snapshot(NS, key)
    assert key not in await client.list_snapshots(NS)
    with pytest.raises(ContainerdNotFound, match=key):
        await client.remove_snapshot(NS, key)


async def test_task_errors_name_the_operation(client: ContainerdClient) -> None:
    with pytest.raises(ContainerdNotFound, match=f"start task {NS}/ghost"):
        await client.start_task(NS, "ghost")
    with pytest.raises(ContainerdError, match=f"pause task {NS}/ghost"):
        await client.pause_task(NS, "ghost")
    assert await client.get_task(NS, "ghost") is None
