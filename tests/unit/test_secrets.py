"""SecretStore on a temp directory: modes, conflicts, names, per-instance copies and in-place updates."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from faasd_py.errors import Conflict, InvalidRequest, NotFound
from faasd_py.provider.secrets import MOUNT_DIR, SecretStore
from faasd_py.types import Secret

NS = "openfaas-fn"


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    return SecretStore(tmp_path / "store", tmp_path / "copies")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def read(p: Path | str) -> bytes:
    return Path(p).read_bytes()


def owner(p: Path | str) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_uid, st.st_gid




async def test_create_writes_root_only_files_and_lists_names_only(store: SecretStore, tmp_path: Path) -> None:
    await store.create(Secret("db-password", NS, b"s3cret"))
    await store.create(Secret("tls.key", "team-a", bytes(range(256))))
    f = tmp_path / "store" / NS / "db-password"
    assert read(f) == b"s3cret"
    assert read(tmp_path / "store" / "team-a" / "tls.key") == bytes(range(256))
    assert mode(tmp_path / "store") == 0o700 and mode(f.parent) == 0o700 and mode(f) == 0o600
    assert owner(f) == (os.geteuid(), os.getegid())
    listed = await store.list(NS)
    assert [s.to_json() for s in listed] == [{"name": "db-password", "namespace": NS}]
    assert store.names("team-a") == ["tls.key"] and store.names("empty") == []


async def test_existing_store_directories_are_tightened(store: SecretStore, tmp_path: Path) -> None:
    (tmp_path / "store" / NS).mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "store", 0o755)
    await store.create(Secret("a", NS, b"1"))
    assert mode(tmp_path / "store") == 0o700 and mode(tmp_path / "store" / NS) == 0o700


async def test_create_twice_is_409_and_keeps_the_value(store: SecretStore) -> None:
    await store.create(Secret("s1", NS, b"one"))
    with pytest.raises(Conflict, match="already exists"):
        await store.create(Secret("s1", NS, b"two"))
    store.check(NS, ["s1"])
    [mount] = store.materialize(NS, "fn-1", ["s1"], 12000, 12000)
    assert read(Path(mount.source) / "s1") == b"one"


async def test_update_and_delete_of_a_missing_secret_are_404(store: SecretStore) -> None:
    with pytest.raises(NotFound, match="unable to find secret: nope"):
        await store.update(Secret("nope", NS, b"x"))
    with pytest.raises(NotFound):
        await store.delete("nope", NS)
    await store.create(Secret("s1", "team-a", b"x"))
    with pytest.raises(NotFound):  # same name, other namespace
        await store.delete("s1", NS)


async def test_delete_removes_the_file_and_the_empty_namespace_directory(store: SecretStore, tmp_path: Path) -> None:
    await store.create(Secret("a", "team-a", b"1"))
    await store.create(Secret("b", "team-a", b"2"))
    await store.delete("a", "team-a")
    assert store.names("team-a") == ["b"]
    await store.delete("b", "team-a")
    assert not (tmp_path / "store" / "team-a").exists()
    assert store.names("team-a") == []


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "..", ".hidden", "UPPER", "a..b", "-a", "a_b", "",
                                  "x" * 254, "a\x00b"])
async def test_bad_names_are_400_and_touch_nothing(store: SecretStore, tmp_path: Path, name: str) -> None:
    for call in (store.create(Secret(name, NS, b"x")), store.update(Secret(name, NS, b"x")), store.delete(name, NS)):
        with pytest.raises(InvalidRequest):
            await call
    with pytest.raises(InvalidRequest):
        store.check(NS, [name])
    assert not (tmp_path / "store").exists()


async def test_bad_namespace_is_400(store: SecretStore) -> None:
    with pytest.raises(InvalidRequest):
        await store.create(Secret("a", "../x", b"1"))
    with pytest.raises(InvalidRequest):
        store.names("Team")


async def test_check_names_every_missing_secret(store: SecretStore) -> None:
    await store.create(Secret("have", NS, b"1"))
    store.check(NS, ["have"])
    with pytest.raises(InvalidRequest, match="miss1, miss2 in namespace openfaas-fn"):
        store.check(NS, ["have", "miss1", "miss2"])
    with pytest.raises(InvalidRequest):  # secrets are per namespace
        store.check("team-a", ["have"])


async def test_materialize_gives_each_instance_a_directory_owned_by_its_uid(
    store: SecretStore, tmp_path: Path
) -> None:
    await store.create(Secret("s1", NS, b"v1"))
    await store.create(Secret("s2", NS, b"\x00\xff"))
    await store.create(Secret("other", NS, b"not listed"))
    [mount] = store.materialize(NS, "fn-abc", ["s1", "s2"], 12000, 12001)
    d = Path(mount.source)
    assert mount.destination == MOUNT_DIR and d == tmp_path / "copies" / NS / "fn-abc"
    assert sorted(os.listdir(d)) == ["s1", "s2"]  # only what the function lists
    assert mode(d) == 0o500 and owner(d) == (12000, 12001)
    for name, value in (("s1", b"v1"), ("s2", b"\x00\xff")):
        assert read(d / name) == value
        assert mode(d / name) == 0o400 and owner(d / name) == (12000, 12001)
    assert mode(tmp_path / "copies") == 0o700  # host users cannot walk in
    # the store itself stays root-only
    assert mode(tmp_path / "store" / NS / "s1") == 0o600 and owner(tmp_path / "store" / NS / "s1") == (0, 0)
    assert store.materialize(NS, "fn-none", [], 12000, 12000) == []


async def test_materialize_of_a_missing_secret_creates_nothing(store: SecretStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        store.materialize(NS, "fn-abc", ["nope"], 12000, 12000)
    assert not (tmp_path / "copies").exists()


async def test_update_replaces_every_copy_atomically(store: SecretStore, tmp_path: Path) -> None:
    """A rename inside the mounted directory: the next open sees the whole new value, an already
    open file keeps the whole old one; owner and mode stay those of the instance."""
    await store.create(Secret("s1", NS, b"old value, longer"))
    await store.create(Secret("s1", "team-a", b"other namespace"))
    a = Path(store.materialize(NS, "fn-a", ["s1"], 12000, 12000)[0].source) / "s1"
    b = Path(store.materialize(NS, "fn-b", ["s1"], 13000, 13000)[0].source) / "s1"
    other = Path(store.materialize("team-a", "fn-c", ["s1"], 12000, 12000)[0].source) / "s1"
    reading = os.open(a, os.O_RDONLY)
    try:
        await store.update(Secret("s1", NS, b"new"))
        assert os.read(reading, 100) == b"old value, longer"
    finally:
        os.close(reading)
    assert read(a) == read(b) == b"new"
    assert (owner(a), owner(b)) == ((12000, 12000), (13000, 13000))
    assert mode(a) == mode(b) == 0o400
    assert read(other) == b"other namespace"
    assert os.listdir(tmp_path / "copies" / ".staging") == []  # nothing half-written is left


async def test_delete_keeps_copies_of_running_instances(store: SecretStore) -> None:
    """Documented: a deleted secret stays readable where it is already mounted; new instances get 400."""
    await store.create(Secret("s1", NS, b"v"))
    copy = Path(store.materialize(NS, "fn-a", ["s1"], 12000, 12000)[0].source) / "s1"
    await store.delete("s1", NS)
    assert read(copy) == b"v"
    with pytest.raises(InvalidRequest):
        store.materialize(NS, "fn-b", ["s1"], 12000, 12000)


async def test_release_and_gc_remove_copies(store: SecretStore, tmp_path: Path) -> None:
    await store.create(Secret("s1", NS, b"v"))
    for inst in ("fn-a", "fn-b", "fn-c"):
        store.materialize(NS, inst, ["s1"], 12000, 12000)
    store.release(NS, "fn-a")
    assert not (tmp_path / "copies" / NS / "fn-a").exists()
    store.gc({(NS, "fn-b")})
    assert sorted(p.name for p in (tmp_path / "copies" / NS).iterdir()) == ["fn-b"]
    assert (tmp_path / "copies" / ".staging").is_dir()  # not mistaken for a namespace
