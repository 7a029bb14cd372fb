"""End to end: functions outlive the daemon, a host reboot, a crash and containerd's GC.

* daemon stop/start (SIGTERM, upgrade): the running task is adopted, not restarted;
* reboot (every task gone, /run/netns wiped): restore() starts the function again before it
  returns, on a fresh IP, and the old IP is released;
* a function removed behind the daemon's back while it was down: nothing of it stays after the
  next start (IP, netns, snapshot, log FIFOs);
* a crash of the task: it is restarted after a backoff and serves again, one IP per instance;
* a containerd GC while an instance is being created does not take its rootfs away.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.model import TaskState
from faasd_py.types import DEFAULT_NAMESPACE
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import DaemonHandle, Inspector, delete_netns, function_body


def _ip_of(inspect: Inspector, instance: str) -> str:
    owner = inspect.netns_name(DEFAULT_NAMESPACE, instance)
    [ip] = [ip for ip, o in inspect.ipam().items() if o == owner]
    return ip


async def _one_ip_per_instance(daemon: DaemonHandle, inspect: Inspector) -> None:
    """The IPAM directory holds exactly the IPs of the instances that exist, one each."""
    owners = sorted(inspect.ipam().values())
    expected = sorted([inspect.netns_name(DEFAULT_NAMESPACE, c.id)
                       for fn in await daemon.list() for c in await inspect.containers(fn["name"])])
    assert owners == expected
    assert sorted(inspect.netns()) == expected
    assert len(inspect.veths()) == len(expected)


async def _kill_and_delete_task(client: ContainerdClient, instance: str) -> None:
    """What a reboot or an operator's ``ctr task kill/rm`` does to a task, behind the daemon's back."""
    await client.kill_task(DEFAULT_NAMESPACE, instance, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (t := await client.get_task(DEFAULT_NAMESPACE, instance)) and t.state is not TaskState.STOPPED:
        assert time.monotonic() < deadline, "the task did not stop"
        await asyncio.sleep(0.02)
    await client.delete_task(DEFAULT_NAMESPACE, instance)


async def test_a_restarted_daemon_adopts_the_running_function(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("keeper", images["echo"], annotations={"keep": "me"}))
    c = await inspect.instance("keeper")
    task = await inspect.task("keeper")
    ip = _ip_of(inspect, c.id)

    await daemon.stop()  # what SIGTERM does: stop serving, leave the functions running
    still = await inspect.client.get_task(DEFAULT_NAMESPACE, c.id)
    assert still is not None and still.state is TaskState.RUNNING and still.pid == task.pid

    await daemon.start()
    [listed] = await daemon.list()
    assert (listed["name"], listed["replicas"], listed["availableReplicas"]) == ("keeper", 1, 1)
    assert listed["annotations"] == {"keep": "me"}
    status, out = await daemon.invoke("keeper", b"no redeploy")
    assert (status, out) == (200, b"no redeploy")
    assert (await inspect.instance("keeper")).id == c.id
    assert (await inspect.task("keeper")).pid == task.pid  # adopted, not restarted
    assert _ip_of(inspect, c.id) == ip
    await _one_ip_per_instance(daemon, inspect)


async def test_after_a_reboot_restore_brings_the_function_back_before_it_returns(
    daemon: DaemonHandle, inspect: Inspector
) -> None:
    c = await inspect.instance("keeper")
    old_task = await inspect.task("keeper")
    old_ip = _ip_of(inspect, c.id)
    netns = inspect.netns_name(DEFAULT_NAMESPACE, c.id)

    await daemon.stop()
    # the reboot: every task is gone (containers and snapshots stay), and /run/netns is empty
    client = inspect.client
    await _kill_and_delete_task(client, c.id)
    delete_netns(netns)
    assert await client.get_task(DEFAULT_NAMESPACE, c.id) is None

    await daemon.start()  # returns once restore() did
    status, out = await daemon.invoke("keeper", b"first call after the reboot")
    assert (status, out) == (200, b"first call after the reboot")
    [listed] = await daemon.list()
    assert listed["availableReplicas"] == 1
    assert (await inspect.instance("keeper")).id == c.id  # the same container, a new task
    new_task = await inspect.task("keeper")
    assert new_task.pid != old_task.pid and new_task.state is TaskState.RUNNING
    new_ip = _ip_of(inspect, c.id)
    assert new_ip != old_ip
    assert old_ip not in inspect.ipam()
    await _one_ip_per_instance(daemon, inspect)


async def test_a_function_removed_while_the_daemon_was_down_leaves_nothing(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    """Someone deletes a function's task and container behind the daemon's back (ctr, a purge by
    hand): the next start releases its IP, netns and log FIFOs, and keeps the others'."""
    await daemon.deploy_ok(function_body("gone-offline", images["echo"]))
    c = await inspect.instance("gone-offline")
    keeper = await inspect.instance("keeper")
    fifo_dir = daemon.settings.run_dir / "fifo" / DEFAULT_NAMESPACE
    assert {f"{c.id}.stdout", f"{c.id}.stderr"} <= {p.name for p in fifo_dir.iterdir()}

    await daemon.stop()
    client = inspect.client
    await _kill_and_delete_task(client, c.id)
    await client.delete_container(DEFAULT_NAMESPACE, c.id)

    await daemon.start()
    assert [f["name"] for f in await daemon.list()] == ["keeper"]
    assert await inspect.settled("gone-offline") == []  # snapshot, netns, IPAM entry and FIFOs
    assert {p.name for p in fifo_dir.iterdir()} == {f"{keeper.id}.stdout", f"{keeper.id}.stderr"}
    status, out = await daemon.invoke("keeper", b"still logged")
    assert (status, out) == (200, b"still logged")
    await _one_ip_per_instance(daemon, inspect)


