"""faasd_py.build: the offline base, reproducible layers, the image config and the OCI layout.

The host base is cached in the build cache (``FAASD_PY_BUILD_CACHE`` or ~/.cache/faasd-py/build),
so only the first session on a machine pays for it; one test builds it cold on purpose.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from faasd_py.build import (
    Base,
    FunctionSpec,
    build_function_image,
    default_cache_dir,
    export_tar,
    host_python_base,
    image_config,
    read_index,
    unpack,
    verify_layout,
)
from faasd_py.build.function import WATCHDOG_ROOT
from faasd_py.build.hostbase import _stat_key
from faasd_py.build.layer import dir_entry, file_entry, put_blob, with_parents, write_layer
from faasd_py.build.layout import (
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    REF_NAME,
    add_manifest,
    blob_path,
    canonical_json,
    find_manifest,
    init_layout,
    read_blob_json,
)
from faasd_py.build.push import _single_image_layout
from faasd_py.errors import ImageError, InvalidRequest

PYTHON = "/usr/bin/python3.11"
pytestmark = pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"{PYTHON} not installed")

ECHO = FunctionSpec(name="echo", fprocess=f"{PYTHON} -S /home/app/echo.py",
                    files={"echo.py": "import sys\nsys.stdout.write(sys.stdin.read())\n"},
                    env={"LANG": "C", "EXTRA": "1"}, labels={"team": "a"})


@pytest.fixture(scope="module")
def base() -> Base:
    return host_python_base(default_cache_dir())


def members(layer_path: Path) -> list[tarfile.TarInfo]:
    with gzip.open(layer_path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        return list(tar)


def read_member(layer_path: Path, name: str) -> bytes:
    with gzip.open(layer_path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for m in tar:
            if m.name == name:
                f = tar.extractfile(m)
                assert f is not None
                return f.read()
    raise KeyError(name)


def manifest_of(layout: Path, ref: str | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = read_blob_json(layout, find_manifest(layout, ref)["digest"])
    return manifest


# --- the host base -------------------------------------------------------------------------


def test_host_base_layer_holds_interpreter_libraries_stdlib_and_app_user(base: Base) -> None:
    (layer,) = base.layers
    by_name = {m.name: m for m in members(layer.path)}
    # the interpreter, the ELF loader reached through /lib64 -> usr/lib64 -> /lib/... like on the host
    assert by_name["usr/bin/python3.11"].isfile() and by_name["usr/bin/python3.11"].mode & 0o111
    assert by_name["usr/bin/python3"].linkname == "python3.11"
    assert by_name["lib64"].issym() and by_name["lib"].issym()
    assert any(n.startswith("usr/lib/x86_64-linux-gnu/libc.so") for n in by_name) or any(
        n.endswith("/libc.so.6") for n in by_name)
    assert any("ld-linux" in n and by_name[n].isfile() for n in by_name)
    assert any(n.endswith("libssl.so.3") for n in by_name)  # from ldd of lib-dynload/_ssl
    # the stdlib with Debian's compiled files, minus what nobody runs
    std = "usr/lib/python3.11/"
    for needed in ("os.py", "__pycache__/subprocess.cpython-311.pyc", "encodings/__init__.py",
                   "lib-dynload/_json.cpython-311-x86_64-linux-gnu.so", "http/server.py"):
        assert std + needed in by_name, needed
    for skipped in ("test/", "lib2to3/", "ensurepip/", "pydoc_data/", "sitecustomize.py", "config-3.11-"):
        assert not any(n.startswith(std + skipped) for n in by_name), skipped
    assert not any("site-packages" in n or "dist-packages" in n for n in by_name)
    assert not any("_testcapi" in n for n in by_name)
    # a non-root user and the directories a function needs
    passwd = read_member(layer.path, "etc/passwd").decode()
    assert "app:x:12000:12000:app:/home/app:" in passwd
    assert "app:x:12000:" in read_member(layer.path, "etc/group").decode()
    assert by_name["tmp"].mode == 0o1777
    assert (by_name["home/app"].uid, by_name["home/app"].gid) == (12000, 12000)
    assert {(m.uid, m.gid) for n, m in by_name.items() if n != "home/app"} == {(0, 0)}
    assert all(m.uname == "" and m.gname == "" for m in by_name.values())
    assert "etc/resolv.conf" in by_name and "etc/hosts" in by_name
    names = [m.name for m in members(layer.path)]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert (base.python, base.python_cache_tag, base.user, base.working_dir) == (
        PYTHON, "cpython-311", "12000:12000", "/home/app")


def test_host_base_is_cached_and_reproducible(base: Base, tmp_path: Path) -> None:
    t0 = time.monotonic()
    again = host_python_base(default_cache_dir())
    cached = time.monotonic() - t0
    assert again.layers[0].digest == base.layers[0].digest
    assert cached < 1.0
    t0 = time.monotonic()
    cold = host_python_base(tmp_path / "cold-cache")
    cold_seconds = time.monotonic() - t0
    print(f"\nhost base: cold {cold_seconds:.2f} s, cached {cached * 1000:.0f} ms, "
          f"{cold.layers[0].size / 1e6:.1f} MB gzip")
    assert cold.layers[0].digest == base.layers[0].digest  # same host files -> same bytes
    assert cold.layers[0].diff_id == base.layers[0].diff_id


def test_cache_key_follows_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "lib.so"
    f.write_bytes(b"one")
    k1 = _stat_key([f], [], "x")
    assert _stat_key([f], [], "x") == k1
    time.sleep(0.01)
    f.write_bytes(b"two!")
    assert _stat_key([f], [], "x") != k1
    assert _stat_key([f], [], "y") != _stat_key([f], [], "x")


def test_stdlib_pycs_stay_valid_in_the_image(base: Base, tmp_path: Path) -> None:
    """Debian's timestamp .pyc files are used only if the source mtime and size match: the base
    layer must keep them, or every start (as a user who cannot write) recompiles the stdlib."""
    img = build_function_image(ECHO, tmp_path / "layout", "echo", base=base, cache_dir=default_cache_dir())
    root = tmp_path / "rootfs"
    unpack(img.layout, root, "echo")
    std = root / "usr/lib/python3.11"
    for mod in ("os", "subprocess", "socket", "threading", "signal", "selectors", "enum", "re/__init__"):
        src = std / f"{mod}.py"
        pyc = src.parent / "__pycache__" / f"{src.stem}.cpython-311.pyc"
        flags, mtime, size = struct.unpack("<4xIII", pyc.read_bytes()[:16])
        st = src.stat()
        assert flags == 0 and (mtime, size) == (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF), mod
    # the watchdog's own .pyc files are unchecked-hash ones (valid whatever the mtime)
    wd = root / WATCHDOG_ROOT.lstrip("/") / "faasd_py/watchdog"
    for name in ("server", "http11", "forking", "proxy", "config"):
        pyc = wd / "__pycache__" / f"{name}.cpython-311.pyc"
        assert struct.unpack("<4xI", pyc.read_bytes()[:8])[0] == 0b01, name


def test_watchdog_in_the_image_loads_from_its_pycs(base: Base, tmp_path: Path) -> None:
    img = build_function_image(ECHO, tmp_path / "layout", "echo", base=base, cache_dir=default_cache_dir())
    root = tmp_path / "rootfs"
    unpack(img.layout, root, "echo")
    out = subprocess.run([PYTHON, "-S", "-v", "-c", "import faasd_py.watchdog.server, faasd_py.watchdog.proxy"],
                         env={"PYTHONPATH": str(root / WATCHDOG_ROOT.lstrip("/")), "PYTHONDONTWRITEBYTECODE": "1"},
                         capture_output=True, text=True, check=True, cwd=tmp_path).stderr  # cwd: not the repo
    for name in ("server", "proxy", "http11", "app"):
        assert f"code object from '{root}{WATCHDOG_ROOT}/faasd_py/watchdog/__pycache__/{name}.cpython-311.pyc'" in out


# --- function images -----------------------------------------------------------------------


def test_function_image_config(base: Base, tmp_path: Path) -> None:
    img = build_function_image(ECHO, tmp_path / "layout", "localhost/fn/echo:1", base=base,
                               cache_dir=default_cache_dir())
    cfg = image_config(img.layout, "localhost/fn/echo:1")
    c = cfg["config"]
    assert c["Entrypoint"] == [PYTHON, "-S", "-m", "faasd_py.watchdog"] and "Cmd" not in c
    assert c["User"] == "12000:12000" and c["WorkingDir"] == "/home/app"
    assert c["ExposedPorts"] == {"8080/tcp": {}}
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["fprocess"] == ECHO.fprocess and env["mode"] == "classic"
    assert env["PYTHONPATH"] == WATCHDOG_ROOT and env["PATH"].startswith("/usr/local/sbin")
    assert env["LANG"] == "C" and env["EXTRA"] == "1"  # spec env overrides the base's, no duplicates
    assert len(c["Env"]) == len(env)
    assert c["Labels"]["team"] == "a" and c["Labels"]["com.github.faasd-py.function"] == "echo"
    assert (cfg["os"], cfg["architecture"], cfg["created"]) == ("linux", "amd64", "1970-01-01T00:00:00Z")
    manifest = manifest_of(img.layout, "localhost/fn/echo:1")
    assert manifest["mediaType"] == MEDIA_MANIFEST and manifest["config"]["mediaType"] == MEDIA_CONFIG
    assert len(manifest["layers"]) == 3 == len(cfg["rootfs"]["diff_ids"]) == len(cfg["history"])
    for desc, diff_id in zip(manifest["layers"], cfg["rootfs"]["diff_ids"], strict=True):
        with gzip.open(blob_path(img.layout, desc["digest"]), "rb") as f:
            assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == diff_id
    assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert img.size == sum(d["size"] for d in manifest["layers"]) + manifest["config"]["size"] + find_manifest(
        img.layout, "localhost/fn/echo:1")["size"]
    http = build_function_image(FunctionSpec(name="h", mode="http", fprocess="srv"), tmp_path / "l2", "h",
                                base=base, cache_dir=default_cache_dir())
    assert "upstream_url=http://127.0.0.1:5000" in http.config["config"]["Env"]


def test_function_layer_is_normalised(base: Base, tmp_path: Path) -> None:
    handler = tmp_path / "handler"
    (handler / "lib" / "__pycache__").mkdir(parents=True)
    (handler / "run.sh").write_text("echo hi\n")
    (handler / "run.sh").chmod(0o755)
    (handler / "lib" / "util.py").write_text("X = 1\n")
    (handler / "lib" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"junk")
    os.utime(handler / "lib" / "util.py", (1_700_000_000, 1_700_000_000))
    spec = FunctionSpec(name="h", fprocess="./run.sh", handler_dir=handler, files={"extra.txt": "x"})
    img = build_function_image(spec, tmp_path / "layout", "h", base=base, cache_dir=default_cache_dir())
    layer = img.layers[-1]
    raw = layer.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, header mtime 0
    ms = members(layer.path)
    by_name = {m.name: m for m in ms}
    assert set(by_name) == {"home", "home/app", "home/app/run.sh", "home/app/lib", "home/app/lib/util.py",
                            "home/app/extra.txt"}
    assert by_name["home/app/run.sh"].mode == 0o755 and by_name["home/app/lib/util.py"].mode == 0o644
    assert all(m.mtime == 0 and not m.pax_headers for m in ms)
    assert (by_name["home/app"].uid, by_name["home/app/run.sh"].uid) == (12000, 0)
    assert [m.name for m in ms] == sorted(by_name, key=lambda n: n.split("/"))


def test_builds_are_reproducible(base: Base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = build_function_image(ECHO, tmp_path / "a", "echo", base=base, cache_dir=default_cache_dir())
    b = build_function_image(ECHO, tmp_path / "b", "echo", base=base, cache_dir=default_cache_dir())
    assert a.digest == b.digest and a.config_digest == b.config_digest
    assert (a.layout / "index.json").read_bytes() == (b.layout / "index.json").read_bytes()
    changed = FunctionSpec(name="echo", fprocess=ECHO.fprocess, files={"echo.py": "print(1)\n"})
    assert build_function_image(changed, tmp_path / "c", "echo", base=base).digest != a.digest
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    d = build_function_image(ECHO, tmp_path / "d", "echo", base=base, cache_dir=default_cache_dir())
    assert d.digest != a.digest and d.layers[0].digest == a.layers[0].digest  # base untouched
    assert d.config["created"] == "2023-11-14T22:13:20Z"
    assert {m.mtime for m in members(d.layers[-1].path)} == {1_700_000_000}
    export_tar(a.layout, tmp_path / "a.tar")
    export_tar(b.layout, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_layout_holds_several_images_and_replaces_by_ref(base: Base, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    one = build_function_image(ECHO, layout, "localhost/t/one:latest", base=base)
    two = build_function_image(FunctionSpec(name="two", fprocess="cat"), layout, "localhost/t/two:latest", base=base)
    again = build_function_image(FunctionSpec(name="one", fprocess="rev"), layout, "localhost/t/one:latest",
                                 base=base)
    refs = {m["annotations"][REF_NAME]: m["digest"] for m in read_index(layout)}
    assert refs == {"localhost/t/one:latest": again.digest, "localhost/t/two:latest": two.digest}
    assert again.digest != one.digest
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    verify_layout(layout)
    single = tmp_path / "single"
    _single_image_layout(layout, find_manifest(layout, "localhost/t/two:latest"), single)
    verify_layout(single)
    assert [m["digest"] for m in read_index(single)] == [two.digest]
    with pytest.raises(Exception, match="name one"):
        find_manifest(layout)
    blob_path(layout, two.layers[-1].digest).write_bytes(b"corrupt")
    with pytest.raises(ImageError):
        verify_layout(layout)


def test_exported_tar_is_an_oci_layout(base: Base, tmp_path: Path) -> None:
    img = build_function_image(ECHO, tmp_path / "layout", "localhost/t/echo:latest", base=base)
    tar_path = export_tar(img.layout, tmp_path / "echo.tar")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert {"oci-layout", "index.json", "blobs", "blobs/sha256"} <= set(names)
        assert f"blobs/sha256/{img.digest.split(':')[1]}" in names
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_spec_validation(base: Base, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        build_function_image(FunctionSpec(name="x"), tmp_path / "l", "x", base=base)
    with pytest.raises(InvalidRequest):
        build_function_image(FunctionSpec(name="x", fprocess="cat", mode="static"), tmp_path / "l", "x", base=base)
    with pytest.raises(InvalidRequest):
        build_function_image(FunctionSpec(name="x", fprocess="cat", handler_dir=tmp_path / "missing"),
                             tmp_path / "l", "x", base=base)
    plain = build_function_image(FunctionSpec(name="p", entrypoint=["/bin/true"], exposed_ports=()),
                                 tmp_path / "p", "p", base=base)
    assert len(plain.layers) == 2 and plain.config["config"]["Entrypoint"] == ["/bin/true"]
    assert not any(e.startswith("fprocess=") for e in plain.config["config"]["Env"])


def test_unpack_applies_layers_in_order_with_whiteouts(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    init_layout(layout)
    blobs = layout / "blobs"
    lower = write_layer(with_parents([file_entry("/a/keep", "1"), file_entry("/a/gone", "2"),
                                      file_entry("/b/x", "3"), dir_entry("/c")]), blobs)
    upper = write_layer(with_parents([file_entry("/a/.wh.gone", ""), file_entry("/b/.wh..wh..opq", ""),
                                      file_entry("/b/y", "4"), file_entry("/a/keep", "new")]), blobs, "none")
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [lower.diff_id, upper.diff_id]}}
    cdigest, csize = put_blob(blobs, canonical_json(config))
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": cdigest, "size": csize},
                "layers": [lower.descriptor(), upper.descriptor()]}
    mdigest, msize = put_blob(blobs, canonical_json(manifest))
    add_manifest(layout, {"mediaType": MEDIA_MANIFEST, "digest": mdigest, "size": msize})
    verify_layout(layout)
    root = tmp_path / "root"
    assert unpack(layout, root)["rootfs"]["diff_ids"] == [lower.diff_id, upper.diff_id]
    assert (root / "a/keep").read_text() == "new"
    assert not (root / "a/gone").exists() and not (root / "a/.wh.gone").exists()
    assert sorted(p.name for p in (root / "b").iterdir()) == ["y"]
    assert (root / "c").is_dir()
    assert upper.media_type.endswith(".tar") and io.BytesIO(upper.path.read_bytes()).read(1)


def test_uncompressed_layers(tmp_path: Path) -> None:
    base = host_python_base(default_cache_dir(), compression="none")
    img = build_function_image(ECHO, tmp_path / "layout", "echo", base=base, cache_dir=default_cache_dir(),
                               compression="none")
    for layer in img.layers:
        assert layer.media_type == "application/vnd.oci.image.layer.v1.tar" and layer.digest == layer.diff_id
    verify_layout(img.layout)
    assert img.size > 40e6  # the stdlib uncompressed
