"""/system/* handlers: translate HTTP to provider calls and back, nothing more.

Status codes follow what faas-cli expects (faas-cli-contract.md §2): deploy and update answer
202, an update of an unknown function 404 (faas-cli then POSTs), creates 201, deletes 202.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from faasd_py import __version__
from faasd_py.errors import FaasdError, InvalidRequest, PayloadTooLarge, Unprocessable
from faasd_py.gateway.body import next_chunk
from faasd_py.gateway.keys import LOG_STREAMS, PROVIDER, SETTINGS
from faasd_py.types import (
    DeleteFunctionRequest,
    FunctionDeployment,
    FunctionNamespace,
    FunctionStatus,
    LogMessage,
    ScaleServiceRequest,
    Secret,
    validate_name,
    validate_namespace,
)

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
NAMESPACE_LABEL = "openfaas"
# How often a quiet `follow` log stream checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 1.0
FIRST_MESSAGE_WAIT = 0.5  # /system/logs holds its 200 this long for a reader that fails at once

# What Go marshals an unset time.Time as; the OpenFaaS gateway sends it when the provider had no
# creation time. The spec has createdAt as a non-null date-time and faas-cli fails on "".
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

INT64_MAX = 2**63 - 1

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}


# --- helpers ------------------------------------------------------------------------------------


async def read_json(request: web.Request) -> Any:
    """The body as JSON, bounded by settings.max_json_body (413) and with the parser's message on 400."""
    settings = request.app[SETTINGS]
    limit = settings.max_json_body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await next_chunk(request.content, settings.timeouts.read):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body larger than {limit} bytes")
            chunks.append(chunk)
    except web.RequestPayloadError as exc:  # e.g. a body that does not match its Content-Encoding
        raise InvalidRequest("cannot read the request body: it does not match its Content-Encoding") from exc
    body = b"".join(chunks)
    if not body.strip():
        raise InvalidRequest("request body is empty, expected JSON")
    try:
        return json.loads(body)
    except RecursionError as exc:  # [[[[... deeper than the parser's stack
        raise InvalidRequest("invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over 4300 digits
        raise InvalidRequest(f"invalid JSON: {exc}") from exc


async def read_optional_json(request: web.Request) -> dict[str, Any]:
    """For DELETE bodies that some clients send and others do not."""
    if request.content_length == 0 or (request.content_length is None and not request.body_exists):
        return {}
    data = await read_json(request)
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def query_namespace(request: web.Request) -> str:
    return validate_namespace(request.query.get("namespace"))


def empty(status: int) -> web.Response:
    return web.Response(status=status)


def status_json(status: FunctionStatus) -> dict[str, Any]:
    out = status.to_json()
    if out.get("createdAt") is None:
        out["createdAt"] = GO_ZERO_TIME
    return out


# --- functions ----------------------------------------------------------------------------------


async def list_functions(request: web.Request) -> web.Response:
    functions = await request.app[PROVIDER].functions.list(query_namespace(request))
    return web.json_response([status_json(f) for f in functions])


async def deploy_function(request: web.Request) -> web.Response:
    deployment = FunctionDeployment.from_json(await read_json(request))
    await request.app[PROVIDER].functions.deploy(deployment)
    return empty(202)


async def update_function(request: web.Request) -> web.Response:
    deployment = FunctionDeployment.from_json(await read_json(request))
    await request.app[PROVIDER].functions.update(deployment)
    return empty(202)


async def delete_function(request: web.Request) -> web.Response:
    req = DeleteFunctionRequest.from_json(await read_json(request))
    await request.app[PROVIDER].functions.delete(req.function_name, req.namespace)
    return empty(202)


async def get_function(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["name"])
    usage = request.query.get("usage", "").lower() in ("1", "true")
    status = await request.app[PROVIDER].functions.get(name, query_namespace(request), usage=usage)
    return web.json_response(status_json(status))


async def scale_function(request: web.Request) -> web.Response:
    body = await read_json(request)
    if isinstance(body, dict) and not body.get("namespace") and request.query.get("namespace"):
        body = {**body, "namespace": request.query["namespace"]}  # the OpenFaaS scaler puts it in the query
    req = ScaleServiceRequest.from_json(body, path_name=request.match_info["name"])
    if req.replicas > INT64_MAX:  # the spec's int64; Go's decoder rejects more
        raise InvalidRequest(f"replicas {req.replicas} is out of range")
    await request.app[PROVIDER].functions.scale(req)
    return empty(202)


# --- info and health ----------------------------------------------------------------------------


async def system_info(request: web.Request) -> web.Response:
    info = request.app[PROVIDER].info()
    machine = platform.machine()
    return web.json_response(
        {
            "provider": info.to_json(),
            "version": {"release": __version__, "sha": info.sha, "commit_message": ""},
            "arch": _ARCH.get(machine, machine),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    if request.app[PROVIDER].ready():
        return web.Response(text="OK")
    return web.Response(status=503, text="not ready: restoring functions")


async def root_redirect(request: web.Request) -> web.Response:
    raise web.HTTPTemporaryRedirect("/ui/")


# --- secrets ------------------------------------------------------------------------------------


async def list_secrets(request: web.Request) -> web.Response:
    secrets = await request.app[PROVIDER].secrets.list(query_namespace(request))
    return web.json_response([s.to_json() for s in secrets])


async def create_secret(request: web.Request) -> web.Response:
    await request.app[PROVIDER].secrets.create(Secret.from_json(await read_json(request)))
    return empty(201)


async def update_secret(request: web.Request) -> web.Response:
    await request.app[PROVIDER].secrets.update(Secret.from_json(await read_json(request)))
    return empty(202)


async def delete_secret(request: web.Request) -> web.Response:
    """faas-cli sends the namespace in the body, the OpenFaaS UI in the query; accept both."""
    body = await read_json(request)
    if isinstance(body, dict) and not body.get("namespace") and request.query.get("namespace"):
        body = {**body, "namespace": request.query["namespace"]}
    secret = Secret.from_json(body, require_value=False)
    await request.app[PROVIDER].secrets.delete(secret.name, secret.namespace)
    return empty(202)


# --- namespaces ---------------------------------------------------------------------------------


def _namespace_body(data: object, path_name: str) -> FunctionNamespace:
    ns = FunctionNamespace.from_json(data, path_name=path_name)
    if path_name and ns.name != path_name:
        raise InvalidRequest(f"namespace name in the body ({ns.name!r}) does not match the path ({path_name!r})")
    if ns.labels.get(NAMESPACE_LABEL) != "1":
        raise InvalidRequest(f"request does not have {NAMESPACE_LABEL}=1 label")
    return ns


async def list_namespaces(request: web.Request) -> web.Response:
    return web.json_response(await request.app[PROVIDER].namespaces.list())


async def get_namespace(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["namespace"], "namespace")
    ns = await request.app[PROVIDER].namespaces.get(name)
    return web.json_response(ns.to_json())


async def create_namespace(request: web.Request) -> web.Response:
    ns = _namespace_body(await read_json(request), request.match_info["namespace"])
    await request.app[PROVIDER].namespaces.create(ns)
    return empty(201)


async def update_namespace(request: web.Request) -> web.Response:
    path_name = validate_name(request.match_info["namespace"], "namespace")
    ns = _namespace_body(await read_json(request), path_name)
    await request.app[PROVIDER].namespaces.update(ns)
    return empty(202)


async def delete_namespace(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["namespace"], "namespace")
    body = await read_optional_json(request)
    if body.get("name") not in (None, "", name):
        raise InvalidRequest(f"namespace name in the body ({body['name']!r}) does not match the path ({name!r})")
    await request.app[PROVIDER].namespaces.delete(name)
    return empty(202)


# --- logs ---------------------------------------------------------------------------------------

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool, which faas-provider uses for ``follow``."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(value)


def _parse_since(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


async def logs(request: web.Request) -> web.StreamResponse:
    """NDJSON, one line per message, flushed as it comes; ``follow`` runs until the client leaves."""
    q = request.query
    name = validate_name(q.get("name"))
    namespace = validate_namespace(q.get("namespace"))
    try:
        tail = int(q.getall("tail")[-1]) if "tail" in q else -1
        follow = _parse_bool(q.getall("follow")[-1]) if "follow" in q else False
        since = _parse_since(q["since"]) if q.get("since") else None
    except ValueError as exc:
        raise Unprocessable(f"could not parse the log request: {exc}") from exc

    # Providers validate in stream() itself (before the first message), so those errors still get a status.
    messages = request.app[PROVIDER].logs.stream(
        name, namespace, instance=q.get("instance", ""), tail=tail, since=since, follow=follow
    )
    # A reader that fails at once (journalctl exiting with an error) does so before the first
    # message: wait briefly for that, so the failure is a 500 with its reason, not an empty 200.
    first: asyncio.Future[LogMessage | None] = asyncio.ensure_future(anext(messages, None))
    try:
        await asyncio.wait((first,), timeout=FIRST_MESSAGE_WAIT)
        if first.done() and (failure := first.exception()) is not None:
            raise failure
        response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
        await response.prepare(request)
    except BaseException:
        first.cancel()
        await asyncio.wait((first,))
        await _close(messages)
        raise

    pump = asyncio.ensure_future(_pump(first, messages, response, f"{name}.{namespace}"))
    streams = request.app[LOG_STREAMS]
    streams.add(pump)
    try:
        while not pump.done():
            await asyncio.wait((pump,), timeout=DISCONNECT_POLL_SECONDS)
            transport = request.transport
            if transport is None or transport.is_closing():
                pump.cancel()
                break
    finally:
        streams.discard(pump)
        if not pump.done():
            pump.cancel()
            await asyncio.wait((pump,))
    transport = request.transport
    if transport is None or transport.is_closing():
        response.force_close()
        return response
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def _close(messages: AsyncIterator[LogMessage]) -> None:
    aclose = getattr(messages, "aclose", None)
    if aclose is not None:
        await aclose()


async def _pump(first: asyncio.Future[LogMessage | None], messages: AsyncIterator[LogMessage],
                response: web.StreamResponse, function: str) -> None:
    try:
        message = await first
        while message is not None:
            await response.write(json.dumps(message.to_json(), separators=(",", ":")).encode() + b"\n")
            message = await anext(messages, None)
    except ConnectionError:
        pass  # the client left
    except FaasdError as exc:  # the status is sent already: end the stream
        log.warning("log stream for %s ended: %s", function, exc.message)
    except Exception:
        log.exception("log stream for %s failed", function)
    finally:
        if not first.done():
            first.cancel()
            await asyncio.wait((first,))
        await _close(messages)