async def test_a_killed_task_is_restarted_with_backoff_and_serves_again(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector
) -> None:
    await daemon.deploy_ok(function_body("phoenix", images["echo"]))
    c = await inspect.instance("phoenix")
    for round_ in range(2):
        task = await inspect.task("phoenix")
        t0 = time.monotonic()
        os.kill(task.pid, signal.SIGKILL)
        # the exit is noticed: no replica is available until the restart is ready
        while (await daemon.describe("phoenix"))[1]["availableReplicas"] != 0:
            assert time.monotonic() - t0 < 5, "the exit was not noticed"
            await asyncio.sleep(0.01)
        # a call now waits for the restarted instance instead of failing
        status, out = await daemon.invoke("phoenix", b"again")
        back = time.monotonic() - t0
        assert (status, out) == (200, b"again"), round_
        assert back >= 0.5 * (round_ + 1), f"restarted after {back:.2f}s: no backoff"
        new = await inspect.task("phoenix")
        assert new.pid != task.pid and new.state is TaskState.RUNNING
        assert (await inspect.instance("phoenix")).id == c.id
        await _one_ip_per_instance(daemon, inspect)
    [listed] = [f for f in await daemon.list() if f["name"] == "phoenix"]
    assert (listed["replicas"], listed["availableReplicas"]) == (1, 1)


async def _collect_garbage(inspect: Inspector) -> None:
    """Run containerd's GC now: deleting a lease with --sync waits for a collection."""
    ctr = ["ctr", "-a", inspect.env.containerd_socket, "-n", DEFAULT_NAMESPACE, "leases"]
    for args in (["create", "--id", "e2e-gc-trigger"], ["delete", "--sync", "e2e-gc-trigger"]):
        proc = await asyncio.create_subprocess_exec(*ctr, *args, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err


async def test_a_gc_between_snapshot_and_container_does_not_lose_the_rootfs(
    daemon: DaemonHandle, images: PushedImages, inspect: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the instance snapshot was prepared outside any lease, so a GC before the
    container referenced it removed it and the task failed to mount its rootfs."""
    assert daemon.daemon is not None
    client = daemon.daemon.client
    prepare = client.prepare_snapshot

    async def prepare_then_collect(*args: Any, **kwargs: Any) -> Any:
        mounts = await prepare(*args, **kwargs)
        await _collect_garbage(inspect)
        return mounts

    monkeypatch.setattr(client, "prepare_snapshot", prepare_then_collect)
    await daemon.deploy_ok(function_body("collected", images["echo"]))
    status, out = await daemon.invoke("collected", b"rootfs intact")
    assert (status, out) == (200, b"rootfs intact")
    monkeypatch.undo()
    status, body = await daemon.remove("collected")
    assert status == 202, body
    await daemon.settle()
    assert await inspect.settled("collected") == []
