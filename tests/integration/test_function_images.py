"""Every test image (tests/images.py) actually runs: first from an unpacked rootfs (own root,
uid 12000, own netns reached over a veth), then through the real containerd/runc with ``ctr``
(import of the layout tar, read-only rootfs, memory and CPU limits), and pushed to the registry.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.images import (
    IMAGE_NAMES,
    Sandbox,
    TestImage,
    TestImages,
    http,
    push,
    push_with_skopeo,
    run_rootfs,
    stop,
    unpack_image,
    wait_http,
)
from tests.infra import TestEnv

CTR_NS = "fdpyd-img"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> TestImages:
    return TestImages(tmp_path_factory.mktemp("images"))


def _subnet_prefix(env: TestEnv) -> str:
    return ".".join(env.subnet.split(".")[:2])


@pytest.fixture
def sandbox(testenv: TestEnv) -> Iterator[Sandbox]:
    with Sandbox(testenv.netns_prefix, _subnet_prefix(testenv)) as sb:
        yield sb


@pytest.fixture(scope="module")
def rootfs(images: TestImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Each image unpacked once; the mounts of a run live in its own mount namespace."""
    base = tmp_path_factory.mktemp("rootfs")
    out = {}
    for name in IMAGE_NAMES:
        unpack_image(images.get(name), base / name)
        out[name] = base / name
    yield out
    shutil.rmtree(base, ignore_errors=True)


def test_build_times_and_sizes(images: TestImages) -> None:
    t0 = time.monotonic()
    built = {n: images.get(n) for n in IMAGE_NAMES}
    total = time.monotonic() - t0
    t0 = time.monotonic()
    tar = images.combined_tar()
    combined = time.monotonic() - t0
    print(f"\n{len(built)} images in {total:.2f} s (base cached), combined tar {combined:.2f} s, "
          f"{tar.stat().st_size / 1e6:.1f} MB; per image: "
          + ", ".join(f"{n} {i.build_seconds * 1000:.0f} ms/{i.size / 1e6:.1f} MB" for n, i in built.items()))
    assert all(i.config["config"]["User"] == "12000:12000" for i in built.values())
    assert len({i.digest for i in built.values()}) == len(built)


# --- from an unpacked rootfs ---------------------------------------------------------------


class Running:
    def __init__(self, proc: subprocess.Popen[bytes], sb: Sandbox, started: float) -> None:
        self.proc, self.sb, self.started = proc, sb, started

    @property
    def url(self) -> str:
        return f"http://{self.sb.ip}:8080"


@contextlib.contextmanager
def running(img: TestImage, root: Path, sb: Sandbox, **kw: object) -> Iterator[Running]:
    t0 = time.monotonic()
    proc = run_rootfs(root, img.config, sb, **kw)  # type: ignore[arg-type]
    try:
        yield Running(proc, sb, t0)
    finally:
        stop(proc)
        if proc.stderr:
            proc.stderr.close()


def test_echo_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox) -> None:
    with running(images.get("echo"), rootfs["echo"], sandbox) as r:
        waited = wait_http(r.url + "/_/health")
        print(f"\necho (rootfs): spawn -> /_/health 200 in {waited * 1000:.0f} ms")
        reply = http("POST", r.url + "/any/path?x=1", b"hello world")
        assert (reply.status, reply.body) == (200, b"hello world")
        assert "X-Duration-Seconds" in reply.headers
        assert waited < 2.0


def test_env_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox) -> None:
    with running(images.get("env"), rootfs["env"], sandbox, env={"VERSION": "7"}) as r:
        wait_http(r.url + "/_/health")
        env = dict(line.split("=", 1) for line in http("GET", r.url + "/p?q=1").body.decode().splitlines())
    assert env["VERSION"] == "7" and env["fprocess"].endswith("/home/app/env.py")
    assert env["Http_Path"] == "/p" and env["Http_Query"] == "q=1" and env["mode"] == "classic"


def test_http_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox) -> None:
    with running(images.get("http"), rootfs["http"], sandbox) as r:
        waited = wait_http(r.url + "/_/health")
        print(f"\nhttp (rootfs): spawn -> /_/health 200 in {waited * 1000:.0f} ms")
        reply = http("PUT", r.url + "/a/b?c=d", b'{"k": 1}', {"X-Test": "yes"})
    echo = json.loads(reply.body)
    assert (echo["method"], echo["path"], echo["query"], echo["body"]) == ("PUT", "/a/b", "c=d", '{"k": 1}')
    assert echo["headers"]["X-Test"] == "yes"


def test_sleep_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox) -> None:
    with running(images.get("slow"), rootfs["sleep"], sandbox, env={"VERSION": "v2"}) as r:
        wait_http(r.url + "/_/health")
        t0 = time.monotonic()
        reply = http("GET", r.url + "/?ms=300")
        assert time.monotonic() - t0 >= 0.3
    assert reply.body == b"slept 300 ms version=v2\n"


