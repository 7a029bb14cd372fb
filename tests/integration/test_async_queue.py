"""The queue worker (provider/queue.py) against a real nats-server with JetStream.

The function side is a fake invoker here (the real invoke path is covered by test_e2e_async.py),
so these tests look at what the queue promises: durable storage, acknowledgement only after the
callback, retries with backoff, per-function concurrency, redelivery after a crash, large
bodies through the object store, and a NATS that is down at start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest

from faasd_py.config import AsyncSettings
from faasd_py.errors import Unavailable
from faasd_py.provider.queue import AsyncQueue, InvocationResult, QueuedCall
from tests.callback_receiver import Receiver, callback_receiver
from tests.nats_server import NatsServer, nats_missing

pytestmark = pytest.mark.skipif(nats_missing() is not None, reason=str(nats_missing()))


@pytest.fixture
async def natsd(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with callback_receiver() as r:
        yield r


def fast_settings(url: str, **kw: object) -> AsyncSettings:
    s = AsyncSettings(nats_url=url, backoff=0.05, backoff_max=0.2, ack_wait=1.0, attempts=3)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def make_call(name: str = "fn", body: bytes = b"hello", callback: str = "", call_id: str = "call-1",
              **kw: object) -> QueuedCall:
    call = QueuedCall(function=name, name=name, namespace="openfaas-fn", method="POST", path="/sub/path",
                      query="a=1&b=%20", headers=[("Content-Type", "text/plain"), ("X-Custom", "v")], body=body,
                      call_id=call_id, callback_url=callback, remote="127.0.0.1", host="gw:8080")
    for k, v in kw.items():
        setattr(call, k, v)
    return call


class FakeInvoker:
    """Answers with a scripted status sequence (then 200), echoing the body; records every call."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.calls: list[QueuedCall] = []
        self.running = 0
        self.peak: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.gate: asyncio.Event | None = None

    async def __call__(self, call: QueuedCall) -> InvocationResult:
        self.calls.append(call)
        self.active[call.key] = self.active.get(call.key, 0) + 1
        self.peak[call.key] = max(self.peak.get(call.key, 0), self.active[call.key])
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
            status = self.statuses.pop(0) if self.statuses else 200
            return InvocationResult(status, [("Content-Type", "text/x-echo"), ("X-Fn", "yes")],
                                    b"echo:" + call.body, 0.125)
        finally:
            self.active[call.key] -= 1


async def started(settings: AsyncSettings, invoker: FakeInvoker, timeout: float = 10.0) -> AsyncQueue:
    queue = AsyncQueue(settings, invoker)
    queue.start()
    await until(lambda: queue.connected, timeout)
    queue.start_worker()
    return queue


