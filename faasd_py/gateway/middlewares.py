"""The two middlewares every request passes: error mapping and basic auth.

Errors are answered OpenFaaS style: the status the domain error carries and its message as
text/plain. Anything unexpected becomes a short 500 plus one log line with the traceback, so a
client never sees our internals.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from faasd_py.errors import FaasdError, RequestTimeout
from faasd_py.gateway.auth import INVALID_CREDENTIALS, REALM_HEADER
from faasd_py.gateway.body import send_and_close
from faasd_py.gateway.keys import CREDENTIALS

log = logging.getLogger(__name__)

# Routes behind basic auth, as in the OpenFaaS gateway; /function/*, /healthz and / stay open.
PROTECTED_PREFIXES = ("/system", "/ui")


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestTimeout as exc:
        return await send_and_close(request, error_response(exc.status, exc.message))
    except FaasdError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal server error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(PROTECTED_PREFIXES) and not request.app[CREDENTIALS].check(
        request.headers.get("Authorization")
    ):
        return web.Response(
            status=401,
            text=INVALID_CREDENTIALS,
            content_type="text/plain",
            headers={"WWW-Authenticate": REALM_HEADER},
        )
    return await handler(request)
