"""Serve the portal over the fake provider, with a few functions, for looking at it in a browser.

    .venv/bin/python -m tests.ui_demo --port 8099 --password demo
    # then http://admin:demo@127.0.0.1:8099/ui/

Loopback only. Functions answer from a small in-process watchdog; one is scaled to zero and wakes on
its first call, one never becomes ready, and nodeinfo writes a log line every second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import tempfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from faasd_py.gateway.app import build_app, serve
from faasd_py.gateway.auth import Credentials
from faasd_py.provider.contract import Endpoint
from faasd_py.types import (
    FunctionDeployment,
    FunctionNamespace,
    FunctionResources,
    FunctionStatus,
    LogMessage,
    ScaleServiceRequest,
    Secret,
)
from tests.fakes import FakeFunctions, FakeNamespaces, FakeProvider, Key
from tests.unit.gateway_support import make_settings

WAKE_SECONDS = 1.5


class DemoFunctions(FakeFunctions):
    """FakeFunctions whose replica counts follow scale calls, and which wake from zero on resolve."""

    def __init__(self, namespaces: FakeNamespaces) -> None:
        super().__init__(namespaces)
        self.replicas: dict[Key, int] = {}
        self.parked: dict[Key, Endpoint] = {}  # where a scaled-to-zero function listens once woken

    def _status(self, key: Key) -> FunctionStatus:
        replicas = self.replicas.get(key, 1)
        ready = replicas if key in self.endpoints else 0
        return FunctionStatus(
            self.deployments[key],
            replicas=replicas,
            available_replicas=ready,
            invocation_count=self.invocations.get(key, 0.0),
            created_at=self.created_at.get(key),
        )

    async def scale(self, request: ScaleServiceRequest) -> None:
        await super().scale(request)
        key = (request.service_name, request.namespace)
        self.replicas[key] = request.replicas
        if request.replicas == 0 and key in self.endpoints:
            self.parked[key] = self.endpoints.pop(key)
        elif request.replicas > 0 and key in self.parked:
            self.endpoints[key] = self.parked.pop(key)

    async def resolve(self, name: str, namespace: str) -> Endpoint:
        key = self._require(name, namespace)
        if self.replicas.get(key, 1) == 0 and key in self.parked:
            await asyncio.sleep(WAKE_SECONDS)
            self.replicas[key] = 1
            self.endpoints[key] = self.parked.pop(key)
        return await super().resolve(name, namespace)


def _png(width: int = 8, height: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 30 % 256, y * 30 % 256, 200)) for y in range(height)
    )
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


async def watchdog(request: web.Request) -> web.Response:
    """What the demo functions answer: a greeting, or a JSON echo."""
    body = await request.read()
    headers = {"X-Duration-Seconds": "0.003141"}
    if request.content_type == "application/json":
        try:
            parsed = json.loads(body or b"null")
        except json.JSONDecodeError:
            return web.Response(status=400, text="bad JSON\n", headers=headers)
        return web.json_response({"received": parsed, "method": request.method, "path": request.path_qs},
                                 headers=headers)
    text = body.decode(errors="replace").strip() or "world"
    return web.Response(text=f"Hello, {text}!\n", headers=headers)


async def png_function(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_png(), content_type="image/png", headers={"X-Duration-Seconds": "0.000812"})


def populate(provider: FakeProvider, functions: DemoFunctions, endpoint: Endpoint, png: Endpoint) -> None:
    provider.fake_namespaces.items["staging"] = FunctionNamespace("staging", labels={"openfaas": "1"})
    now = datetime.now(UTC)
    specs = [
        FunctionDeployment(
            service="nodeinfo", image="ghcr.io/openfaas/nodeinfo:latest", env_process="node index.js",
            env_vars={"write_debug": "true", "read_timeout": "10s"}, secrets=["api-key"],
            labels={"com.openfaas.scale.min": "1", "team": "platform"},
            annotations={"topic": "cron-function", "schedule": "*/5 * * * *"},
            limits=FunctionResources(memory="128Mi", cpu="200m"),
        ),
        FunctionDeployment(service="figlet", image="ghcr.io/openfaas/figlet:latest", env_process="figlet"),
        FunctionDeployment(service="sentiment-analysis", image="ghcr.io/openfaas/sentimentanalysis:latest",
                           labels={"com.openfaas.scale.zero": "true"}, read_only_root_filesystem=True),
        FunctionDeployment(service="qrcode-go", image="ghcr.io/alexellis/qrcode-go:latest",
                           labels={"com.openfaas.ui.ext": "png"}),
        FunctionDeployment(service="env", image="ghcr.io/openfaas/alpine:latest", env_process="env"),
        FunctionDeployment(service="hello-staging", image="ghcr.io/openfaas/alpine:latest", namespace="staging",
                           env_process="cat"),
    ]
    for i, dep in enumerate(specs):
        ep = None if dep.service == "env" else (png if dep.service == "qrcode-go" else endpoint)
        functions.add(dep, ep)
        functions.created_at[(dep.service, dep.namespace)] = now - timedelta(hours=3 * i + 1, minutes=7)
    functions.invocations[("nodeinfo", "openfaas-fn")] = 1234
    functions.invocations[("figlet", "openfaas-fn")] = 42
    key = ("sentiment-analysis", "openfaas-fn")
    functions.replicas[key] = 0
    functions.parked[key] = functions.endpoints.pop(key)
    functions.replicas[("env", "openfaas-fn")] = 1
    for name in ("api-key", "db-password"):
        provider.fake_secrets.items[(name, "openfaas-fn")] = Secret(name, "openfaas-fn", b"x")
    for i in range(30):
        provider.fake_logs.history.append(LogMessage(
            "nodeinfo", "openfaas-fn", "nodeinfo-1a2b3c", now - timedelta(seconds=60 - i),
            f"2026/01/02 forked process {i}: GET /  <script>alert('not markup')</script> 200 in {i % 7} ms"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--password", default="demo")
    args = parser.parse_args()

    wd_app = web.Application()
    wd_app.router.add_route("*", "/{tail:.*}", watchdog)
    wd_runner = web.AppRunner(wd_app, access_log=None)
    await wd_runner.setup()
    wd_site = web.TCPSite(wd_runner, "127.0.0.1", 0)
    await wd_site.start()
    wd_port = wd_runner.addresses[0][1]

    png_app = web.Application()
    png_app.router.add_route("*", "/{tail:.*}", png_function)
    png_runner = web.AppRunner(png_app, access_log=None)
    await png_runner.setup()
    await web.TCPSite(png_runner, "127.0.0.1", 0).start()
    png_port = png_runner.addresses[0][1]

    with tempfile.TemporaryDirectory(prefix="faasd-ui-demo-") as tmp:
        settings = make_settings(Path(tmp))
        settings.password_file.write_text(args.password + "\n")
        provider = FakeProvider()
        functions = DemoFunctions(provider.fake_namespaces)
        provider.fake_functions = functions
        provider.functions = functions
        populate(provider, functions, Endpoint("127.0.0.1", wd_port, "demo-1"), Endpoint("127.0.0.1", png_port, "png"))
        runner = await serve(build_app(provider, settings, Credentials.load(settings)), "127.0.0.1", args.port)
        print(f"http://admin:{args.password}@127.0.0.1:{args.port}/ui/", flush=True)
        try:
            n = 0
            while True:
                await asyncio.sleep(1)
                n += 1
                provider.fake_logs.push(LogMessage("nodeinfo", "openfaas-fn", "nodeinfo-1a2b3c", datetime.now(UTC),
                                                   f"tick {n}: still alive"))
        finally:
            await runner.cleanup()
            await wd_runner.cleanup()
            await png_runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
