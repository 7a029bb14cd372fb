"""The offline base image: the host's Python interpreter, the shared libraries it and its
extension modules link, the stdlib (with Debian's pre-compiled ``__pycache__``), and a minimal
``/etc`` with the non-root ``app`` user. One layer, cached under a key made of the stat data of
every file it contains, so rebuilding it is a ~50 ms cache lookup until the host changes."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from faasd_py.build.base import APP_GID, APP_HOME, APP_UID, Base
from faasd_py.build.layer import Entry, Layer, dir_entry, file_entry, symlink_entry, with_parents, write_layer
from faasd_py.errors import ImageError

BASE_FORMAT = 3  # bump when the layer content rules change, to invalidate caches
DEFAULT_PYTHON = "/usr/bin/python3.11"
# stdlib directories nobody needs at run time (tests, GUIs, build support, third-party packages)
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                       "pydoc_data", "site-packages", "dist-packages", "__phello__"})
SKIP_MODULES = frozenset({"turtle", "sitecustomize", "antigravity", "this", "__hello__"})
SKIP_EXTENSION_PREFIXES = ("_test", "_xx", "xxlimited", "_ctypes_test")
EXTRA_HOST_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/usr/lib/ssl/cert.pem")  # TLS clients in functions
# dlopen()ed by glibc (thread cancellation / unwinding): ldd cannot see it
EXTRA_LIBS = ("libgcc_s.so.1",)
MAX_SYMLINK_HOPS = 40  # as the kernel's limit for one path

PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"app:x:{APP_UID}:{APP_GID}:app:{APP_HOME}:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\napp:x:{APP_GID}:\nnogroup:x:65534:\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"


def default_cache_dir() -> Path:
    env = os.environ.get("FAASD_PY_BUILD_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "faasd-py" / "build"


def host_python_base(cache_dir: Path | None = None, python: str = DEFAULT_PYTHON,
                     compression: str = "gzip") -> Base:
    """The base layer from this host's files, built once per distinct host file set."""
    cache = cache_dir or default_cache_dir()
    exe = Path(python)
    if not exe.is_file():
        raise ImageError(f"host base: interpreter {python} does not exist")
    info = _interpreter_info(python)
    stdlib = Path(info["stdlib"])
    platstdlib = Path(info["platstdlib"])
    dynload = Path(info["dynload"])
    # stage 1: the files we copy for sure; their stat data also keys the ldd result
    core = _stdlib_files(stdlib) + _stdlib_files(platstdlib) if platstdlib != stdlib else _stdlib_files(stdlib)
    extensions = sorted(p for p in dynload.iterdir() if p.suffix == ".so" and not p.name.startswith(
        SKIP_EXTENSION_PREFIXES)) if dynload.is_dir() else []
    key1 = _stat_key([exe, *extensions], core, extra=f"{BASE_FORMAT}|{python}|{compression}")
    deps = _cached_deps(cache, key1, [exe, *extensions])
    paths: dict[str, Entry] = {}
    for p in [str(exe), *deps, *(str(e) for e in extensions), *_extra_host_paths(deps)]:
        add_host_path(p, paths)
    for f in core:
        add_host_path(str(f), paths)
    entries = list(paths.values()) + _generated_entries(python)
    key = _stat_key([], [Path(e.source) for e in entries if e.source is not None],
                    extra=key1 + "|" + "|".join(sorted(f"{e.path}>{e.target}" for e in entries if e.kind == "symlink")))
    meta_path = cache / f"base-{key}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        blob = cache / "blobs" / "sha256" / meta["digest"].split(":", 1)[1]
        if blob.exists():
            return _base(python, info, Layer(meta["digest"], meta["diff_id"], meta["size"], meta["media_type"], blob))
    layer = write_layer(with_parents(entries), cache / "blobs", compression)
    tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                               "media_type": layer.media_type, "python": python}))
    os.replace(tmp, meta_path)
    return _base(python, info, layer)


def _base(python: str, info: dict[str, str], layer: Layer) -> Base:
    return Base(layers=(layer,), python=python, python_cache_tag=info["cache_tag"], architecture=_oci_arch(),
                description=f"host python {info['version']} ({python})")


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _interpreter_info(python: str) -> dict[str, str]:
    """Ask the interpreter where its stdlib lives (it may not be the one running us)."""
    code = ("import json, sys, sysconfig; p = sysconfig.get_paths(); "
            "print(json.dumps({'stdlib': p['stdlib'], 'platstdlib': p['platstdlib'], "
            "'dynload': sysconfig.get_config_var('DESTSHARED') or '', 'cache_tag': sys.implementation.cache_tag, "
            "'version': sys.version.split()[0]}))")
    try:
        out = subprocess.run([python, "-S", "-c", code], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"host base: cannot run {python}: {exc}") from exc
    info: dict[str, str] = json.loads(out.stdout)
    if not info["dynload"] or not Path(info["dynload"]).is_dir():
        info["dynload"] = str(Path(info["stdlib"]) / "lib-dynload")
    return info