async def until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def stream_messages(url: str, stream: str = "faas-request") -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def eventually(fn: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await fn():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_call_is_stored_invoked_called_back_and_acked(natsd: NatsServer, receiver: Receiver) -> None:
    invoker = FakeInvoker()
    queue = await started(fast_settings(natsd.url), invoker)
    try:
        sent = make_call(callback=receiver.url + "/done?x=1")
        await queue.enqueue(sent)
        [cb] = await receiver.wait_for(1)
        [got] = invoker.calls
        # everything of the request survived the trip through JetStream
        for attr in ("function", "name", "namespace", "method", "path", "query", "body", "call_id",
                     "callback_url", "remote", "host"):
            assert getattr(got, attr) == getattr(sent, attr), attr
        assert got.headers == sent.headers
        assert cb.path == "/done?x=1"
        assert cb.body == b"echo:hello"
        assert cb.headers["X-Function-Status"] == "200"
        assert cb.headers["X-Call-Id"] == "call-1"
        assert cb.headers["X-Function-Name"] == "fn"
        assert cb.headers["X-Duration-Seconds"] == "0.125000"
        assert cb.headers["Content-Type"] == "text/x-echo" and cb.headers["X-Fn"] == "yes"
        await eventually(lambda: _empty(natsd.url))  # acknowledged: the work queue removed it
    finally:
        await queue.close()


async def _empty(url: str) -> bool:
    return await stream_messages(url) == 0


async def test_no_callback_url_means_invoke_only(natsd: NatsServer, receiver: Receiver) -> None:
    invoker = FakeInvoker()
    queue = await started(fast_settings(natsd.url), invoker)
    try:
        await queue.enqueue(make_call())
        await until(lambda: len(invoker.calls) == 1, what="the invocation")
        await eventually(lambda: _empty(natsd.url))
        assert receiver.attempts == []
    finally:
        await queue.close()


async def test_a_large_body_goes_through_the_object_store(natsd: NatsServer, receiver: Receiver) -> None:
    body = bytes(range(256)) * (12 << 12)  # 12 MiB: above NATS's 1 MiB max_payload
    invoker = FakeInvoker()
    queue = await started(fast_settings(natsd.url), invoker)
    try:
        await queue.enqueue(make_call(body=body, callback=receiver.url))
        [cb] = await receiver.wait_for(1, timeout=60)
        assert invoker.calls[0].body == body
        assert cb.body == b"echo:" + body
        await eventually(lambda: _empty(natsd.url))
        nc = await nats.connect(natsd.url)
        try:  # the body object is deleted after the acknowledgement
            infos = await (await nc.jetstream().object_store("faas-request-bodies")).list(ignore_deletes=True)
        except Exception as exc:  # nats-py raises NotFoundError for an empty bucket listing
            infos = [] if "not found" in str(exc).lower() or type(exc).__name__ == "NotFoundError" else None
        finally:
            await nc.close()
        assert infos == []
    finally:
        await queue.close()


async def test_too_large_a_body_is_refused(natsd: NatsServer) -> None:
    queue = await started(fast_settings(natsd.url, max_body=1000), FakeInvoker())
    try:
        with pytest.raises(Exception) as err:
            await queue.enqueue(make_call(body=b"x" * 1001))
        assert getattr(err.value, "status", None) == 413
    finally:
        await queue.close()


async def test_invocation_retried_on_503_and_429_with_backoff(natsd: NatsServer, receiver: Receiver) -> None:
    invoker = FakeInvoker(statuses=[503, 429])
    queue = await started(fast_settings(natsd.url, backoff=0.2, backoff_max=1.0), invoker)
    try:
        t0 = time.monotonic()
        await queue.enqueue(make_call(callback=receiver.url))
        [cb] = await receiver.wait_for(1)
        assert len(invoker.calls) == 3
        assert cb.headers["X-Function-Status"] == "200"
        assert time.monotonic() - t0 >= 0.2 + 0.4  # backoff 0.2 s, then doubled
    finally:
        await queue.close()


async def test_a_function_500_is_final_and_reported(natsd: NatsServer, receiver: Receiver) -> None:
    invoker = FakeInvoker(statuses=[500])
    queue = await started(fast_settings(natsd.url), invoker)
    try:
        await queue.enqueue(make_call(callback=receiver.url))
        [cb] = await receiver.wait_for(1)
        assert len(invoker.calls) == 1
        assert cb.headers["X-Function-Status"] == "500"
    finally:
        await queue.close()


async def test_invocation_gives_up_after_attempts_and_reports_the_last_status(
    natsd: NatsServer, receiver: Receiver
) -> None:
    invoker = FakeInvoker(statuses=[503] * 10)
    queue = await started(fast_settings(natsd.url, attempts=3), invoker)
    try:
        await queue.enqueue(make_call(callback=receiver.url))
        [cb] = await receiver.wait_for(1)
        assert len(invoker.calls) == 3
        assert cb.headers["X-Function-Status"] == "503"
        await eventually(lambda: _empty(natsd.url))
    finally:
        await queue.close()


async def test_callback_failing_twice_is_retried_then_delivered(natsd: NatsServer, receiver: Receiver) -> None:
    receiver.fail_next = 2
    invoker = FakeInvoker()
    queue = await started(fast_settings(natsd.url, attempts=3), invoker)
    try:
        await queue.enqueue(make_call(callback=receiver.url))
        [cb] = await receiver.wait_for(1)
        assert len(receiver.attempts) == 3
        assert len(invoker.calls) == 1  # the function ran once; only the callback was repeated
        assert all(a.headers["X-Call-Id"] == "call-1" and a.body == b"echo:hello" for a in receiver.attempts)
        assert cb.headers["X-Function-Status"] == "200"
    finally:
        await queue.close()


async def test_a_dead_callback_is_given_up_and_does_not_block_the_queue(
    natsd: NatsServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    invoker = FakeInvoker()
    queue = await started(fast_settings(natsd.url, attempts=2, max_inflight=1), invoker)
    try:
        # nothing listens there: connection refused, twice, then logged and acknowledged
        await queue.enqueue(make_call(callback="http://127.0.0.1:9/", call_id="dead"))
        await queue.enqueue(make_call(callback=receiver.url, call_id="next"))
        [cb] = await receiver.wait_for(1)
        assert cb.headers["X-Call-Id"] == "next"
        await eventually(lambda: _empty(natsd.url))
        assert any("dead" in r.getMessage() and "giving up" in r.getMessage() for r in caplog.records)
    finally:
        await queue.close()


@pytest.mark.parametrize(("limit", "inflight"), [(2, 64), (1, 4)])  # 4: "busy" may hold 2 slots, the rest wait in NATS
async def test_per_function_concurrency_limit_lets_other_functions_pass(
    natsd: NatsServer, receiver: Receiver, limit: int, inflight: int
) -> None:
    invoker = FakeInvoker(delay=0.3)
    queue = await started(fast_settings(natsd.url, function_concurrency=limit, max_inflight=inflight), invoker)
    try:
        for i in range(6):
            await queue.enqueue(make_call("busy", callback=receiver.url, call_id=f"busy-{i}"))
        await queue.enqueue(make_call("other", callback=receiver.url, call_id="other"))
        first = await receiver.wait_for(3)
        assert "other" in [c.headers["X-Call-Id"] for c in first]  # not stuck behind the busy ones
        await receiver.wait_for(7, timeout=30)
        assert invoker.peak["busy.openfaas-fn"] == limit
        assert sorted(c.headers["X-Call-Id"] for c in receiver.received) == sorted(
            [f"busy-{i}" for i in range(6)] + ["other"])
    finally:
        await queue.close()


async def test_a_crashed_worker_s_call_is_redelivered_and_called_back_once(
    natsd: NatsServer, receiver: Receiver
) -> None:
    settings = fast_settings(natsd.url, ack_wait=1.0)
    first = FakeInvoker()
    first.gate = asyncio.Event()  # the call hangs in the first worker
    queue = await started(settings, first)
    await queue.enqueue(make_call(callback=receiver.url, call_id="survivor"))
    await until(lambda: len(first.calls) == 1, what="the first invocation")
    await asyncio.sleep(1.5)  # longer than ack_wait: only the in-progress heartbeats keep it here
    assert await stream_messages(natsd.url) == 1
    await queue.close(grace=0, abandon=True)  # kill -9: no ack, no nak

    second = FakeInvoker()
    t0 = time.monotonic()
    queue2 = await started(settings, second)
    try:
        [cb] = await receiver.wait_for(1, timeout=15)
        assert cb.headers["X-Call-Id"] == "survivor"
        assert len(second.calls) == 1
        assert time.monotonic() - t0 < 10
        await eventually(lambda: _empty(natsd.url))
        await asyncio.sleep(1.5)  # nothing else comes: once per delivery that completed
        assert len(receiver.received) == 1
    finally:
        await queue2.close()


async def test_graceful_close_hands_unfinished_calls_back_at_once(natsd: NatsServer, receiver: Receiver) -> None:
    settings = fast_settings(natsd.url, ack_wait=30.0)  # a redelivery by timeout would take 30 s
    first = FakeInvoker()
    first.gate = asyncio.Event()
    queue = await started(settings, first)
    await queue.enqueue(make_call(callback=receiver.url))
    await until(lambda: len(first.calls) == 1)
    await queue.close(grace=0.1)  # not finished within the grace: nak'd
    second = FakeInvoker()
    queue2 = await started(settings, second)
    try:
        await receiver.wait_for(1, timeout=10)
        assert len(second.calls) == 1
    finally:
        await queue2.close()


async def test_nats_down_at_start_gives_503_then_connects_in_the_background(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "late")  # not started yet
    invoker = FakeInvoker()
    queue = AsyncQueue(fast_settings(server.url), invoker)
    t0 = time.monotonic()
    queue.start()
    queue.start_worker()
    assert time.monotonic() - t0 < 0.1  # never blocks
    try:
        with pytest.raises(Unavailable) as err:
            await queue.enqueue(make_call())
        assert server.url in err.value.message
        server.start()
        await until(lambda: queue.connected, timeout=15, what="the late connection")
        await queue.enqueue(make_call())
        await until(lambda: len(invoker.calls) == 1)
    finally:
        await queue.close()
        server.stop()


async def test_messages_survive_a_nats_restart(natsd: NatsServer, receiver: Receiver) -> None:
    settings = fast_settings(natsd.url)
    queue = AsyncQueue(settings, FakeInvoker())
    queue.start()
    await until(lambda: queue.connected)
    await queue.enqueue(make_call(callback=receiver.url, call_id="stored"))  # no worker yet
    natsd.restart()  # file storage: still there afterwards
    invoker = FakeInvoker()
    queue.invoker = invoker
    queue.start_worker()
    try:
        [cb] = await receiver.wait_for(1, timeout=20)
        assert cb.headers["X-Call-Id"] == "stored"
    finally:
        await queue.close()
