"""The function images every test uses, built offline with faasd_py.build (no registry, no Docker).

Build once per session and reuse::

    from tests.images import TestImages, test_images   # the fixture, for conftest.py
    img = test_images.get("echo")      # TestImage(ref, layout, tar, digest, config, ...)
    img.tar                            # OCI layout tar for `ctr images import` / `faasd-py image import`
    test_images.combined_tar()         # every image in one layout tar: one import for all
    push(img.layout, "127.0.0.1:5000", "faasd-test/echo", "v1", ref=img.ref)

Images (all run as uid 12000, WorkingDir /home/app, watchdog on :8080 unless noted):

    echo      classic: the response is the request body
    env       classic: ``KEY=value`` lines of the function's environment, sorted
    http      http mode: upstream on 127.0.0.1:5000 answers JSON
              {method, path, query, headers, body, pid, version}
    sleep     classic: sleeps ``?ms=N`` (else the body, else $SLEEP_MS, else 100) then prints
              ``slept N ms version=$VERSION``; ``slow`` is the same image
    crash     no watchdog: prints to stderr and exits 1 (``$CRASH_EXIT_CODE``) at once
    nohealth  no watchdog: plain http.server on :8080; /_/health is 404, anything else 200
              ``nohealth <METHOD> <path>``
    writer    classic: JSON {"/": ..., "/home/app": ..., "/tmp": ...}, "ok" or the errno name of
              trying to create a file there (EROFS with readOnlyRootFilesystem, EACCES for /)
    cpu       classic: burns CPU for ``?ms=N`` (default 200) of wall time, prints JSON
              {"wall_ms", "cpu_ms"} (cpu/wall ~ the CPU limit)
    mem       classic: allocates and touches ``?mb=N`` MiB (default 16), prints JSON
              {"allocated_mb": N}; over the memory limit the kernel OOM-kills the fprocess (500)

The base layer is cached across sessions (faasd_py.build cache dir, keyed by the host files);
the images themselves go to the session directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from faasd_py.build import (
    Base,
    BuiltImage,
    FunctionSpec,
    build_function_image,
    export_tar,
    host_python_base,
    push_layout,
    push_layout_skopeo,
    unpack,
)
from faasd_py.build.hostbase import default_cache_dir

REF_PREFIX = "localhost/faasd-test"
PY = "/usr/bin/python3.11"  # the host interpreter the base image is made of

# --- handler sources -------------------------------------------------------------------------

ECHO_PY = """\
import sys
sys.stdout.buffer.write(sys.stdin.buffer.read())
"""

ENV_PY = """\
import os, sys
sys.stdout.write("".join(f"{k}={v}\\n" for k, v in sorted(os.environ.items())))
"""

_QUERY = """\
import os
def query():
    q = os.environ.get("Http_Query", "")
    return dict(p.partition("=")[::2] for p in q.split("&") if p)
"""

SLEEP_PY = _QUERY + """\
import sys, time
body = sys.stdin.read().strip()
ms = int(query().get("ms") or body or os.environ.get("SLEEP_MS") or 100)
time.sleep(ms / 1000)
sys.stdout.write(f"slept {ms} ms version={os.environ.get('VERSION', '')}\\n")
"""

CPU_PY = _QUERY + """\
import json, time
ms = int(query().get("ms") or 200)
t0, c0 = time.monotonic(), time.process_time()
x = 0
while (time.monotonic() - t0) * 1000 < ms:
    for _ in range(5000):
        x += 1
print(json.dumps({"wall_ms": round((time.monotonic() - t0) * 1000, 1),
                  "cpu_ms": round((time.process_time() - c0) * 1000, 1)}))
"""

MEM_PY = _QUERY + """\
import json
mb = int(query().get("mb") or 16)
data = b"\\x01" * (mb << 20)  # bytes * n writes every page: really resident
print(json.dumps({"allocated_mb": mb, "bytes": len(data)}))
"""

WRITER_PY = """\
import errno, json, os
result = {}
for d in ("/", "/home/app", "/tmp"):
    p = os.path.join(d, f".writer-probe-{os.getpid()}")
    try:
        with open(p, "w") as f:
            f.write("x")
        os.unlink(p)
        result[d] = "ok"
    except OSError as e:
        result[d] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(result, sort_keys=True))