def test_crash_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox) -> None:
    proc = run_rootfs(rootfs["crash"], images.get("crash").config, sandbox)
    assert proc.wait(10) == 1
    assert proc.stderr is not None
    assert b"crash: exiting with status 1" in proc.stderr.read()
    proc.stderr.close()


def test_nohealth_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox) -> None:
    with running(images.get("nohealth"), rootfs["nohealth"], sandbox) as r:
        wait_http(r.url + "/", want=200)
        assert http("GET", r.url + "/_/health").status == 404
        assert http("POST", r.url + "/x", b"1").body == b"nohealth POST /x\n"


@pytest.mark.parametrize("read_only", [False, True])
def test_writer_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox, read_only: bool) -> None:
    with running(images.get("writer"), rootfs["writer"], sandbox, read_only=read_only) as r:
        wait_http(r.url + "/_/health")
        result = json.loads(http("POST", r.url + "/", b"").body)
    assert result["/tmp"] == "ok"
    if read_only:
        assert result["/home/app"] == "EROFS" and result["/"] in ("EROFS", "EACCES")
    else:
        assert result == {"/": "EACCES", "/home/app": "ok", "/tmp": "ok"}  # non-root user


def test_cpu_and_mem_from_rootfs(images: TestImages, rootfs: dict[str, Path], sandbox: Sandbox) -> None:
    with running(images.get("cpu"), rootfs["cpu"], sandbox) as r:
        wait_http(r.url + "/_/health")
        cpu = json.loads(http("GET", r.url + "/?ms=150").body)
    assert cpu["wall_ms"] >= 150 and cpu["cpu_ms"] > 50
    with running(images.get("mem"), rootfs["mem"], sandbox) as r:
        wait_http(r.url + "/_/health")
        assert json.loads(http("GET", r.url + "/?mb=24").body) == {"allocated_mb": 24, "bytes": 24 << 20}


# --- through containerd ----------------------------------------------------------------------


class Ctr:
    def __init__(self, env: TestEnv, logs: Path) -> None:
        self.sock = env.containerd_socket
        self.logs = logs

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ctr", "-a", self.sock, "-n", CTR_NS, *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed: {proc.stderr}")
        return proc

    def remove(self, cid: str) -> None:
        self("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        for _ in range(100):
            if self("tasks", "delete", cid, check=False).returncode == 0 or "not found" in self(
                    "tasks", "ls", check=False).stdout:
                break
            time.sleep(0.05)
        self("containers", "delete", cid, check=False)


@pytest.fixture(scope="module")
def ctr(testenv: TestEnv, images: TestImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctr]:
    c = Ctr(testenv, tmp_path_factory.mktemp("ctr-logs"))
    t0 = time.monotonic()
    c("images", "import", str(images.combined_tar()))
    print(f"\nctr images import of all test images: {time.monotonic() - t0:.2f} s")
    yield c
    for cid in c("containers", "ls", "-q", check=False).stdout.split():
        c.remove(cid)
    for ref in c("images", "ls", "-q", check=False).stdout.split():
        c("images", "rm", ref, check=False)
    for d in [*Path("/sys/fs/cgroup").glob(f"*/{CTR_NS}"), Path(f"/run/containerd/runc/{CTR_NS}")]:
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def task(ctr: Ctr, img: TestImage, sb: Sandbox, *flags: str) -> Iterator[tuple[str, float]]:
    cid = f"{img.name}-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    ctr("run", "-d", "--with-ns", f"network:{sb.path}", "--log-uri", f"file://{ctr.logs}/{cid}.log", *flags,
        img.ref, cid)
    try:
        yield cid, t0
    finally:
        ctr.remove(cid)


def test_import_names_and_digests(ctr: Ctr, images: TestImages) -> None:
    listed = {line.split()[0]: line.split()[2] for line in ctr("images", "ls").stdout.splitlines()[1:]}
    for name in IMAGE_NAMES:
        img = images.get(name)
        assert listed[img.ref] == img.digest, name


