"""The function images the benchmark deploys, built offline and pushed to the loopback registry.

``echo`` (classic watchdog, a process per request) is the test suite's image (tests/images.py);
``http`` (http mode) is the test suite's handler with a larger listen backlog. ``fast`` adds a
handler that costs next to nothing: a single-threaded asyncio server on :8080 with no watchdog in
front, so "direct" is close to the network's own round trip and gateway - direct is the
gateway's cost alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from faasd_py.build import FunctionSpec, build_function_image
from tests.images import HTTP_SERVER_PY, PY, TestImages, push

BODY = "hello world"

FAST_PY = """\
import asyncio, os, signal, sys

LOG = os.environ.get("LOG_EACH") == "1"  # one stderr line per request, like most handlers
DELAY = float(os.environ.get("DELAY_MS", "0")) / 1000  # answer this much later, without using CPU

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\\r\\n\\r\\n")
            if not sep:
                return
            length = 0
            for line in head.split(b"\\r\\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if len(rest) < length:
                return
            body, self.buf = rest[:length], rest[length:]
            if head.startswith(b"GET /_/health"):
                body = b"OK"
            elif LOG:
                sys.stderr.write("fast: %d bytes\\n" % len(body))
                sys.stderr.flush()
            out = (b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n%s"
                   % (len(body), body))
            if DELAY and body != b"OK":
                asyncio.get_running_loop().call_later(DELAY, self.t.write, out)
            else:
                self.t.write(out)

async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, os._exit, 0)  # PID 1: no default action for SIGTERM
    server = await loop.create_server(Echo, "0.0.0.0", int(os.environ.get("port", "8080")), backlog=1024)
    await server.serve_forever()

asyncio.run(main())
"""


_SERVE = "ThreadingHTTPServer(("
# socketserver listens with a backlog of 5: under c=64 the watchdog's new upstream connections
# overflow it and wait out the 1 s SYN retransmit, which measures the test server, not faasd-py
HTTP_BENCH_PY = HTTP_SERVER_PY.replace(_SERVE, "type('Server', (ThreadingHTTPServer,), {'request_queue_size': 1024})((")


def http_spec() -> FunctionSpec:
    if HTTP_BENCH_PY == HTTP_SERVER_PY:
        raise RuntimeError("tests/images.py's http server changed: update bench/images.py's backlog patch")
    return FunctionSpec(name="http", mode="http", fprocess=f"{PY} -S /home/app/server.py",
                        upstream_url="http://127.0.0.1:5000", files={"server.py": HTTP_BENCH_PY})


def fast_spec() -> FunctionSpec:
    return FunctionSpec(name="fast", entrypoint=[PY, "-S", "/home/app/fast.py"], files={"fast.py": FAST_PY})


OWN_SPECS = {"http": http_spec, "fast": fast_spec, "fastlog": fast_spec, "fastidle": fast_spec}
ENV = {"fastlog": {"LOG_EACH": "1"}, "fastidle": {"DELAY_MS": "6"}}


@dataclass(frozen=True)
class BenchImage:
    name: str  # also the function name
    kind: str  # what a reader should know about its handler
    ref: str  # where the daemon pulls it from
    expect: str  # a 200's body must contain this
    env: dict[str, str] = field(default_factory=dict)  # envVars of the deployment


KINDS = {
    "echo": "classic watchdog, forks a Python process per request",
    "http": "http mode, the watchdog proxies to a threaded Python HTTP server (tests' `http` handler, "
            "listen backlog raised from 5 to 1024)",
    "fast": "no watchdog: a single-threaded asyncio echo server",
    "fastlog": "fast, plus one stderr line per request (the log helper forwards it to journald)",
    "fastidle": "fast, answering 6 ms later without using CPU (echo's pace, none of its work)",
}
DEFAULT_NAMES = ("echo", "http", "fast", "fastidle")
NAMES = tuple(KINDS)


def build_and_push(names: tuple[str, ...], workdir: Path, registry: str) -> dict[str, BenchImage]:
    images = TestImages(workdir)
    out: dict[str, BenchImage] = {}
    for name in names:
        spec = OWN_SPECS.get(name)
        if spec is not None:
            built = spec()
            layout = workdir / built.name / "layout"
            ref = f"localhost/faasd-bench/{built.name}:latest"
            build_function_image(built, layout, ref, base=images.base, cache_dir=images.cache_dir)
        else:
            img = images.get(name)
            layout, ref = img.layout, img.ref
        pushed = push(layout, registry, f"faasd-bench/{layout.parent.name}", "v1", ref)
        # http answers JSON with the request body inside; the others echo it
        out[name] = BenchImage(name, KINDS[name], pushed, BODY, ENV.get(name, {}))
    return out
