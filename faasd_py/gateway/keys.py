"""Typed application storage shared by the gateway modules (no string keys)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from faasd_py.config import Settings
from faasd_py.gateway.auth import Credentials
from faasd_py.provider.contract import Provider

# on_invocation(name, namespace, status, seconds): called once per finished /function call, for metrics.
InvocationHook = Callable[[str, str, int, float], None]
# on_start(name, namespace): called when a /function call (or a queued one) has its replica, for metrics.
StartHook = Callable[[str, str], None]

PROVIDER = web.AppKey("provider", Provider)
SETTINGS = web.AppKey("settings", Settings)
CREDENTIALS = web.AppKey("credentials", Credentials)
# Open /system/logs streams, cancelled on shutdown so followers do not hold the exit for a whole grace period.
LOG_STREAMS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("log_streams")
