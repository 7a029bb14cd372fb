"""Templates (faasd_py/templates, faasd_py.build.template): what they contain, how their programs
behave (run with the host's interpreter, laid out as in the image), ``faasd-py new``, the
requirements layer and the image a stack function becomes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from faasd_py.build import Base, default_cache_dir, host_python_base, image_config, unpack
from faasd_py.build.requirements import has_requirements, requirements_layer
from faasd_py.build.stack import load_stack
from faasd_py.build.stackbuild import BuildOptions, build_stack, function_spec
from faasd_py.build.template import (
    TEMPLATES_DIR,
    available,
    load_template,
    new_function,
    template_entries,
)
from faasd_py.cli import main
from faasd_py.errors import Conflict, ImageError, InvalidRequest
from tests.infra import free_port

PYTHON = "/usr/bin/python3.11"
pytestmark = pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"{PYTHON} not installed")


@pytest.fixture(scope="module")
def base() -> Base:
    return host_python_base(default_cache_dir())


def test_the_three_templates() -> None:
    assert available() == ["python3", "python3-http", "shell"]
    py = load_template("python3")
    assert (py.fprocess, py.mode, py.handler_path, py.requirements) == ("python3 index.py", "classic", "function",
                                                                        "requirements.txt")
    web = load_template("python3-http")
    assert (web.fprocess, web.mode, web.upstream_url) == ("python3 index.py", "http", "http://127.0.0.1:5000")
    sh = load_template("shell")
    assert (sh.fprocess, sh.mode, sh.handler_path, sh.requirements) == ("./handler.sh", "classic", ".", "")
    assert "/bin/sh" in sh.host_tools and "true" in sh.host_tools  # quoted in YAML, not a boolean
    # what faas-cli reads from template.yml: language and fprocess
    for lang in available():
        data = yaml.safe_load((TEMPLATES_DIR / lang / "template.yml").read_text())
        assert data["language"] == lang and data["fprocess"]


def test_unknown_template() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown template language 'go' \(available: python3, python3-http"):
        load_template("go")
    with pytest.raises(InvalidRequest, match="unknown template language"):
        load_template("../templates/python3")


def test_template_layer_entries(base: Base) -> None:
    py = {e.path: e for e in template_entries(load_template("python3"), base)}
    assert py["/home/app/index.py"].data == (TEMPLATES_DIR / "python3" / "index.py").read_bytes()
    assert "/home/app/__pycache__/index.cpython-311.pyc" in py
    assert not any("function" in p for p in py)  # the scaffold handler is not part of the image
    assert (py["/home/app"].uid, py["/home/app"].gid) == (12000, 12000)  # the workdir stays the app user's
    sh = {e.path: e for e in template_entries(load_template("shell"), base)}
    assert sh["/bin"].kind == "symlink" and sh["/usr/bin/dash"].kind == "file"
    assert sh["/usr/bin/cat"].source is not None
    assert not any(p.endswith("/libc.so.6") for p in sh)  # the base has the interpreter's libraries


# --- the template programs, laid out as in the image ------------------------------------------


def _layout(tmp_path: Path, lang: str, handler: str, packages: dict[str, str] | None = None) -> Path:
    app = tmp_path / "app"
    (app / "function").mkdir(parents=True)
    shutil.copy(TEMPLATES_DIR / lang / "index.py", app / "index.py")
    (app / "function" / "handler.py").write_text(handler)
    for name, text in (packages or {}).items():
        (app / "python").mkdir(exist_ok=True)
        (app / "python" / name).write_text(text)
    return app


def test_python3_index_calls_handle_with_the_body(tmp_path: Path) -> None:
    app = _layout(tmp_path, "python3", "import helper\ndef handle(req):\n    return helper.shout(req)\n",
                  {"helper.py": "def shout(s):\n    return s.upper() + '!'\n"})
    out = subprocess.run([PYTHON, "index.py"], cwd=app, input=b"hello \xc3\xa9", capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "HELLO É!\n".encode()


def test_python3_index_none_and_bytes(tmp_path: Path) -> None:
    app = _layout(tmp_path, "python3", "def handle(req):\n    return None if req == 'none' else b'\\x00raw'\n")
    for body, want in ((b"none", b""), (b"x", b"\x00raw")):
        out = subprocess.run([PYTHON, "index.py"], cwd=app, input=body, capture_output=True, timeout=30)
        assert (out.returncode, out.stdout) == (0, want), out.stderr


def test_python3_index_exception_fails_the_process(tmp_path: Path) -> None:
    app = _layout(tmp_path, "python3", "def handle(req):\n    raise ValueError('bad input')\n")
    out = subprocess.run([PYTHON, "index.py"], cwd=app, input=b"x", capture_output=True, timeout=30)
    assert out.returncode != 0 and b"ValueError: bad input" in out.stderr


WEB_HANDLER = """\
import json
def handle(event, context):
    if event.path == "/text":
        return "plain text"
    if event.path == "/boom":
        raise RuntimeError("boom")
    if event.path == "/json":
        return {"statusCode": 202, "body": {"ok": True}}
    return {
        "statusCode": 201,
        "headers": {"X-Fn": "web", "Content-Type": "application/json"},
        "body": json.dumps({"method": event.method, "path": event.path, "query": event.query,
                            "body": event.body.decode(), "test": event.headers.get("x-test"),
                            "host": context.hostname}),
    }
