"""Watchdog settings from the environment, with the Go watchdogs' names, defaults and parsing
(a bad value falls back to the default instead of failing, as the Go code does)."""

from __future__ import annotations

import os
from collections.abc import Mapping

MODES = ("classic", "serializing", "streaming", "http")
FORK_MODES = ("classic", "serializing", "streaming")

_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds from a Go duration (``1m30s``, ``250ms``) or a plain integer of seconds."""
    s = text.strip()
    if not s:
        return None
    if s.isdigit():
        return float(int(s))
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    total, i = 0.0, 0
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        number = s[i:j]
        k = j
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        unit = s[j:k]
        if not number or number == "." or unit not in _UNITS:
            return None
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:
            return None
        i = k
    return sign * total


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``, so the start-up lines read like fwatchdog's."""
    if seconds == 0:
        return "0s"
    neg = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        for unit, scale in (("ms", 1e-3), ("\u00b5s", 1e-6), ("ns", 1e-9)):
            if seconds >= scale:
                return f"{neg}{_trim(seconds / scale)}{unit}"
        return f"{neg}{_trim(seconds / 1e-9)}ns"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{_trim(secs)}s"
    if hours or minutes:
        out = f"{int(minutes)}m{out}"
    if hours:
        out = f"{int(hours)}h{out}"
    return neg + out


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_bool(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    return default


def _int(text: str | None, default: int) -> int:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        return default


class Config:
    """Everything the watchdog reads from its environment, resolved once at start."""

    __slots__ = (
        "bind_address",
        "cgi_headers",
        "combine_output",
        "content_type",
        "exec_timeout",
        "fprocess",
        "healthcheck_interval",
        "lock_path",
        "max_inflight",
        "metrics_port",
        "mode",
        "port",
        "prefix_logs",
        "read_timeout",
        "suppress_lock",
        "upstream_url",
        "write_debug",
        "write_timeout",
    )

    def __init__(self, env: Mapping[str, str]) -> None:
        self.mode = (env.get("mode") or "classic").strip().lower()
        self.fprocess = env.get("fprocess") or env.get("function_process") or ""
        self.port = _int(env.get("port"), 8080)
        self.metrics_port = _int(env.get("metrics_port"), 8081)  # fixed in the Go watchdogs; ours for tests
        self.bind_address = env.get("bind_address", "")
        self.read_timeout = _duration(env.get("read_timeout"), 30.0)
        self.write_timeout = _duration(env.get("write_timeout"), 30.0)
        # classic: hard timeout off by default; of-watchdog modes: 30s
        self.exec_timeout = _duration(env.get("exec_timeout"), 0.0 if self.mode == "classic" else 30.0)
        self.healthcheck_interval = _duration(env.get("healthcheck_interval"), self.write_timeout)
        self.combine_output = parse_bool(env.get("combine_output"), True) if self.mode == "classic" else False
        self.prefix_logs = parse_bool(env.get("prefix_logs"), True)
        default_ct = "" if self.mode == "classic" else "application/octet-stream"
        self.content_type = env.get("content_type", default_ct)
        self.max_inflight = max(0, _int(env.get("max_inflight"), 0))
        self.suppress_lock = parse_bool(env.get("suppress_lock"), False)
        self.cgi_headers = parse_bool(env.get("cgi_headers"), True)
        self.write_debug = parse_bool(env.get("write_debug"), False)
        self.upstream_url = env.get("upstream_url") or env.get("http_upstream_url") or ""
        self.lock_path = os.path.join(env.get("TMPDIR") or "/tmp", ".lock")

    @property
    def argv(self) -> list[str]:
        """fprocess split on single spaces, no shell and no quoting, as the Go watchdogs do."""
        return [part for part in self.fprocess.split(" ") if part]

    def upstream_address(self) -> tuple[str, int]:
        """Only host:port of upstream_url counts: the scheme is forced to http, the request URI kept."""
        url = self.upstream_url
        if "://" in url:
            url = url.split("://", 1)[1]
        hostport = url.split("/", 1)[0]
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        if not host:
            raise ValueError(f"invalid upstream_url {self.upstream_url!r}")
        return host, int(port) if port else 80


def _duration(text: str | None, default: float) -> float:
    if text is None:
        return default
    value = parse_duration(text)
    return default if value is None or value < 0 else value
