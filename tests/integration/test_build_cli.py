"""``faasd-py new`` + ``faasd-py build`` end to end: scaffold one function per template, build the
images (requirements from PyPI included), push them to the session's registry, deploy them on
the real daemon the way ``faas-cli deploy -f`` does and invoke them. Also: rebuilding gives the
same digests (warm and from a cold cache), an image goes straight into containerd's content
store without a registry, and a base can be pulled from a registry instead of the host's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
import yaml

from faasd_py.build import FunctionSpec, build_function_image, host_python_base, push_layout
from faasd_py.build.hostbase import default_cache_dir
from faasd_py.build.stack import StackFunction, load_stack
from faasd_py.cli import main
from tests.infra import TestEnv
from tests.integration.daemon_harness import DaemonHandle

REPO = "fdpy-build"
PY_HANDLER = """\
import os
import six

def handle(req):
    return f"py: {req.upper()} six={six.__version__} greeting={os.environ.get('GREETING')}"
"""
WEB_HANDLER = """\
def handle(event, context):
    return {
        "statusCode": 201,
        "headers": {"X-Fn": "web", "Content-Type": "application/json"},
        "body": {"method": event.method, "path": event.path, "query": event.query,
                 "body": event.body.decode(), "test": event.headers.get("X-Test")},
    }
"""
SH_HANDLER = """\
#!/bin/sh
echo "sh: $(cat | tr a-z A-Z) query=$Http_Query"
"""
ENV = {"FDPYH_GREETING": "hi from the environment"}
LINE = re.compile(r"^(?P<name>[\w-]+): (?P<image>\S+) (?P<digest>sha256:[0-9a-f]{64}) \(", re.M)
PUSHED = re.compile(r"^(?P<name>[\w-]+): pushed (?P<image>\S+) (?P<digest>sha256:[0-9a-f]{64})$", re.M)


@dataclass
class Project:
    root: Path
    stack: Path
    registry: str
    digests: dict[str, str] = field(default_factory=dict)

    def function(self, name: str, stack: Path | None = None) -> StackFunction:
        with mock.patch.dict(os.environ, ENV):
            return load_stack(stack or self.stack).functions[name]

    def deploy_body(self, name: str, stack: Path | None = None) -> dict[str, object]:
        """What faas-cli deploy -f sends: fprocess comes from ./template/<lang>/template.yml."""
        fn = self.function(name, stack)
        body = fn.deploy_body()
        template = (self.root / "template" / fn.lang / "template.yml").read_text()
        body.setdefault("envProcess", yaml.safe_load(template)["fprocess"])
        return body


def cli(*args: str) -> str:
    """``faasd-py ARGS`` in-process (it runs its own event loop, so call it in a thread); its
    stdout, or an AssertionError with its stderr."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, ENV), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            raise AssertionError(f"faasd-py {' '.join(args)} exited {exc.code}: {err.getvalue()}") from None
    return out.getvalue() + err.getvalue()


def built(output: str) -> dict[str, str]:
    return {m["name"]: m["digest"] for m in LINE.finditer(output)}