"""


@pytest.fixture
def web(tmp_path: Path) -> Iterator[int]:
    app = _layout(tmp_path, "python3-http", WEB_HANDLER)
    port = free_port()
    env = {"upstream_url": f"http://127.0.0.1:{port}", "HOSTNAME": "web-1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([PYTHON, "index.py"], cwd=app, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "upstream did not start"
                time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def _call(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_python3_http_event_and_response(web: int) -> None:
    status, headers, body = _call(web, "PUT", "/items/1?q=a&q=b&flag=", b"payload", {"X-Test": "yes"})
    assert status == 201
    assert headers["X-Fn"] == "web" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"method": "PUT", "path": "/items/1", "query": {"q": "a", "flag": ""},
                                "body": "payload", "test": "yes", "host": "web-1"}
    assert _call(web, "GET", "/text")[::2] == (200, b"plain text")
    status, headers, body = _call(web, "POST", "/json")
    assert (status, headers["Content-Type"], json.loads(body)) == (202, "application/json", {"ok": True})
    status, _, body = _call(web, "GET", "/boom")
    assert (status, body) == (500, b"Internal Server Error\n")
    assert _call(web, "HEAD", "/text")[::2] == (200, b"")


def test_python3_http_reads_chunked_bodies_and_keeps_connections(web: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", web, timeout=10)
    try:
        conn.request("POST", "/", body=iter([b"chunk-1 ", b"chunk-2"]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        first = conn.getresponse()
        assert json.loads(first.read())["body"] == "chunk-1 chunk-2"
        conn.request("POST", "/", body=b"again")  # same connection: HTTP/1.1 keep-alive
        assert json.loads(conn.getresponse().read())["body"] == "again"
    finally:
        conn.close()


def test_shell_handler_is_a_filter(tmp_path: Path) -> None:
    script = TEMPLATES_DIR / "shell" / "function" / "handler.sh"
    assert os.access(script, os.X_OK) or script.read_bytes().startswith(b"#!")
    out = subprocess.run(["sh", str(script)], input=b"echo me", capture_output=True, timeout=10)
    assert out.stdout == b"echo me"


# --- faasd-py new -----------------------------------------------------------------------------


def test_new_writes_handler_stack_and_faas_cli_template(tmp_path: Path) -> None:
    made = new_function("hello", "python3", tmp_path, prefix="127.0.0.1:5000/team/")
    assert (tmp_path / "hello" / "handler.py").read_text() == (
        TEMPLATES_DIR / "python3" / "function" / "handler.py").read_text()
    assert (tmp_path / "hello" / "requirements.txt").exists()
    assert made.stack_file == tmp_path / "hello.yml"
    assert made.image == "127.0.0.1:5000/team/hello:latest"
    assert yaml.safe_load(made.stack_file.read_text()) == {
        "version": 1.0,
        "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
        "functions": {"hello": {"lang": "python3", "handler": "./hello", "image": "127.0.0.1:5000/team/hello:latest"}},
    }
    # faas-cli deploy takes fprocess from ./template/<lang>/template.yml when the stack has none
    tpl = yaml.safe_load((tmp_path / "template" / "python3" / "template.yml").read_text())
    assert tpl["fprocess"] == "python3 index.py"
    stack = load_stack(made.stack_file)
    assert stack.functions["hello"].handler == "./hello"


def test_new_append_and_refusals(tmp_path: Path) -> None:
    first = new_function("one", "python3", tmp_path)
    before = first.stack_file.read_text()
    second = new_function("two", "shell", tmp_path, append=first.stack_file)
    assert second.stack_file == first.stack_file
    assert first.stack_file.read_text().startswith(before)
    assert list(load_stack(first.stack_file).functions) == ["one", "two"]
    script = tmp_path / "two" / "handler.sh"
    assert script.stat().st_mode & 0o111  # executable: it is the fprocess
    assert not (tmp_path / "two" / "requirements.txt").exists()
    with pytest.raises(Conflict, match="already exists; not overwriting"):
        new_function("one", "python3", tmp_path)
    (tmp_path / "three.yml").write_text("keep me")
    with pytest.raises(Conflict, match=r"three\.yml already exists; use --append"):
        new_function("three", "python3", tmp_path)
    assert (tmp_path / "three.yml").read_text() == "keep me" and not (tmp_path / "three").exists()
    shutil.rmtree(tmp_path / "two")
    with pytest.raises(InvalidRequest, match="function 'two' already exists"):
        new_function("two", "python3", tmp_path, append=first.stack_file)
    with pytest.raises(InvalidRequest, match="cannot append to"):
        new_function("four", "python3", tmp_path, append=tmp_path / "missing.yml")
    with pytest.raises(InvalidRequest, match="DNS-1123"):
        new_function("Bad_Name", "python3", tmp_path)


def test_new_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["new", "--list"])
    assert capsys.readouterr().out.split() == ["python3", "python3-http", "shell"]
    main(["new", "fn", "--lang", "python3-http", "--dir", str(tmp_path), "--prefix", "reg.local"])
    out = capsys.readouterr().out
    assert f"Stack file written: {tmp_path / 'fn.yml'}" in out
    assert load_stack(tmp_path / "fn.yml").functions["fn"].image == "reg.local/fn:latest"
    with pytest.raises(SystemExit) as exit_info:
        main(["new", "fn", "--lang", "python3-http", "--dir", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "already exists" in capsys.readouterr().err


# --- requirements -----------------------------------------------------------------------------


def _wheel(directory: Path, name: str = "demo", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, so pip installs offline."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def record_line(n: str, data: str) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b"=").decode()
        return f"{n},sha256={digest},{len(data)}"

    record = "\n".join(record_line(n, d) for n, d in files.items()) + f"\n{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in {**files, f"{info}/RECORD": record}.items():
            z.writestr(n, d)
    return path


def test_has_requirements(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    assert not has_requirements(req)
    req.write_text("\n# nothing yet\n   \n")
    assert not has_requirements(req)
    req.write_text("six  # small\n")
    assert has_requirements(req)


def test_requirements_layer_is_reproducible_and_cached(tmp_path: Path, base: Base) -> None:
    wheel = _wheel(tmp_path / "wheels")
    req = tmp_path / "fn" / "requirements.txt"
    req.parent.mkdir()
    req.write_text(f"{os.path.relpath(wheel, req.parent)}\n")  # relative to the handler directory
    env = {"PIP_NO_INDEX": "1"}
    one = requirements_layer(req, base, "/home/app/python", tmp_path / "cache1", env=env)
    two = requirements_layer(req, base, "/home/app/python", tmp_path / "cache2", env=env)  # cold again
    assert one is not None and two is not None
    assert (one.digest, one.diff_id) == (two.digest, two.diff_id)
    with tarfile.open(one.path) as t:
        members = {m.name: m for m in t.getmembers()}
    assert "home/app/python/demo.py" in members
    assert "home/app/python/__pycache__/demo.cpython-311.pyc" in members
    assert "home/app/python/demo-1.0.dist-info/RECORD" in members
    assert all(m.mtime == 0 and m.uid in (0, 12000) for m in members.values())
    # warm: served from the cache, pip does not run (it would fail without the wheel)
    wheel.unlink()
    assert requirements_layer(req, base, "/home/app/python", tmp_path / "cache1", env=env) == one
    with pytest.raises(ImageError, match=r"pip install -r .* failed"):
        requirements_layer(req, base, "/home/app/python", tmp_path / "cache1", env=env, refresh=True)
    req.write_text("# nothing\n")
    assert requirements_layer(req, base, "/home/app/python", tmp_path / "cache1", env=env) is None


# --- a stack function as an image -------------------------------------------------------------


def test_function_spec_from_stack(tmp_path: Path, base: Base) -> None:
    new_function("py", "python3", tmp_path)
    new_function("sh", "shell", tmp_path, append=tmp_path / "py.yml")
    text = (tmp_path / "py.yml").read_text().replace(
        "    image: py:latest\n", "    image: py:latest\n    environment: {GREETING: hi}\n    labels: {team: a}\n")
    (tmp_path / "py.yml").write_text(text + "    fprocess: ./other.sh\n")
    stack = load_stack(tmp_path / "py.yml")
    py = function_spec(stack.functions["py"], load_template("python3"), tmp_path / "py", base)
    assert (py.fprocess, py.mode, py.handler_dir) == ("python3 index.py", "classic", None)
    assert set(py.files) == {"function/handler.py", "function/requirements.txt",
                             "/home/app/function/__pycache__/handler.cpython-311.pyc"}
    assert (dict(py.env), dict(py.labels)) == ({"GREETING": "hi"}, {"team": "a"})
    sh = function_spec(stack.functions["sh"], load_template("shell"), tmp_path / "sh", base)
    assert (sh.fprocess, sh.handler_dir, dict(sh.files)) == ("./other.sh", tmp_path / "sh", {})


def test_build_stack_layers_config_and_reproducibility(tmp_path: Path, base: Base) -> None:
    new_function("web", "python3-http", tmp_path, prefix="127.0.0.1:5000/t")
    wheel = _wheel(tmp_path / "wheels")
    (tmp_path / "web" / "requirements.txt").write_text(f"{wheel}\n")
    text = (tmp_path / "web.yml").read_text()
    (tmp_path / "web.yml").write_text(text + "    environment: {A: '1', mode: http}\n    labels: {team: web}\n"
                                             "    build_args: {PIP_NO_INDEX: '1'}\n")
    stack = load_stack(tmp_path / "web.yml")
    opts = BuildOptions(output=tmp_path / "out")
    [first] = build_stack(stack, options=opts, base=base)
    assert first.image == "127.0.0.1:5000/t/web:latest" and first.layout == tmp_path / "out" / "web"
    config = image_config(first.layout, first.image)
    history = [h["created_by"] for h in config["history"]]
    assert history[-4:] == ["faasd-py build: watchdog", "faasd-py build: template python3-http",
                            "faasd-py build: requirements of web", "faasd-py build: function web"]
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert (env["fprocess"], env["mode"], env["upstream_url"], env["A"]) == (
        "python3 index.py", "http", "http://127.0.0.1:5000", "1")
    assert config["config"]["Labels"]["team"] == "web"
    assert config["config"]["User"] == "12000:12000" and config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    [again] = build_stack(stack, options=opts, base=base)
    assert again.digest == first.digest  # same inputs, same digest
    rootfs = unpack(first.layout, tmp_path / "rootfs", first.image)
    assert rootfs["config"]["WorkingDir"] == "/home/app"
    app = tmp_path / "rootfs" / "home" / "app"
    assert (app / "index.py").exists() and (app / "function" / "handler.py").exists()
    assert (app / "python" / "demo.py").read_text() == "VERSION = '1.0'\n"
    (tmp_path / "web" / "handler.py").write_text("def handle(event, context):\n    return 'changed'\n")
    [changed] = build_stack(stack, options=opts, base=base)
    assert changed.digest != first.digest


def test_build_refuses_unbuildable_functions(tmp_path: Path, base: Base) -> None:
    (tmp_path / "s.yml").write_text("provider: {name: openfaas}\nfunctions:\n"
                                    "  d: {lang: dockerfile, handler: ./d, image: d}\n")
    with pytest.raises(InvalidRequest, match="lang dockerfile needs Docker"):
        build_stack(load_stack(tmp_path / "s.yml"), base=base)
    (tmp_path / "s.yml").write_text("provider: {name: openfaas}\nfunctions:\n"
                                    "  p: {lang: python3, handler: ./nowhere, image: p}\n"
                                    "  q: {image: q, skip_build: true}\n")
    with pytest.raises(InvalidRequest, match=r"handler directory .*nowhere does not exist"):
        build_stack(load_stack(tmp_path / "s.yml"), options=BuildOptions(output=tmp_path / "o"), base=base)
    assert build_stack(load_stack(tmp_path / "s.yml"), "q", base=base) == []
    (tmp_path / "out" / "p").mkdir(parents=True)
    (tmp_path / "out" / "p" / "precious.txt").write_text("x")
    (tmp_path / "p").mkdir()
    (tmp_path / "s.yml").write_text("provider: {name: openfaas}\nfunctions:\n"
                                    "  p: {lang: python3, handler: ./p, image: p}\n")
    with pytest.raises(InvalidRequest, match="is not an OCI layout; not overwriting"):
        build_stack(load_stack(tmp_path / "s.yml"), "p", BuildOptions(output=tmp_path / "out"), base=base)


def test_build_cli_without_import(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAASD_PY_BUILD_CACHE", str(default_cache_dir()))  # not mistaken for a setting
    new_function("cli", "python3", tmp_path)
    with contextlib.chdir(tmp_path):
        main(["build", "-f", "cli.yml", "--no-import"])
    out = capsys.readouterr().out
    assert out.startswith("cli: docker.io/library/cli:latest sha256:")
    assert (tmp_path / "build" / "cli" / "index.json").exists()


def test_build_cli_reports_a_missing_containerd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new_function("cli", "python3", tmp_path)
    main(["build", "-f", str(tmp_path / "cli.yml"), "--output", str(tmp_path / "o"),
          "--containerd-socket", str(tmp_path / "no.sock")])
    captured = capsys.readouterr()
    assert "cli: docker.io/library/cli:latest sha256:" in captured.out
    assert "not imported: containerd socket" in captured.err and "--no-import" in captured.err
