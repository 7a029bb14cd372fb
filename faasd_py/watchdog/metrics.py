"""The Go watchdogs' Prometheus metrics, stdlib only: ``http_requests_total``,
``http_request_duration_seconds`` and ``http_requests_in_flight`` for function requests, served as
text exposition 0.0.4 at ``GET /metrics`` on a second listener (``:8081``, ``metrics_port``).

Recording sits on every request's path, so it is one dict lookup and a few int/float updates under
a lock; formatting happens only when someone scrapes. Labels follow client_golang's promhttp, which
the Go watchdogs use: ``code`` is the status as digits, ``method`` the lower-case standard method
or ``unknown`` (a client must not be able to mint label values)."""

from __future__ import annotations

import threading
from _bisect import bisect_left  # what bisect.py re-exports, without its 0.1 ms import
from collections.abc import Callable

from .exchange import Exchange

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# prometheus.DefBuckets (client_golang) == prometheus_client's default histogram buckets
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STANDARD = ("GET", "PUT", "HEAD", "POST", "DELETE", "CONNECT", "OPTIONS", "NOTIFY", "TRACE", "PATCH")
_METHODS = {**{m: m.lower() for m in _STANDARD}, **{m.lower(): m.lower() for m in _STANDARD}}  # GET/get, not Get
SCRAPE_TIMEOUT = 2.0  # per read and per response: a scrape is one small request on a fast link


class Metrics:
    """The three metric families. Each (code, method) series is a list ``[sum, n_0, ..., n_inf]``
    of per-bucket (not yet cumulative) counts; its total is both the histogram's ``_count`` and
    ``http_requests_total``, which the Go watchdogs always increment together."""

    __slots__ = ("_in_flight", "_lock", "_series")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[int, str], list[float]] = {}
        self._in_flight = 0

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finished(self, method: str, code: int, seconds: float) -> None:
        """``code`` 0 (nothing was sent: the connection failed or the server answers 500 itself) counts as 500."""
        key = (code or 500, _METHODS.get(method, "unknown"))
        slot = 1 + bisect_left(BUCKETS, seconds)  # le: the first bound >= seconds
        with self._lock:
            self._in_flight -= 1
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(BUCKETS) + 2)
            series[0] += seconds
            series[slot] += 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def render(self) -> bytes:
        """The exposition text; series sorted by labels, families by name, like Go's encoder."""
        with self._lock:
            in_flight = self._in_flight
            snapshot = sorted((str(code), method, list(series)) for (code, method), series in self._series.items())
        out = ["# HELP http_request_duration_seconds Seconds spent serving HTTP requests.\n",
               "# TYPE http_request_duration_seconds histogram\n"]
        totals = []
        for code, method, series in snapshot:
            labels = f'code="{code}",method="{method}"'
            count = 0
            for bound, n in zip((*BUCKETS, None), series[1:], strict=True):
                count += int(n)
                le = "+Inf" if bound is None else _number(bound)
                out.append(f'http_request_duration_seconds_bucket{{{labels},le="{le}"}} {count}\n')
            out.append(f"http_request_duration_seconds_sum{{{labels}}} {_number(series[0])}\n")
            out.append(f"http_request_duration_seconds_count{{{labels}}} {count}\n")
            totals.append(f"http_requests_total{{{labels}}} {count}\n")
        out += ["# HELP http_requests_in_flight total HTTP requests in-flight\n",
                "# TYPE http_requests_in_flight gauge\n",
                f"http_requests_in_flight {in_flight}\n",
                "# HELP http_requests_total total HTTP requests processed\n",
                "# TYPE http_requests_total counter\n", *totals]
        return "".join(out).encode()


def _number(value: float) -> str:
    """Go's shortest form: ``1`` rather than ``1.0``, so ``le`` labels match the Go watchdogs'."""
    return str(int(value)) if value.is_integer() else repr(value)


def metrics_handler(metrics: Metrics) -> Callable[[Exchange], None]:
    """``GET /metrics``, for server.Server on the metrics listener."""

    def answer(ex: Exchange) -> None:
        if ex.req.path != "/metrics":
            ex.send(404, [("Content-Type", "text/plain; charset=utf-8")], b"404 page not found\n")
        elif ex.req.method not in ("GET", "HEAD"):
            ex.send(405, [("Allow", "GET, HEAD")])
        else:
            ex.send(200, [("Content-Type", CONTENT_TYPE)], metrics.render())

    return answer