@pytest.fixture(scope="module")
def project(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("build-cli")
    prefix = f"{testenv.registry}/{REPO}"
    stack = root / "py.yml"
    cli("new", "py", "--lang", "python3", "--prefix", prefix, "--dir", str(root))
    cli("new", "web", "--lang", "python3-http", "--prefix", prefix, "--append", str(stack))
    cli("new", "sh", "--lang", "shell", "--prefix", prefix, "--append", str(stack))
    (root / "py" / "handler.py").write_text(PY_HANDLER)
    (root / "py" / "requirements.txt").write_text("six\n")  # small, pure Python, from PyPI
    (root / "web" / "handler.py").write_text(WEB_HANDLER)
    (root / "sh" / "handler.sh").write_text(SH_HANDLER)
    text = stack.read_text().replace(
        f"    image: {prefix}/py:latest\n",
        f"    image: {prefix}/py:latest\n    environment:\n      GREETING: ${{FDPYH_GREETING:-unset}}\n"
        "    labels:\n      team: build\n")
    stack.write_text(text)
    yield Project(root, stack, testenv.registry)


async def test_build_push_and_rebuild_give_the_same_digests(project: Project) -> None:
    out = await asyncio.to_thread(cli, "build", "-f", str(project.stack), "--push",
                                  "--output", str(project.root / "build"))
    digests = built(out)
    assert set(digests) == {"py", "web", "sh"}, out
    pushed = {m["name"]: m["digest"] for m in PUSHED.finditer(out)}
    assert pushed == digests  # the registry stored exactly the manifests we built
    again = await asyncio.to_thread(cli, "build", "-f", str(project.stack), "--push",
                                    "--output", str(project.root / "build"))
    assert built(again) == digests
    # cold: a fresh cache (host base, watchdog, template and a fresh pip install), same digest
    cold = await asyncio.to_thread(cli, "build", "-f", str(project.stack), "--filter", "py", "--no-import",
                                   "--cache-dir", str(project.root / "cold-cache"),
                                   "--output", str(project.root / "cold"))
    assert built(cold) == {"py": digests["py"]}
    project.digests = digests


async def test_deployed_functions_answer(project: Project, daemon: DaemonHandle) -> None:
    assert project.digests, "the build test must run first"
    for name in ("py", "web", "sh"):
        await daemon.deploy_ok(project.deploy_body(name))

    status, body = await daemon.invoke("py", b"hello")  # six came from PyPI, GREETING through ${...}
    assert status == 200 and re.fullmatch(r"py: HELLO six=[\d.]+ greeting=hi from the environment\n",
                                          body.decode()), body

    status, headers, raw = await daemon.raw("POST", "/function/web/items/7?color=red", data=b"payload",
                                            headers={"X-Test": "yes", "Content-Type": "text/plain"})
    assert status == 201, raw
    assert headers["X-Fn"] == "web" and headers["Content-Type"] == "application/json"
    assert json.loads(raw) == {"method": "POST", "path": "/items/7", "query": {"color": "red"},
                               "body": "payload", "test": "yes"}

    status, body = await daemon.invoke("sh", b"abc", path="?q=1")
    assert (status, body) == (200, b"sh: ABC query=q=1\n")

    status, described = await daemon.describe("py")
    assert status == 200 and described["image"] == f"{project.registry}/{REPO}/py:latest"


async def test_build_imports_into_containerd(project: Project, testenv: TestEnv) -> None:
    stack = project.root / "import.yml"
    stack.write_text(f"version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  imp:\n    lang: shell\n"
                     f"    handler: ./sh\n    image: localhost/{REPO}/imp:1\n    namespace: fdpyh-import\n")
    out = await asyncio.to_thread(cli, "build", "-f", str(stack), "--output", str(project.root / "imp"),
                                  "--containerd-socket", testenv.containerd_socket)
    digest = built(out)["imp"]
    assert f"imported localhost/{REPO}/imp:1" in out
    listed = (await asyncio.to_thread(subprocess.run, ["ctr", "-a", testenv.containerd_socket, "-n", "fdpyh-import",
                                                       "images", "ls"], capture_output=True, text=True,
                                      timeout=30)).stdout
    rows = {line.split()[0]: line.split()[2] for line in listed.splitlines()[1:]}
    assert rows[f"localhost/{REPO}/imp:1"] == digest


async def test_build_on_a_base_pulled_from_the_registry(project: Project, daemon: DaemonHandle,
                                                        testenv: TestEnv) -> None:
    base_ref = f"{testenv.registry}/{REPO}/pybase:1"

    def publish_base() -> None:
        layout = project.root / "pybase"
        build_function_image(FunctionSpec(name="pybase", entrypoint=["/usr/bin/python3.11"], exposed_ports=()),
                             layout, base_ref, base=host_python_base(default_cache_dir()))
        push_layout(layout, base_ref, base_ref)

    await asyncio.to_thread(publish_base)
    stack = project.root / "remote.yml"
    stack.write_text(f"version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  py-remote:\n    lang: python3\n"
                     f"    handler: ./py\n    image: {testenv.registry}/{REPO}/py-remote\n")
    out = await asyncio.to_thread(cli, "build", "-f", str(stack), "--push", "--base-image", base_ref,
                                  "--base-python", "/usr/bin/python3.11", "--output", str(project.root / "remote"),
                                  "--cache-dir", str(project.root / "remote-cache"))
    assert "py-remote: pushed" in out, out
    index = json.loads(await asyncio.to_thread((project.root / "remote" / "py-remote" / "index.json").read_text))
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"].endswith("/py-remote:latest")
    await daemon.deploy_ok(project.deploy_body("py-remote", stack))
    status, body = await daemon.invoke("py-remote", b"remote")
    assert status == 200 and body.decode().startswith("py: REMOTE six="), body
