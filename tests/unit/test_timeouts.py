"""The per-test time limit really stops a hung test (run in a child pytest: it uses SIGALRM)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest_plugins = ["pytester"]


def test_a_hung_test_fails_with_a_stack_dump_and_the_run_goes_on(pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        """
        import asyncio, subprocess, time
        import pytest

        def test_sleeps():
            time.sleep(60)

        @pytest.mark.timeout(0.5)
        def test_waits_on_a_child():
            subprocess.run(["sleep", "60"])

        def test_hangs_in_a_coroutine():
            async def stuck_here():
                await asyncio.Event().wait()
            asyncio.run(stuck_here())

        def test_after():
            assert True
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("FDPY_TEST_TIMEOUT", "1")
    result = pytester.runpytest_subprocess("-p", "tests.timeouts", "-p", "no:cacheprovider", timeout=30)
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(["*TestTimeout: *test_sleeps ran longer than 1s*",
                                 "*Captured stderr call*",
                                 "*test_sleeps: time limit of 1s reached; stacks:*",
                                 "*line 5 in test_sleeps*",
                                 "*TestTimeout: *test_waits_on_a_child ran longer than 0.5s*",
                                 "*TestTimeout: *test_hangs_in_a_coroutine ran longer than 1s*",
                                 "*Captured stderr call*",
                                 "*<Task pending*stuck_here*",
                                 "*line * in stuck_here*"])