"""

CRASH_PY = """\
import os, sys
code = int(os.environ.get("CRASH_EXIT_CODE", "1"))
sys.stderr.write(f"crash: exiting with status {code}\\n")
sys.exit(code)
"""

HTTP_SERVER_PY = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n > 0 else b""
        path, _, query = self.path.partition("?")
        out = json.dumps({"method": self.command, "path": path, "query": query,
                          "headers": dict(self.headers.items()), "body": body.decode("utf-8", "replace"),
                          "pid": os.getpid(), "version": os.environ.get("VERSION", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _echo

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: %s %s\\n" % (self.command, self.path))

ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("UPSTREAM_PORT", "5000"))), Echo).serve_forever()
"""

NOHEALTH_PY = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Plain(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 0:
            self.rfile.read(n)
        status, body = (404, b"not found\\n") if self.path.startswith("/_/health") else (
            200, f"nohealth {self.command} {self.path}\\n".encode())
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, fmt, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("port", "8080"))), Plain).serve_forever()
"""


def _classic(name: str, script: str, **kw: Any) -> FunctionSpec:
    return FunctionSpec(name=name, fprocess=f"{PY} -S /home/app/{name}.py", files={f"{name}.py": script}, **kw)


SPECS: dict[str, Callable[[], FunctionSpec]] = {
    "echo": lambda: _classic("echo", ECHO_PY),
    "env": lambda: _classic("env", ENV_PY),
    "sleep": lambda: _classic("sleep", SLEEP_PY),
    "writer": lambda: _classic("writer", WRITER_PY),
    "cpu": lambda: _classic("cpu", CPU_PY),
    "mem": lambda: _classic("mem", MEM_PY),
    "http": lambda: FunctionSpec(name="http", mode="http", fprocess=f"{PY} -S /home/app/server.py",
                                 upstream_url="http://127.0.0.1:5000", files={"server.py": HTTP_SERVER_PY}),
    "crash": lambda: FunctionSpec(name="crash", entrypoint=[PY, "-S", "/home/app/crash.py"],
                                  files={"crash.py": CRASH_PY}, exposed_ports=()),
    "nohealth": lambda: FunctionSpec(name="nohealth", entrypoint=[PY, "-S", "/home/app/serve.py"],
                                     files={"serve.py": NOHEALTH_PY}),
}
ALIASES = {"slow": "sleep"}
IMAGE_NAMES = tuple(SPECS)


@dataclass(frozen=True)
class TestImage:
    __test__ = False  # not a test class, despite the name

    name: str
    ref: str  # localhost/faasd-test/<name>:latest (the ref name in the layout and after import)
    layout: Path
    tar: Path
    digest: str  # manifest digest
    size: int
    config: dict[str, Any] = field(repr=False)
    build_seconds: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.config["config"].get("Env", []))


class TestImages:
    """Builds each image at most once per directory (a file lock makes parallel sessions safe)."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, workdir: Path, cache_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.cache_dir = cache_dir or default_cache_dir()
        self._base: Base | None = None
        self._images: dict[str, TestImage] = {}

    @property
    def base(self) -> Base:
        if self._base is None:
            self._base = host_python_base(self.cache_dir)
        return self._base

    def get(self, name: str) -> TestImage:
        name = ALIASES.get(name, name)
        if name not in SPECS:
            raise KeyError(f"no test image {name!r}; have {', '.join(IMAGE_NAMES)}")
        if name in self._images:
            return self._images[name]
        with self._lock():
            layout = self.workdir / name / "layout"
            tar = self.workdir / f"{name}.tar"
            ref = f"{REF_PREFIX}/{name}:latest"
            t0 = time.monotonic()
            built: BuiltImage = build_function_image(SPECS[name](), layout, ref, base=self.base,
                                                     cache_dir=self.cache_dir)
            if not tar.exists() or json.loads((layout / "index.json").read_text()) != _tar_index(tar):
                export_tar(layout, tar)
            img = TestImage(name, ref, layout, tar, built.digest, built.size, built.config, time.monotonic() - t0)
        self._images[name] = img
        return img

    def all(self) -> dict[str, TestImage]:
        return {n: self.get(n) for n in IMAGE_NAMES}

    def combined_tar(self, names: tuple[str, ...] = IMAGE_NAMES) -> Path:
        """One layout with every image (the base blob once): a single import for a whole suite."""
        with self._lock():
            layout = self.workdir / "all" / "layout"
            for n in names:
                build_function_image(SPECS[ALIASES.get(n, n)](), layout, f"{REF_PREFIX}/{n}:latest",
                                     base=self.base, cache_dir=self.cache_dir)
            return export_tar(layout, self.workdir / "all.tar")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _tar_index(tar: Path) -> Any:
    with tarfile.open(tar) as t:
        member = t.extractfile("index.json")
        return json.loads(member.read()) if member else None


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> TestImages:
    """Session-wide image set; import into conftest.py (``from tests.images import test_images``)."""
    return TestImages(tmp_path_factory.mktemp("images"))