EXPECTED_REPLY: dict[str, Callable[[bytes], bool]] = {
    "echo": lambda body: body == b"ping",
    "http": lambda body: json.loads(body)["body"] == "ping" and json.loads(body)["query"] == "y=1",
    "env": lambda body: b"Http_Query=y=1\n" in body and b"fprocess=/usr/bin/python3.11 -S /home/app/env.py\n" in body,
    "sleep": lambda body: body == b"slept 5 ms version=\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_REPLY))
def test_watchdog_images_serve_under_containerd(ctr: Ctr, images: TestImages, sandbox: Sandbox, name: str) -> None:
    img = images.get(name)
    with task(ctr, img, sandbox) as (cid, t0):
        waited = wait_http(f"http://{sandbox.ip}:8080/_/health")
        print(f"\n{name} (containerd): ctr run returned -> /_/health 200 in {waited * 1000:.0f} ms "
              f"(from ctr run start: {(time.monotonic() - t0) * 1000:.0f} ms)")
        reply = http("POST", f"http://{sandbox.ip}:8080/x?y=1", b"5" if name == "sleep" else b"ping")
        assert reply.status == 200
        assert EXPECTED_REPLY[name](reply.body), reply.body
        pids = [line.split()[0] for line in ctr("tasks", "ps", cid).stdout.splitlines()[1:]]
        uids = {Path(f"/proc/{p}/status").read_text().split("Uid:")[1].split()[0] for p in pids}
        assert uids == {"12000"}  # the image's non-root user
    log = (ctr.logs / f"{cid}.log").read_text()
    assert "Listening on port: 8080" in log and "Writing lock-file to: /tmp/.lock" in log


def test_watchdog_metrics_on_8081_under_containerd(ctr: Ctr, images: TestImages, sandbox: Sandbox) -> None:
    """The Go watchdogs' Prometheus port, reached like :8080 at the function's own address."""
    with task(ctr, images.get("echo"), sandbox) as (cid, _):
        wait_http(f"http://{sandbox.ip}:8080/_/health")
        assert http("POST", f"http://{sandbox.ip}:8080/x", b"ping").status == 200
        assert http("GET", f"http://{sandbox.ip}:8080/").status == 200
        deadline = time.monotonic() + 10
        while True:  # a call is recorded as its handler returns, just after the reply went out
            reply = http("GET", f"http://{sandbox.ip}:8081/metrics")
            assert reply.status == 200
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for fam in text_string_to_metric_families(reply.body.decode()) for s in fam.samples}
            if samples[("http_requests_in_flight", ())] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert samples[("http_requests_total", (("code", "200"), ("method", "post")))] == 1
    assert samples[("http_requests_total", (("code", "200"), ("method", "get")))] == 1  # /_/health not counted
    assert samples[("http_request_duration_seconds_count", (("code", "200"), ("method", "post")))] == 1
    assert samples[("http_requests_in_flight", ())] == 0
    assert "Metrics listening on port: 8081" in (ctr.logs / f"{cid}.log").read_text()


def test_nohealth_and_crash_under_containerd(ctr: Ctr, images: TestImages, sandbox: Sandbox) -> None:
    with task(ctr, images.get("nohealth"), sandbox):
        wait_http(f"http://{sandbox.ip}:8080/")
        assert http("GET", f"http://{sandbox.ip}:8080/_/health").status == 404
    cid = f"crash-{uuid.uuid4().hex[:8]}"
    try:
        proc = ctr("run", "--rm", "--with-ns", f"network:{sandbox.path}", images.get("crash").ref, cid, check=False,
                   timeout=30)
        assert proc.returncode == 1
        assert "crash: exiting with status 1" in proc.stdout + proc.stderr
    finally:
        ctr.remove(cid)


def test_read_only_rootfs_needs_tmpfs_tmp(ctr: Ctr, images: TestImages, sandbox: Sandbox) -> None:
    tmpfs = "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:mode=1777"
    with task(ctr, images.get("writer"), sandbox, "--read-only", "--mount", tmpfs):
        wait_http(f"http://{sandbox.ip}:8080/_/health")
        result = json.loads(http("POST", f"http://{sandbox.ip}:8080/", b"").body)
    assert result["/home/app"] == "EROFS" and result["/tmp"] == "ok"


def test_memory_limit_kills_the_fprocess(ctr: Ctr, images: TestImages, sandbox: Sandbox) -> None:
    with task(ctr, images.get("mem"), sandbox, "--memory-limit", str(96 << 20)):
        url = f"http://{sandbox.ip}:8080"
        wait_http(url + "/_/health")
        assert http("GET", url + "/?mb=8").status == 200
        over = http("GET", url + "/?mb=256")
        assert over.status == 500 and b"signal: killed" in over.body
        assert http("GET", url + "/_/health").status == 200  # the watchdog survived


def test_cpu_limit_caps_cpu_time(ctr: Ctr, images: TestImages, sandbox: Sandbox) -> None:
    with task(ctr, images.get("cpu"), sandbox, "--cpus", "0.25"):
        url = f"http://{sandbox.ip}:8080"
        wait_http(url + "/_/health")
        result = json.loads(http("GET", url + "/?ms=600").body)
    assert result["cpu_ms"] / result["wall_ms"] < 0.5  # ~0.25 of a CPU, not a whole one


# RegistryClient.push_blob sends each blob as one bytes object; aiohttp warns above 1 MiB
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
def test_push_to_registry_and_pull_back(testenv: TestEnv, ctr: Ctr, images: TestImages) -> None:
    img = images.get("echo")
    dest = push(img.layout, testenv.registry, "faasd-test/echo", "v1", ref=img.ref)
    pulled = ctr("images", "pull", "--plain-http", dest, timeout=120)
    assert pulled.returncode == 0
    listed = {line.split()[0]: line.split()[2] for line in ctr("images", "ls").stdout.splitlines()[1:]}
    assert listed[dest] == img.digest  # the registry holds exactly the manifest we built
    # skopeo reads our layouts too (a third-party check of the layout format)
    dest2 = push_with_skopeo(images.workdir / "all" / "layout", testenv.registry, "faasd-test/http", "v1",
                             ref=images.get("http").ref)
    assert ctr("images", "pull", "--plain-http", dest2, timeout=120).returncode == 0
