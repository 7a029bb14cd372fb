"""The direct freezer (runtime/freezer.py) on fake cgroup trees, v1 and v2, and how the provider
uses it: wake through the freezer, tell containerd afterwards, and cope when containerd refuses."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from faasd_py.config import Settings
from faasd_py.errors import RuntimeFailure
from faasd_py.provider.contract import Endpoint
from faasd_py.provider.functions import Function, FunctionManager
from faasd_py.provider.instances import FunctionRecord, Instance
from faasd_py.runtime.client import ContainerdClient
from faasd_py.runtime.freezer import Freezer
from faasd_py.types import FunctionDeployment

CG = "/openfaas-fn/fn-0123abcd"


def v1_tree(root: Path, state: str = "FROZEN") -> Path:
    d = root / "freezer" / "openfaas-fn" / "fn-0123abcd"
    d.mkdir(parents=True)
    (d / "freezer.state").write_text(state + "\n")
    return d / "freezer.state"


def v2_tree(root: Path, frozen: bool = True) -> Path:
    d = root / "openfaas-fn" / "fn-0123abcd"
    d.mkdir(parents=True)
    (d / "cgroup.freeze").write_text("1\n" if frozen else "0\n")
    (d / "cgroup.events").write_text(f"populated 1\nfrozen {1 if frozen else 0}\n")
    return d


def test_v1_thaw_and_freeze_write_the_state_file(tmp_path: Path) -> None:
    state = v1_tree(tmp_path)
    f = Freezer(tmp_path)
    assert f.state(CG) == "FROZEN"
    assert f.thaw(CG) is True
    assert state.read_text() == "THAWED"
    assert asyncio.run(f.freeze(CG)) is True
    assert state.read_text() == "FROZEN"


def test_v2_uses_cgroup_freeze_and_reads_the_outcome_from_events(tmp_path: Path) -> None:
    d = v2_tree(tmp_path, frozen=True)
    f = Freezer(tmp_path)
    assert f.state(CG) == "FROZEN"
    # a plain file does not react like the kernel: the outcome stays "frozen 1", so thaw says no
    assert f.thaw(CG) is False
    assert (d / "cgroup.freeze").read_text() == "0"
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert f.thaw(CG) is True and f.state(CG) == "THAWED"


def test_without_a_freezer_everything_says_no(tmp_path: Path) -> None:
    f = Freezer(tmp_path)
    assert f.state(CG) is None
    assert f.thaw(CG) is False
    assert asyncio.run(f.freeze(CG)) is False


def test_a_freeze_that_does_not_complete_thaws_again(tmp_path: Path) -> None:
    state = v1_tree(tmp_path, "THAWED")

    class Stuck(Freezer):
        def state(self, cgroup: str) -> str | None:
            return "FREEZING"

    assert asyncio.run(Stuck(tmp_path).freeze(CG, timeout=0.05)) is False
    assert state.read_text() == "THAWED"  # never left half frozen


# --- the provider's wake and resync, with containerd and the freezer faked ----------------------


class FakeFreezer(Freezer):
    def __init__(self, thaws: bool = True, freezes: bool = True) -> None:
        self.thaws, self.freezes = thaws, freezes
        self.calls: list[str] = []

    def thaw(self, cgroup: str) -> bool:
        self.calls.append(f"thaw {cgroup}")
        return self.thaws

    async def freeze(self, cgroup: str, timeout: float = 1.0) -> bool:
        self.calls.append(f"freeze {cgroup}")
        return self.freezes


class FakeClient:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: list[str] = []

    async def resume_task(self, ns: str, cid: str) -> None:
        self.calls.append(f"resume {ns}/{cid}")
        if self.refuse:
            raise RuntimeFailure("OCI runtime resume failed: container not paused")

    async def pause_task(self, ns: str, cid: str) -> None:
        self.calls.append(f"pause {ns}/{cid}")


def manager(client: FakeClient, freezer: FakeFreezer) -> tuple[FunctionManager, Function, Instance]:
    unused: Any = None  # images, launcher, network, namespaces, secrets: not reached here
    fm = FunctionManager(Settings(), cast(ContainerdClient, client), unused, unused, unused, unused, unused,
                         freezer=freezer)
    dep = FunctionDeployment.from_json({"service": "fn", "image": "img", "namespace": "openfaas-fn"})
    inst = Instance("openfaas-fn", "fn", "fn-0123abcd", 1, paused=True, ready=True)
    fn = Function(record=FunctionRecord(dep, 1, created_at=datetime.now(UTC)), instances=[inst])
    return fm, fn, inst


async def test_a_wake_thaws_directly_and_tells_containerd_once_the_calls_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("faasd_py.provider.functions.RESYNC_QUIET", 0.1)
    client, freezer = FakeClient(), FakeFreezer()
    fm, fn, inst = manager(client, freezer)
    await fm._wake_one(inst)
    assert (inst.paused, inst.resync, client.calls) == (False, True, [])  # served before containerd knows
    inst.inflight = 1  # a call is under way: containerd waits
    resync = asyncio.create_task(fm._resync(fn))
    await asyncio.sleep(0.3)
    assert client.calls == [] and not resync.done()
    fm._instances[(inst.namespace, inst.id)] = inst
    fm._table[("openfaas-fn", "fn")] = fn
    fm.release("fn", "openfaas-fn", Endpoint("10.0.0.2", 8080, inst.id))  # the call is done
    done_at = time.monotonic()
    await asyncio.wait_for(resync, 2)
    assert time.monotonic() - done_at >= 0.1  # and then the function was quiet for RESYNC_QUIET
    assert freezer.calls == [f"thaw {CG}", f"freeze {CG}"]  # frozen again, so that Resume is accepted
    assert client.calls == ["resume openfaas-fn/fn-0123abcd"] and inst.resync is False
    await fm._pause_one(inst)  # the next pause is containerd's own again
    assert client.calls[-1] == "pause openfaas-fn/fn-0123abcd"


async def test_when_containerd_refuses_the_replica_keeps_serving_and_the_next_pause_uses_the_freezer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("faasd_py.provider.functions.RESYNC_QUIET", 0.0)
    client, freezer = FakeClient(refuse=True), FakeFreezer()
    fm, fn, inst = manager(client, freezer)
    await fm._wake_one(inst)
    await fm._resync(fn)
    assert freezer.calls == [f"thaw {CG}", f"freeze {CG}", f"thaw {CG}"]  # thawed again: it serves on
    still_paused_for_containerd = inst.resync
    await fm._pause_one(inst)  # ...so the next pause is the freezer alone, which makes that true
    assert still_paused_for_containerd and freezer.calls[-1] == f"freeze {CG}" and not inst.resync
    assert client.calls == ["resume openfaas-fn/fn-0123abcd"]  # no Pause containerd would refuse


async def test_without_a_usable_freezer_the_wake_is_containerds_resume() -> None:
    client, freezer = FakeClient(), FakeFreezer(thaws=False)
    fm, _, inst = manager(client, freezer)
    await fm._wake_one(inst)
    assert (inst.paused, inst.resync) == (False, False)
    assert client.calls == ["resume openfaas-fn/fn-0123abcd"]


async def test_a_replica_that_cannot_be_frozen_for_the_pause_is_an_error() -> None:
    client, freezer = FakeClient(), FakeFreezer(freezes=False)
    fm, _, inst = manager(client, freezer)
    inst.paused, inst.resync = False, True
    with pytest.raises(RuntimeFailure):
        await fm._pause_one(inst)
