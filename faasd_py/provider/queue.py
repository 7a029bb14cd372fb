"""Queued (asynchronous) invocations on NATS JetStream: storage, the worker, the callbacks.

Enqueue (``/async-function/*``) publishes one message per call to a file-backed work-queue
stream and answers 202 only after JetStream acknowledged storing it. The worker in this daemon
pulls from one durable consumer, invokes the function through the gateway's own invoke path (so
a paused function resumes and the call is metered like any other), POSTs the result to the
caller's ``X-Callback-Url`` and only then acknowledges the message. While a call runs, the worker
tells JetStream it is still in progress every third of ``ack_wait``; a daemon that dies (kill -9)
stops doing so and the message is redelivered ``ack_wait`` later to whichever daemon pulls next.

Delivery is therefore **at least once**: a call whose callback went out just before the daemon
died, but whose acknowledgement did not, is invoked and called back again. Callers that must not
act twice deduplicate on ``X-Call-Id``, which stays the same across redeliveries.

Message layout: one JSON line of metadata, ``\\n``, then the raw request body. Bodies that do not
fit the server's ``max_payload`` (1 MiB by default) go to a JetStream object store bucket
(``<stream>-bodies``) first and the message names the object; it is deleted after the ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import nats
import nats.errors
import nats.js.errors
from multidict import CIMultiDict
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from faasd_py.config import AsyncSettings
from faasd_py.errors import PayloadTooLarge, Unavailable

log = logging.getLogger(__name__)

CONSUMER = "faasd-py-worker"
FORMAT_VERSION = 1
# Room for the NATS headers and protocol line beside the payload when deciding inline vs object.
HEADER_ROOM = 4096
SMALL_BODY = 1 << 20
FETCH_BATCH = 16
FETCH_TIMEOUT = 2.0  # a pull request lives this long on the server: short, so a dead one expires soon
# Invocation answers that mean "try again later" (the gateway's own 502/503/504, or the function's 429).
RETRY_INVOKE = frozenset({429, 502, 503, 504})
# Response headers never copied onto the callback request: ours to frame.
_NOT_COPIED = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "host", "x-function-status", "x-duration-seconds",
    "x-call-id", "x-function-name",
})


@dataclass(slots=True)
class QueuedCall:
    """One ``/async-function`` request as stored: everything needed to replay it later."""

    function: str  # as the caller addressed it (name or name.namespace): the X-Function-Name of the callback
    name: str
    namespace: str
    method: str
    path: str  # raw (still percent-encoded) path after /async-function/<function>; "" when none
    query: str  # raw query string, without "?"
    headers: list[tuple[str, str]]
    body: bytes
    call_id: str
    callback_url: str = ""  # "" = nobody to call back
    remote: str = ""  # the client's address, for X-Forwarded-For
    host: str = ""  # the Host it asked, for X-Forwarded-Host
    enqueued_at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return f"{self.name}.{self.namespace}"


@dataclass(frozen=True, slots=True)
class InvocationResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    seconds: float


# The gateway's invoke path for a stored call (InvokeProxy.invoke_queued), wired in by the daemon.
Invoker = Callable[[QueuedCall], Awaitable[InvocationResult]]


def encode(call: QueuedCall, body_object: str = "") -> bytes:
    meta = {
        "v": FORMAT_VERSION, "function": call.function, "name": call.name, "namespace": call.namespace,
        "method": call.method, "path": call.path, "query": call.query, "headers": call.headers,
        "call_id": call.call_id, "callback_url": call.callback_url, "remote": call.remote, "host": call.host,
        "enqueued_at": call.enqueued_at, "body_object": body_object,
    }
    # json.dumps never writes a raw newline (ensure_ascii also escapes lone surrogates of odd header bytes)
    head = json.dumps(meta, separators=(",", ":")).encode()
    return head + b"\n" + (b"" if body_object else call.body)


def decode(data: bytes) -> tuple[QueuedCall, str]:
    """(call, body object name or ""); ValueError for anything that is not our message."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise ValueError("no metadata line")
    try:
        m = json.loads(head)
        if m.get("v") != FORMAT_VERSION:
            raise ValueError(f"unknown format version {m.get('v')!r}")
        call = QueuedCall(
            function=str(m["function"]), name=str(m["name"]), namespace=str(m["namespace"]),
            method=str(m["method"]), path=str(m["path"]), query=str(m["query"]),
            headers=[(str(k), str(v)) for k, v in m["headers"]], body=body, call_id=str(m["call_id"]),
            callback_url=str(m["callback_url"]), remote=str(m["remote"]), host=str(m["host"]),
            enqueued_at=float(m["enqueued_at"]),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed message: {exc}") from exc
    return call, str(m.get("body_object") or "")


def backoff_delay(settings: AsyncSettings, retry: int) -> float:
    """Delay before retry number ``retry`` (1-based): backoff, then doubling, capped at backoff_max."""
    return float(min(settings.backoff * (2 ** (retry - 1)), settings.backoff_max))


class AsyncQueue:
    """The JetStream side of async invocations: connection, enqueue, and the worker.

    Nothing here blocks the daemon's start: the connection is made (and re-made) in the
    background; until it is up, :meth:`enqueue` raises Unavailable (503) with the reason.
    """

    def __init__(self, settings: AsyncSettings, invoker: Invoker | None = None, token: str = "") -> None:
        """``token``: presented to NATS unless ``nats_url`` carries credentials of its own."""
        self.settings = settings
        self.invoker = invoker
        self._token = token
        self._subject = settings.subject
        self._bucket = f"{settings.stream}-bodies"
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self._bodies: Any = None
        self._problem = f"not connected to NATS at {settings.nats_url} yet"
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[asyncio.Task[None], Any] = {}  # call task -> its message
        self._per_function: defaultdict[str, int] = defaultdict(int)  # calls held per function
        self._gates: dict[str, asyncio.Semaphore] = {}  # per function: function_concurrency at once
        self._slot = asyncio.Event()
        self._stopping = False
        self._abandon = False
        self._http: aiohttp.ClientSession | None = None
        self._last_error_log = 0.0

    # --- connection ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._js is not None and self._nc is not None and self._nc.is_connected

    def start(self) -> None:
        """Connect in the background (forever, with backoff); returns at once."""
        self._tasks.append(asyncio.create_task(self._connect(), name="queue-connect"))

    def start_worker(self) -> None:
        """Start pulling calls; the daemon does this once its functions are restored."""
        self._tasks.append(asyncio.create_task(self._work(), name="queue-worker"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="queue-heartbeat"))

    async def _connect(self) -> None:
        try:
            await self._connect_and_set_up()
        except Exception as exc:  # e.g. a nats_url nats-py cannot parse: say so instead of dying silently
            self._problem = f"cannot use NATS at {self.settings.nats_url}: {exc or type(exc).__name__}"
            log.error("async invocations disabled: %s", self._problem)

    async def _connect_and_set_up(self) -> None:
        url = self.settings.nats_url
        self._problem = f"not connected to NATS at {url} yet (retrying in the background)"
        auth = {"token": self._token} if self._token and "@" not in url else {}
        nc = await nats.connect(
            url, name="faasd-py", connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=2, error_cb=self._on_error, disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected, **auth,
        )
        self._nc = nc
        delay = 1.0
        while True:
            try:
                await self._setup(nc)
                break
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                self._problem = f"NATS at {url} has no usable JetStream: {exc or type(exc).__name__}"
                log.error("async invocations unavailable: %s; retrying in %.0fs", self._problem, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._ready.set()
        log.info("async invocations: connected to %s (stream %s)", url, self.settings.stream)

    async def _setup(self, nc: Any) -> None:
        js = nc.jetstream()
        stream = StreamConfig(
            name=self.settings.stream, subjects=[f"{self._subject}.>"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=120.0,
        )
        try:
            await js.add_stream(stream)
        except nats.js.errors.BadRequestError:
            await js.update_stream(stream)  # settings changed since it was made (retention cannot)
        consumer = ConsumerConfig(
            durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.settings.ack_wait,
            max_deliver=-1, max_ack_pending=max(1000, self.settings.max_inflight * 4),
            filter_subject=f"{self._subject}.>",
        )
        try:
            await js.add_consumer(self.settings.stream, consumer)
        except nats.js.errors.BadRequestError as exc:
            log.warning("async invocations: keeping the existing consumer %s (%s)", CONSUMER, exc)
        self._sub = await js.pull_subscribe_bind(durable=CONSUMER, stream=self.settings.stream)
        self._js = js

    async def _on_error(self, exc: Exception) -> None:
        if not self.connected:
            self._problem = (f"cannot reach NATS at {self.settings.nats_url} ({exc or type(exc).__name__}); "
                             "retrying in the background")
        now = time.monotonic()
        if now - self._last_error_log > 30:  # a NATS that is down fails every 2 s: say so twice a minute
            self._last_error_log = now
            log.warning("NATS (%s): %s", self.settings.nats_url, exc or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            self._problem = f"lost the connection to NATS at {self.settings.nats_url} (reconnecting)"
            log.warning("async invocations: %s", self._problem)

    async def _on_reconnected(self) -> None:
        log.info("async invocations: reconnected to NATS")

    # --- enqueue ------------------------------------------------------------------------------

    async def enqueue(self, call: QueuedCall) -> None:
        """Store the call durably; returns once JetStream has it. Unavailable (503) if it cannot."""
        if not self.connected:
            raise Unavailable(f"async invocations are unavailable: {self._problem}")
        if len(call.body) > self.settings.max_body:
            raise PayloadTooLarge(f"request body larger than {self.settings.max_body} bytes")
        subject = f"{self._subject}.{call.namespace}.{call.name}"
        try:
            data = encode(call)
            if len(data) + HEADER_ROOM > self._nc.max_payload:
                obj = uuid.uuid4().hex
                await (await self._body_store()).put(obj, call.body)
                data = encode(call, body_object=obj)
            await self._js.publish(subject, data, timeout=10.0)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise Unavailable(f"async invocations are unavailable: could not store the call in NATS: "
                              f"{exc or type(exc).__name__}") from exc

    async def _body_store(self) -> Any:
        if self._bodies is None:
            self._bodies = await self._js.create_object_store(self._bucket)
        return self._bodies

    # --- the worker ---------------------------------------------------------------------------

    async def _work(self) -> None:
        await self._ready.wait()
        while not self._stopping:
            free = self.settings.max_inflight - len(self._running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                msgs = await self._sub.fetch(min(free, FETCH_BATCH), timeout=FETCH_TIMEOUT)
            except TimeoutError:
                continue
            except (nats.errors.Error, OSError) as exc:
                log.debug("async worker: fetch failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        try:
            call, body_object = decode(msg.data)
        except ValueError as exc:
            log.error("async worker: dropping an unreadable message (%s): %s", msg.subject, exc)
            self._fire(msg.term())
            return
        key = call.key
        # A function's calls beyond its concurrency wait here (reported in progress), but one
        # function never holds more than half the worker's slots: the rest go back to the stream
        # for a moment, so a flood of one function's calls cannot stall everyone else's.
        if self._per_function[key] >= max(self.settings.function_concurrency, self.settings.max_inflight // 2):
            self._fire(msg.nak(delay=min(0.25 * msg.metadata.num_delivered, 5.0)))
            return
        self._per_function[key] += 1
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = asyncio.Semaphore(max(1, self.settings.function_concurrency))
        task = asyncio.create_task(self._process(msg, call, body_object, gate))
        self._running[task] = msg
        task.add_done_callback(lambda t: self._finished(t, key))

    def _finished(self, task: asyncio.Task[None], key: str) -> None:
        self._running.pop(task, None)
        self._per_function[key] -= 1
        if self._per_function[key] <= 0:
            del self._per_function[key]
            del self._gates[key]
        self._slot.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("async worker: call failed: %r", task.exception())

    def _fire(self, coro: Awaitable[Any]) -> None:
        """An ack/nak whose outcome does not matter (JetStream redelivers if it is lost)."""
        async def run() -> None:
            with contextlib.suppress(Exception):
                await coro

        task = asyncio.ensure_future(run())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _heartbeat(self) -> None:
        """Keep JetStream from redelivering calls still in progress here."""
        interval = max(0.1, self.settings.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._running.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _process(self, msg: Any, call: QueuedCall, body_object: str, gate: asyncio.Semaphore) -> None:
        try:
            if body_object:
                try:
                    call.body = (await (await self._body_store()).get(body_object)).data or b""
                except nats.js.errors.ObjectNotFoundError:
                    log.error("async call %s to %s: its stored body is gone; dropping it", call.call_id, call.key)
                    await msg.term()
                    return
            async with gate:  # the callback below does not load the function: outside the limit
                result = await self._invoke(call)
            if call.callback_url:
                await self._call_back(call, result)
            try:
                await msg.ack_sync(timeout=5.0)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("async call %s: acknowledgement failed (%s); it may be delivered again",
                            call.call_id, exc)
            if body_object:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await (await self._body_store()).delete(body_object)
        except asyncio.CancelledError:
            if not self._abandon:
                # Shutting down: hand it back instead of letting ack_wait run out. Delayed past the
                # life of our last pull request, which the server could otherwise hand it straight back to.
                with contextlib.suppress(Exception):
                    await asyncio.shield(msg.nak(delay=FETCH_TIMEOUT + 0.5))
            raise

    async def _invoke(self, call: QueuedCall) -> InvocationResult:
        assert self.invoker is not None, "the daemon sets the invoker before starting the worker"
        attempts = max(1, self.settings.attempts)
        for attempt in range(1, attempts + 1):
            result = await self.invoker(call)
            if result.status not in RETRY_INVOKE or attempt == attempts:
                return result
            delay = backoff_delay(self.settings, attempt)
            log.info("async call %s to %s: status %d, retry %d/%d in %.1fs", call.call_id, call.key,
                     result.status, attempt, attempts - 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _call_back(self, call: QueuedCall, result: InvocationResult) -> None:
        headers: CIMultiDict[str] = CIMultiDict()
        for k, v in result.headers:
            if k.lower() not in _NOT_COPIED:
                headers.add(k, v)
        headers["X-Function-Status"] = str(result.status)
        headers["X-Duration-Seconds"] = f"{result.seconds:f}"
        headers["X-Call-Id"] = call.call_id
        headers["X-Function-Name"] = call.function
        attempts = max(1, self.settings.attempts)
        session = self._session()
        timeout = aiohttp.ClientTimeout(total=self.settings.callback_timeout)
        for attempt in range(1, attempts + 1):
            problem: str
            try:
                # aiohttp wants a file-like object for large bodies (it sends bytes in one piece)
                data = result.body if len(result.body) <= SMALL_BODY else io.BytesIO(result.body)
                async with session.post(call.callback_url, data=data, headers=headers, timeout=timeout,
                                        allow_redirects=False) as resp:
                    await resp.read()
                    if resp.status != 429 and resp.status < 500:
                        if resp.status >= 400:
                            log.warning("async call %s: callback %s answered %d (not retried)",
                                        call.call_id, call.callback_url, resp.status)
                        return
                    problem = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == attempts:
                log.error("async call %s: callback to %s failed %d times (last: %s); giving up",
                          call.call_id, call.callback_url, attempts, problem)
                return
            delay = backoff_delay(self.settings, attempt)
            log.warning("async call %s: callback to %s failed (%s); retry %d/%d in %.1fs",
                        call.call_id, call.callback_url, problem, attempt, attempts - 1, delay)
            await asyncio.sleep(delay)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # callbacks go anywhere the caller said: no cookies kept between callers
            self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    # --- shutdown ----------------------------------------------------------------------------

    async def close(self, grace: float = 10.0, *, abandon: bool = False) -> None:
        """Stop pulling; give calls in progress ``grace`` seconds, then hand the rest back.

        ``abandon`` leaves unfinished calls unacknowledged without a word, as a crash would:
        JetStream redelivers them after ack_wait (tests use it to play kill -9).
        """
        self._stopping = True
        self._abandon = abandon
        self._slot.set()
        for task in self._tasks:
            if task.get_name() in ("queue-connect", "queue-worker"):
                task.cancel()
        running = list(self._running)
        if running and not abandon and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._js = None
