"""Function images that only the tenancy and logs tests need, built with faasd_py.build (offline,
as tests/images.py builds the common ones) and pushed to the session's registry.

    reader  classic watchdog: reads /var/openfaas/secrets/<?name=, default s1> and answers JSON
            {"value": hex, "uid", "gid", "mode", "write": "ok" | errno name, "me": its own uid,
             "listing": the directory's entries} (or {"error": errno name})
    logger  http-mode watchdog: the upstream prints the POSTed JSON {"stdout": [...], "stderr": [...]}
            line by line to its stdout/stderr, which the watchdog copies to its own
    rawlog  no watchdog: a plain server on :8080 that writes request bodies to fd 1/2 byte for byte
            (POST /write?fd=N), floods fd 1 on demand (POST /flood?mb=N&line=BYTES, then
            GET /flood answers "running" or "done <lines> <seconds>") and answers anything else 200
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from faasd_py.build import FunctionSpec, build_function_image, host_python_base, push_layout_async
from tests.images import PY
from tests.infra import TestEnv

READER_PY = """\
import errno, json, os, sys
q = dict(p.partition("=")[::2] for p in os.environ.get("Http_Query", "").split("&") if p)
path = "/var/openfaas/secrets/" + q.get("name", "s1")
out = {"me": os.getuid()}
try:
    out["listing"] = sorted(os.listdir("/var/openfaas/secrets"))
except OSError as e:
    out["listing"] = errno.errorcode.get(e.errno, str(e.errno))
try:
    with open(path, "rb") as f:
        out["value"] = f.read().hex()
    st = os.stat(path)
    out.update(uid=st.st_uid, gid=st.st_gid, mode=oct(st.st_mode & 0o7777))
    try:
        os.close(os.open(path, os.O_WRONLY))
        out["write"] = "ok"
    except OSError as e:
        out["write"] = errno.errorcode.get(e.errno, str(e.errno))
except OSError as e:
    out["error"] = errno.errorcode.get(e.errno, str(e.errno))
sys.stdout.write(json.dumps(out))
"""

LOGGER_PY = """\
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        for stream, lines in (("stdout", body.get("stdout", [])), ("stderr", body.get("stderr", []))):
            f = getattr(sys, stream)
            for line in lines:
                f.write(line + "\\n")
            f.flush()
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")

    do_GET = do_POST

    def log_message(self, fmt, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", 5000), Handler).serve_forever()
"""

RAWLOG_PY = """\
import os, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

flood = {"state": "idle"}

def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

def run_flood(mb, line):
    t0 = time.monotonic()
    chunk = (b"z" * (line - 1) + b"\\n") * max(1, (1 << 20) // line)
    lines = 0
    for _ in range(mb):
        write_all(1, chunk)
        lines += chunk.count(b"\\n")
    flood["state"] = f"done {lines} {time.monotonic() - t0:.3f}"

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, text):
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        path, _, query = self.path.partition("?")
        q = dict(p.partition("=")[::2] for p in query.split("&") if p)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/write":
            write_all(int(q.get("fd", "1")), body)
            return self._reply("written")
        if path == "/flood":
            flood["state"] = "running"
            threading.Thread(target=run_flood, args=(int(q.get("mb", "1")), int(q.get("line", "1024"))),
                             daemon=True).start()
            return self._reply("started")
        self._reply("raw ok")

    def do_GET(self):
        self._reply(flood["state"] if self.path.startswith("/flood") else "raw ok")

    def log_message(self, fmt, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

SPECS = {
    "reader": lambda: FunctionSpec(name="reader", fprocess=f"{PY} -S /home/app/reader.py",
                                   files={"reader.py": READER_PY}),
    "logger": lambda: FunctionSpec(name="logger", mode="http", fprocess=f"{PY} -S -u /home/app/logger.py",
                                   upstream_url="http://127.0.0.1:5000", files={"logger.py": LOGGER_PY}),
    "rawlog": lambda: FunctionSpec(name="rawlog", entrypoint=[PY, "-S", "/home/app/rawlog.py"],
                                   files={"rawlog.py": RAWLOG_PY}),
}


async def build_and_push(env: TestEnv, workdir: Path, name: str, tag: str = "v1") -> str:
    """Builds image ``name`` and pushes it as ``<registry>/faasd-tenancy/<name>:<tag>``."""
    ref = f"localhost/faasd-tenancy/{name}:{tag}"
    layout = workdir / name
    await asyncio.to_thread(build_function_image, SPECS[name](), layout, ref, base=host_python_base())
    destination = f"{env.registry}/faasd-tenancy/{name}:{tag}"
    await push_layout_async(layout, destination, ref, insecure=True)
    return destination
