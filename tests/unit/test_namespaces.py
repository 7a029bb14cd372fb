"""NamespaceService against an in-memory containerd namespace API."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from faasd_py.errors import Conflict, ContainerdError, ContainerdNotFound, InvalidRequest, NotFound
from faasd_py.provider import namespaces as mod
from faasd_py.provider.namespaces import NamespaceService
from faasd_py.runtime.purge import remove_runtime_dirs
from faasd_py.types import FunctionNamespace

OF = {"openfaas": "1"}


class FakeContainerd:
    """Just the namespace calls, plus a count of List round trips (the cache must save them)."""

    def __init__(self, namespaces: dict[str, dict[str, str]] | None = None) -> None:
        self.namespaces = dict(namespaces or {})
        self.lists = 0
        self.refuse_delete: str | None = None

    async def list_namespaces(self) -> dict[str, dict[str, str]]:
        self.lists += 1
        return {k: dict(v) for k, v in self.namespaces.items()}

    async def create_namespace(self, name: str, labels: dict[str, str]) -> None:
        self.namespaces[name] = dict(labels)

    async def set_namespace_labels(self, name: str, labels: dict[str, str]) -> None:
        self.namespaces[name] = dict(labels)

    async def delete_namespace(self, name: str) -> None:
        if name not in self.namespaces:
            raise ContainerdNotFound(f"namespace {name} not found", "NOT_FOUND")
        if self.refuse_delete:
            raise ContainerdError(self.refuse_delete, "FAILED_PRECONDITION")
        del self.namespaces[name]


@pytest.fixture
def purged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[str, ...]]]:
    calls: list[tuple[str, tuple[str, ...]]] = []

    async def fake_purge(client: Any, namespace: str, snapshotters: Iterable[str]) -> None:
        calls.append((namespace, tuple(snapshotters)))

    monkeypatch.setattr(mod, "purge_namespace", fake_purge)
    monkeypatch.setattr(mod, "remove_runtime_dirs", lambda ns: None)
    return calls


def service(ctd: FakeContainerd, occupants: dict[str, list[str]] | None = None) -> NamespaceService:
    table = occupants or {}
    return NamespaceService(ctd, occupants=lambda ns: table.get(ns, []),  # type: ignore[arg-type]
                            snapshotters=("overlayfs",))


async def test_list_is_default_first_then_labelled_namespaces_only() -> None:
    ctd = FakeContainerd({"zeta": OF, "alpha": {"openfaas": "true"}, "moby": {}, "k8s.io": {"x": "1"},
                          "openfaas-fn": OF, "half": {"openfaas": "0"}})
    ns = service(ctd)
    assert await ns.list() == ["openfaas-fn", "alpha", "zeta"]
    assert await ns.exists("alpha") and await ns.exists("openfaas-fn")
    assert not await ns.exists("moby") and not await ns.exists("half")


async def test_default_namespace_exists_before_containerd_has_it() -> None:
    ns = service(FakeContainerd())
    assert await ns.list() == ["openfaas-fn"]
    await ns.require("openfaas-fn")
    got = await ns.get("openfaas-fn")
    assert got.labels == OF


async def test_cache_saves_round_trips_but_a_miss_looks_again() -> None:
    ctd = FakeContainerd({"team-a": OF})
    ns = service(ctd)
    for _ in range(5):
        await ns.require("team-a")
    assert ctd.lists == 1
    # labelled behind our back (ctr namespace label X openfaas=1): found on the next miss
    ctd.namespaces["team-b"] = OF
    await ns.require("team-b")
    with pytest.raises(InvalidRequest, match="faas-cli namespace create"):
        await ns.require("nope")


async def test_create_get_update() -> None:
    ctd = FakeContainerd()
    ns = service(ctd)
    await ns.create(FunctionNamespace("team-a", labels={**OF, "team": "a"}, annotations={"owner": "me"}))
    assert ctd.namespaces["team-a"] == {"openfaas": "1", "team": "a", "com.openfaas.annotations.owner": "me"}
    got = await ns.get("team-a")
    assert got.to_json() == {"name": "team-a", "labels": {"openfaas": "1", "team": "a"},
                             "annotations": {"owner": "me"}}
    assert "team-a" in await ns.list()
    await ns.update(FunctionNamespace("team-a", labels={**OF, "tier": "gold"}))
    got = await ns.get("team-a")
    assert got.labels == {"openfaas": "1", "tier": "gold"} and got.annotations == {}


async def test_create_conflicts_and_label_rules() -> None:
    ctd = FakeContainerd({"team-a": OF, "moby": {}})
    ns = service(ctd)
    for existing in ("team-a", "moby", "openfaas-fn"):  # any containerd namespace, labelled or not
        with pytest.raises(Conflict, match="already exists"):
            await ns.create(FunctionNamespace(existing, labels=OF))
    with pytest.raises(InvalidRequest, match="openfaas=1"):
        await ns.create(FunctionNamespace("team-b", labels={"team": "b"}))
    with pytest.raises(InvalidRequest, match="openfaas=1"):
        await ns.update(FunctionNamespace("team-a", labels={}))
    assert ctd.namespaces["team-a"] == OF


async def test_labels_containerd_would_refuse_are_400_and_change_nothing() -> None:
    """containerd refuses key+value over 4096 bytes with INVALID_ARGUMENT, which reached the client as a 500."""
    ctd = FakeContainerd({"team-a": OF})
    ns = service(ctd)
    with pytest.raises(InvalidRequest, match="too long"):
        await ns.create(FunctionNamespace("team-b", labels={**OF, "x": "y" * 4096}))
    with pytest.raises(InvalidRequest, match="too long"):
        await ns.update(FunctionNamespace("team-a", labels=OF, annotations={"note": "z" * 4096}))
    assert ctd.namespaces == {"team-a": OF}
    await ns.update(FunctionNamespace("team-a", labels={**OF, "x": "y" * 4095}))  # exactly 4096 bytes: fine
    assert ctd.namespaces["team-a"]["x"] == "y" * 4095


async def test_get_update_delete_of_unknown_or_foreign_namespaces_are_404(purged: list[Any]) -> None:
    ns = service(FakeContainerd({"moby": {}}))
    for name in ("nope", "moby"):
        with pytest.raises(NotFound, match=f"namespace {name} not found"):
            await ns.get(name)
        with pytest.raises(NotFound):
            await ns.update(FunctionNamespace(name, labels=OF))
        with pytest.raises(NotFound):
            await ns.delete(name)
    assert purged == []


async def test_bad_names_are_400() -> None:
    ns = service(FakeContainerd())
    for bad in ("Team", "a/b", "..", "-x", "x" * 64):
        with pytest.raises(InvalidRequest):
            await ns.get(bad)
        with pytest.raises(InvalidRequest):
            await ns.delete(bad)


async def test_delete_refuses_while_functions_or_secrets_remain(purged: list[Any]) -> None:
    ctd = FakeContainerd({"team-a": OF})
    ns = service(ctd, {"team-a": ["function fn1", "secret s1"]})
    with pytest.raises(Conflict, match="still has function fn1, secret s1"):
        await ns.delete("team-a")
    assert "team-a" in ctd.namespaces and purged == []


async def test_delete_empties_then_deletes_and_forgets(purged: list[Any]) -> None:
    ctd = FakeContainerd({"team-a": OF})
    ns = service(ctd)
    assert await ns.exists("team-a")
    await ns.delete("team-a")
    assert purged == [("team-a", ("overlayfs",))]
    assert "team-a" not in ctd.namespaces
    assert await ns.list() == ["openfaas-fn"]
    assert not await ns.exists("team-a")


async def test_default_namespace_cannot_be_deleted(purged: list[Any]) -> None:
    ns = service(FakeContainerd({"openfaas-fn": OF}))
    with pytest.raises(InvalidRequest, match="default namespace"):
        await ns.delete("openfaas-fn")


async def test_something_landing_during_delete_is_409(purged: list[Any]) -> None:
    ctd = FakeContainerd({"team-a": OF})
    ctd.refuse_delete = 'namespace "team-a" must be empty, but it still has containers'
    ns = service(ctd)
    with pytest.raises(Conflict, match="must be empty"):
        await ns.delete("team-a")
    assert await ns.exists("team-a")


async def test_no_deploy_lands_in_a_namespace_being_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    ctd = FakeContainerd({"team-a": OF})
    ns = service(ctd)
    seen: list[bool] = []

    async def slow_purge(client: Any, namespace: str, snapshotters: Iterable[str]) -> None:
        seen.append(await ns.exists(namespace))
        with pytest.raises(Conflict, match="being deleted"):
            await ns.delete(namespace)

    monkeypatch.setattr(mod, "purge_namespace", slow_purge)
    monkeypatch.setattr(mod, "remove_runtime_dirs", lambda ns: None)
    await ns.delete("team-a")
    assert seen == [False]


def test_remove_runtime_dirs_removes_only_empty_directories(tmp_path: Path) -> None:
    cg, runc = tmp_path / "cgroup", tmp_path / "runc"
    (cg / "freezer" / "team-a").mkdir(parents=True)
    (cg / "memory" / "team-a" / "live-task").mkdir(parents=True)  # a live cgroup must stay
    (cg / "cpu").mkdir()
    (runc / "team-a").mkdir(parents=True)
    (cg / "freezer" / "other").mkdir()
    remove_runtime_dirs("team-a", cg, runc)
    assert not (cg / "freezer" / "team-a").exists() and not (runc / "team-a").exists()
    assert (cg / "memory" / "team-a" / "live-task").is_dir() and (cg / "freezer" / "other").is_dir()
