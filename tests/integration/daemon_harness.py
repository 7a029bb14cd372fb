"""Run the real daemon in-process against the session's containerd, registry and CNI.

The daemon is built exactly as ``faasd-py up`` builds it (faasd_py.daemon.build); only the
settings point at the test infrastructure. Tests talk to it over HTTP like faas-cli does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from faasd_py.config import Settings
from faasd_py.daemon import Daemon, build
from faasd_py.gateway.app import serve
from tests.infra import TestEnv, free_port


def settings_for(env: TestEnv, state: Path) -> Settings:
    s = Settings(
        state_dir=state / "state",
        run_dir=state / "run",
        containerd_socket=env.containerd_socket,
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
    )
    s.network.bridge = env.bridge
    s.network.subnet = env.subnet
    s.network.netns_prefix = env.netns_prefix
    s.network.ipam_dir = str(state / "ipam")
    s.network.nameservers = ["127.0.0.1"]  # functions resolve nothing outside in tests
    s.timeouts.stop_grace = 2.0
    s.timeouts.ready = 20.0
    s.timeouts.invoke_wait = 20.0
    return s


@dataclass
class DaemonHandle:
    settings: Settings
    daemon: Daemon | None = None
    runner: web.AppRunner | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def auth(self) -> dict[str, str]:
        password = self.settings.password_file.read_text().strip()
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def start(self) -> None:
        self.daemon = await build(self.settings)
        self.runner = await serve(self.daemon.app, self.settings.host, self.settings.port)
        self.tasks = [asyncio.create_task(self.daemon.functions.run_events())]
        await self.daemon.functions.restore()

    async def stop(self) -> None:
        """What SIGTERM does: stop serving, leave the functions running."""
        if self.runner is not None:
            await self.runner.cleanup()
        for t in self.tasks:
            t.cancel()
        if self.daemon is not None:
            await self.daemon.functions.close()
            self.daemon.logs.close()
            with contextlib.suppress(Exception):
                await self.daemon.registry.close()
            await self.daemon.client.close()
        self.daemon = None
        self.runner = None

    async def settle(self) -> None:
        assert self.daemon is not None
        await self.daemon.functions.settle()

    # --- faas-cli's requests ----------------------------------------------------------------

    async def request(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> tuple[int, bytes]:
        headers = dict(kw.pop("headers", {}))
        if auth:
            headers.update(self.auth)
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, headers=headers, **kw) as r:
            return r.status, await r.read()

    async def deploy(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """faas-cli deploy: PUT, and POST only if the PUT says 404."""
        status, text = await self.request("PUT", "/system/functions", json=body)
        if status == 404:
            status, text = await self.request("POST", "/system/functions", json=body)
        return status, text
