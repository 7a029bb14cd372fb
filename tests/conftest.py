"""Session fixtures: one real containerd + registry + journald (tests.infra.TestEnv) per session.

Integration tests (everything under tests/integration, marked ``integration`` automatically) get
it through the ``testenv`` fixture. They are skipped only when the machine cannot run them (not
root, binaries missing); with ``CI=true`` or ``FDPY_REQUIRE_INTEGRATION=1`` that is an error
instead, so CI can never go green by skipping. After teardown the fixture checks that nothing
leaked (netns, bridge, processes, mounts, iptables rules) and fails the session if something did.

Env overrides, so several engineers can run sessions side by side on one machine:
FDPY_TEST_DIR, FDPY_TEST_BRIDGE, FDPY_TEST_SUBNET, FDPY_TEST_NETNS_PREFIX.
Every test also has a time limit (tests/timeouts.py: FDPY_TEST_TIMEOUT, @pytest.mark.timeout).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests import timeouts
from tests.infra import TestEnv, missing_prerequisite
from tests.timeouts import pytest_runtest_protocol  # noqa: F401 - a hook: pytest finds it by name here

INTEGRATION_DIR = Path(__file__).parent / "integration"


def integration_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("FDPY_REQUIRE_INTEGRATION") == "1"


def pytest_configure(config: pytest.Config) -> None:
    timeouts.pytest_configure(config)
    # A CI timeout or `kill` sends SIGTERM: turn it into KeyboardInterrupt so pytest still runs
    # the fixture teardown (containerd, netns, bridge) instead of dying with everything left up.
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def _new_env() -> TestEnv:
    env = TestEnv(dir=os.environ.get("FDPY_TEST_DIR") or tempfile.mkdtemp(prefix="fdpy-test-", dir="/tmp"))
    env.bridge = os.environ.get("FDPY_TEST_BRIDGE", env.bridge)
    env.subnet = os.environ.get("FDPY_TEST_SUBNET", env.subnet)
    env.netns_prefix = os.environ.get("FDPY_TEST_NETNS_PREFIX", env.netns_prefix)
    return env


@pytest.fixture(scope="session")
def testenv() -> Iterator[TestEnv]:
    """The real infrastructure, started once per session and always torn down (also on Ctrl-C)."""
    why = missing_prerequisite()
    if why:
        if integration_required():
            pytest.fail(f"integration tests are required here (CI) but cannot run: {why}")
        pytest.skip(f"real infrastructure unavailable: {why}")
    env = _new_env()
    try:
        env.up()
        yield env
    finally:
        env.down()
    leaks = env.leaks()
    if leaks:
        pytest.fail("test environment leaked after teardown:\n  " + "\n  ".join(leaks), pytrace=False)