def push(layout: Path, registry: str, repo: str, tag: str = "latest", ref: str | None = None) -> str:
    """Pushes an image of ``layout`` to ``registry`` (plain HTTP) as ``repo:tag``; returns the
    destination reference."""
    destination = f"{registry}/{repo}:{tag}"
    push_layout(layout, destination, ref, insecure=True)
    return destination


def push_with_skopeo(layout: Path, registry: str, repo: str, tag: str = "latest", ref: str | None = None) -> str:
    """The same with skopeo: a third-party reader of our layouts (used as a cross-check)."""
    destination = f"{registry}/{repo}:{tag}"
    push_layout_skopeo(layout, destination, ref, insecure=True)
    return destination


# --- running an image without containerd ----------------------------------------------------


class Sandbox:
    """A network namespace reachable from the host over a veth pair (netns ``<prefix><n>`` with
    <subnet_prefix>.<n>.2 inside, .1 on the host side); deleting the netns removes the veth."""

    __test__ = False

    def __init__(self, prefix: str = "fdpyd-", subnet_prefix: str = "10.94") -> None:
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        taken = {line.split()[0] for line in existing.splitlines() if line.strip()}
        # high third octets: host-local IPAM hands out the low ones of a shared test subnet
        n = next(i for i in range(200, 250) if f"{prefix}{i}" not in taken and not Path(
            f"/sys/class/net/{prefix}h{i}").exists())
        self.netns = f"{prefix}{n}"
        self.host_if = f"{prefix}h{n}"
        self.host_ip = f"{subnet_prefix}.{n}.1"
        self.ip = f"{subnet_prefix}.{n}.2"
        steps = [
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.netns],
            ["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", "eth0"],
            ["ip", "-n", self.netns, "link", "set", "eth0", "up"],
            ["ip", "-n", self.netns, "link", "set", "lo", "up"],
        ]
        try:
            for argv in steps:
                subprocess.run(argv, check=True, capture_output=True)
        except subprocess.CalledProcessError:
            self.close()
            raise

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unpack_image(img: TestImage, dest: Path) -> dict[str, Any]:
    return unpack(img.layout, dest, img.ref)


def run_rootfs(rootfs: Path, config: dict[str, Any], sandbox: Sandbox, env: Mapping[str, str] | None = None,
               read_only: bool = False, stdout: Any = None) -> subprocess.Popen[bytes]:
    """Runs the image's entrypoint like a container would: in the sandbox netns, its own root,
    the image's user and working dir, a fresh /dev and a tmpfs /tmp. Stop with :func:`stop`."""
    cfg = config["config"]
    user = cfg.get("User", "0:0")
    uid, _, gid = user.partition(":")
    image_env = dict(e.split("=", 1) for e in cfg.get("Env", []))
    image_env.update(env or {})
    argv = [*cfg.get("Entrypoint", []), *cfg.get("Cmd", [])]
    script = ('set -e; R="$0"; '
              + ('mount --bind "$R" "$R"; mount -o remount,bind,ro "$R"; ' if read_only else '')
              + 'mount --rbind /dev "$R/dev"; mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"; '
              f'exec unshare --root="$R" --wd={cfg.get("WorkingDir") or "/"} -S {uid} -G {gid or uid} "$@"')
    return subprocess.Popen(["ip", "netns", "exec", sandbox.netns, "sh", "-c", script, str(rootfs), *argv],
                            env=image_env, start_new_session=True, stdout=stdout or subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def http(method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout: float = 10.0) -> Reply:
    """One HTTP request; any status comes back as a Reply (never raises HTTPError)."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers.items()), err.read())


def wait_http(url: str, timeout: float = 10.0, want: int = 200) -> float:
    """Polls ``url`` until it answers ``want``; returns seconds waited."""
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < timeout:
        try:
            if http("GET", url, timeout=1.0).status == want:
                return time.monotonic() - t0
        except OSError as exc:
            last = exc
        time.sleep(0.005)
    raise TimeoutError(f"{url} did not answer {want} within {timeout}s (last: {last})")
