"""A per-test time limit, so one hung test fails with a stack dump instead of eating CI's 90 minutes.

Default FDPY_TEST_TIMEOUT seconds (300; 0 disables) for setup + call + teardown of each test;
``@pytest.mark.timeout(N)`` overrides it. Implemented with SIGALRM in the main thread: the handler
dumps every thread's (and asyncio task's) stack and raises, which also breaks out of a blocked event loop or
subprocess wait. Loaded by tests/conftest.py (or ``-p tests.timeouts``).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Generator
from types import FrameType

import pytest

DEFAULT_SECONDS = 300.0


class TestTimeout(Exception):
    __test__ = False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): fail the test when it runs longer (default 300 s)")


def _dump_tasks() -> None:
    """Where each coroutine waits: for an async test the thread stacks only show the event loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for task in asyncio.all_tasks(loop):
        sys.stderr.write(f"\n{task!r}\n")
        task.print_stack(file=sys.stderr)


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(os.environ.get("FDPY_TEST_TIMEOUT", DEFAULT_SECONDS))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    seconds = _limit(item)
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return (yield)

    def expire(signum: int, frame: FrameType | None) -> None:
        sys.stderr.write(f"\n+++ {item.nodeid}: time limit of {seconds:g}s reached; stacks:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        _dump_tasks()
        raise TestTimeout(f"{item.nodeid} ran longer than {seconds:g}s (FDPY_TEST_TIMEOUT or @pytest.mark.timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
