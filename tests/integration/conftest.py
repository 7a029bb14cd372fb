"""Fixtures of the end-to-end tests (test_e2e_*.py): the daemon, driven over HTTP like faas-cli.

* ``images``: the test images (tests/images.py), each built and pushed to the session's registry
  at most once per session, on first use;
* ``daemon``: one in-process daemon per module on a state directory shared by the whole session
  (so every module sees the same IPAM and CNI state); at module end every function left is
  deleted through the API and the fixture fails if anything of it stays behind;
* ``inspect``: looks at containerd, the netns, the IPAM files and the bridge directly.
"""

from __future__ import annotations

import concurrent.futures
import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faasd_py.runtime.client import ContainerdClient
from tests.images import TestImages, push
from tests.infra import TestEnv
from tests.integration.daemon_harness import DaemonHandle, Inspector, settings_for

REPO = "faasd-test"
TAG = "e2e"


class PushedImages:
    """Image name (tests/images.py) -> reference in the session's registry, pushed on first use."""

    def __init__(self, env: TestEnv, workdir: Path) -> None:
        self._env = env
        self._built = TestImages(workdir)
        self._refs: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        if name not in self._refs:
            self._refs[name] = self._push(name, name)
        return self._refs[name]

    def _push(self, name: str, repo: str) -> str:
        """Build and push; in a worker thread, because the push runs its own event loop and the
        callers are coroutines on the session loop (blocking it for a moment is fine here)."""
        img = self._built.get(name)

        def work() -> str:
            with warnings.catch_warnings():
                # the pusher hands aiohttp whole layers as bytes; harmless in a throwaway loop
                warnings.filterwarnings("ignore", "Sending a large body directly", ResourceWarning)
                return push(img.layout, self._env.registry, f"{REPO}/{repo}", TAG, img.ref)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(work).result()

    def push_as(self, name: str, repo: str) -> str:
        """Image ``name`` under another repository name (one no other test pulls)."""
        return self._push(name, repo)

    def missing(self, name: str = "does-not-exist") -> str:
        """A reference the registry answers 404 for."""
        return f"{self._env.registry}/{REPO}/{name}:{TAG}"


@pytest.fixture(scope="session")
def images(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> PushedImages:
    return PushedImages(testenv, tmp_path_factory.mktemp("e2e-images"))


@pytest.fixture(scope="session")
def e2e_state(testenv: TestEnv) -> Path:
    return testenv.path / "e2e-daemon"


@pytest.fixture(scope="session")
async def ctd(testenv: TestEnv) -> AsyncIterator[ContainerdClient]:
    """A containerd client of the tests' own, independent of the daemon's."""
    client = ContainerdClient(testenv.containerd_socket)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def daemon(testenv: TestEnv, e2e_state: Path, ctd: ContainerdClient) -> AsyncIterator[DaemonHandle]:
    handle = DaemonHandle(settings_for(testenv, e2e_state))
    await handle.start()
    try:
        yield handle
    finally:
        await remove_everything(handle, Inspector(testenv, handle.settings, ctd))


@pytest.fixture(scope="module")
def inspect(testenv: TestEnv, daemon: DaemonHandle, ctd: ContainerdClient) -> Inspector:
    return Inspector(testenv, daemon.settings, ctd)


async def remove_everything(handle: DaemonHandle, inspector: Inspector) -> None:
    """Module teardown: delete what a (possibly failed) test left, through the API, and check that
    it really went; then stop the daemon like SIGTERM does."""
    if handle.daemon is None:  # a test stopped it and failed before starting it again
        await handle.start()
    status, body = await handle.request("GET", "/system/namespaces")
    assert status == 200, body
    namespaces: list[str] = json.loads(body)
    removed: list[tuple[str, str]] = []
    for ns in namespaces:
        for fn in await handle.list(ns):
            status, body = await handle.remove(fn["name"], ns)
            assert status == 202, (fn["name"], ns, status, body)
            removed.append((fn["name"], ns))
    await handle.settle()
    left: list[str] = []
    for name, ns in removed:
        left += await inspector.settled(name, ns)
    await handle.stop()
    assert not left, f"left behind after deleting every function: {left}"