def _stdlib_files(root: Path) -> list[Path]:
    """Every stdlib file we ship: sources, their compiled __pycache__ twins, data files."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")
                             and not (rel == Path(".") and d == "lib-dynload"))
        for name in sorted(filenames):
            if name.split(".", 1)[0] in SKIP_MODULES and (rel == Path(".") or rel == Path("__pycache__")):
                continue
            if name.endswith(".pyc") and ".opt-" in name:
                continue  # only plain .pyc: nobody runs -O here
            out.append(Path(dirpath) / name)
    return out


def _stat_key(files: Iterable[Path], more: Iterable[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted({*files, *more}):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            h.update(f"{p}|missing\n".encode())
            continue
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_mode}|{st.st_ino}\n".encode())
    return h.hexdigest()[:32]


def _cached_deps(cache: Path, key: str, binaries: list[Path]) -> list[str]:
    path = cache / f"ldd-{key}.json"
    if path.exists():
        deps: list[str] = json.loads(path.read_text())
        return deps
    deps = _ldd(binaries)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(deps))
    os.replace(tmp, path)
    return deps


def _ldd(binaries: list[Path]) -> list[str]:
    """Shared libraries (and the ELF interpreter) the binaries load, by absolute path."""
    try:
        out = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"host base: ldd failed: {exc}") from exc
    found: set[str] = set()
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            if target.startswith("/"):
                found.add(target)
            elif "not found" in target:
                print(f"faasd-py build: warning: {line}", file=sys.stderr)
        elif line.startswith("/") and "(0x" in line:
            found.add(line.split(" (", 1)[0])
    return sorted(found)


def _extra_host_paths(deps: list[str]) -> list[str]:
    out = [p for p in EXTRA_HOST_FILES if os.path.lexists(p)]
    libdirs = sorted({str(Path(d).parent) for d in deps})
    for lib in EXTRA_LIBS:
        for d in libdirs:
            if os.path.exists(os.path.join(d, lib)):
                out.append(os.path.join(d, lib))
                break
    return out


def add_host_path(path: str, entries: dict[str, Entry], exclude: tuple[str, ...] = (), *,
                  missing_ok: bool = False) -> None:
    """Copy host ``path`` to the same path in the image with every symlink met on the way
    (``/lib64 -> usr/lib64``, versioned .so links, ``static/d3 -> ../../javascript/d3``), so the
    image resolves the names the host does. A directory asked for by name is taken whole;
    excluded subtrees are left out; so are dangling links with ``missing_ok`` (otherwise they
    raise FileNotFoundError). ``entries`` is keyed by entry name; a later caller's entry wins."""
    _walk(Path(path), entries, exclude, missing_ok, 0)


def _excluded(path: str, exclude: tuple[str, ...]) -> bool:
    return any(path == e or path.startswith(e.rstrip("/") + "/") for e in exclude)


def _walk(path: Path, entries: dict[str, Entry], exclude: tuple[str, ...], missing_ok: bool, hops: int) -> None:
    pending = list(path.parts[1:])
    cur = Path("/")
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            cur = cur.parent
            continue
        nxt = cur / name
        key = str(nxt).lstrip("/")
        if _excluded(str(nxt), exclude):
            return
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            if missing_ok:
                return  # a dangling link somewhere on the way: nothing to copy
            raise
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise ImageError(f"build: symlink loop at {nxt}")
            target = os.readlink(nxt)
            entries.setdefault(key, symlink_entry(str(nxt), target))
            if target.startswith("/"):
                cur = Path("/")
                pending = list(Path(target).parts[1:]) + pending
            else:
                pending = list(Path(target).parts) + pending
            continue
        if stat.S_ISDIR(st.st_mode):
            if not pending:
                entries.setdefault(key, dir_entry(str(nxt), stat.S_IMODE(st.st_mode) & 0o777))
                for child in sorted(os.listdir(nxt)):
                    _walk(nxt / child, entries, exclude, missing_ok, hops)
                return
            cur = nxt
            continue
        if stat.S_ISREG(st.st_mode) and not pending:
            entries[key] = Entry(str(nxt), "file", stat.S_IMODE(st.st_mode) & 0o777, mtime=int(st.st_mtime),
                                 source=nxt)
        return


def skeleton_entries(passwd: str, group: str) -> list[Entry]:
    """What every image assembled from host files needs besides the files: users, name service
    files (bind-mounted over at run time), and the directories a container runtime expects."""
    return [
        file_entry("/etc/passwd", passwd),
        file_entry("/etc/group", group),
        file_entry("/etc/nsswitch.conf", NSSWITCH),
        file_entry("/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        file_entry("/etc/resolv.conf", ""),
        file_entry("/etc/hostname", ""),
        dir_entry("/tmp", 0o1777),
        dir_entry("/root", 0o700),
        dir_entry("/proc"),
        dir_entry("/sys"),
        dir_entry("/dev"),
    ]


def _generated_entries(python: str) -> list[Entry]:
    bindir = str(Path(python).parent)
    exe = Path(python).name
    return [
        *skeleton_entries(PASSWD, GROUP),
        dir_entry("/home"),
        dir_entry(APP_HOME, 0o755, APP_UID, APP_GID),
        dir_entry("/var/openfaas"),
        symlink_entry(f"{bindir}/python3", exe),
        symlink_entry(f"{bindir}/python", exe),
    ]
