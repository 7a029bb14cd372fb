"""POST /system/alert: AlertManager's webhook, scaling functions up while an alert fires.

As in the OpenFaaS gateway (gateway-behaviour.md §5.3): for each alert, ``labels.function_name``
(``name`` or ``name.namespace``) is scaled up by a step of ``ceil(max * factor / 100)`` replicas
while it fires, capped at its max, and back to its min when it resolves. min, max and factor come
from the ``com.openfaas.scale.*`` labels (defaults 1, 5 and 10). Differences: the whole body is
checked before anything is scaled (a malformed alert is a 400 and nothing happens), a max label
above 5 is honoured up to the provider's own cap, and a failed alert answers its error's own
status, so AlertManager, which retries 5xx, does not retry an alert about a deleted function.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from aiohttp import web

from faasd_py.errors import FaasdError, InvalidRequest
from faasd_py.gateway.invoke import split_function_name
from faasd_py.gateway.keys import PROVIDER
from faasd_py.gateway.system import read_json
from faasd_py.provider.contract import Functions
from faasd_py.types import (
    LABEL_SCALE_MAX,
    LABEL_SCALE_MIN,
    FunctionStatus,
    ScaleServiceRequest,
    validate_name,
    validate_namespace,
)

log = logging.getLogger(__name__)

LABEL_SCALE_FACTOR = "com.openfaas.scale.factor"
DEFAULT_MIN, DEFAULT_MAX, DEFAULT_FACTOR = 1, 5, 10


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    namespace: str
    firing: bool


def parse_alerts(body: object) -> list[Alert]:
    """The Alertmanager payload with the fields the spec requires; each alert's own ``status`` decides."""
    if not (isinstance(body, dict) and _strings(body, "status", "receiver") and isinstance(body.get("alerts"), list)):
        raise InvalidRequest("Unable to parse alert, bad format: expected status, receiver and an alerts list")
    alerts: list[Alert] = []
    for i, item in enumerate(body["alerts"]):
        labels = item.get("labels") if isinstance(item, dict) else None
        if not (isinstance(labels, dict) and _strings(item, "status")
                and _strings(labels, "alertname", "function_name")):
            raise InvalidRequest(
                f"Unable to parse alert, bad format: alerts[{i}] needs a status and labels alertname and function_name"
            )
        name, namespace = split_function_name(labels["function_name"])
        alerts.append(Alert(validate_name(name, f"alerts[{i}] function_name"), validate_namespace(namespace),
                            item["status"] == "firing"))
    return alerts


def _strings(data: dict[str, object], *keys: str) -> bool:
    return all(isinstance(data.get(key), str) for key in keys)


def _label(status: FunctionStatus, label: str, default: int) -> int:
    """Unparsable labels fall back to the default, as OpenFaaS's extractLabelValue does."""
    try:
        return int(status.deployment.labels.get(label, default))
    except ValueError:
        return default


def target_replicas(status: FunctionStatus, firing: bool) -> int:
    low = _label(status, LABEL_SCALE_MIN, DEFAULT_MIN)
    high = _label(status, LABEL_SCALE_MAX, DEFAULT_MAX)
    factor = _label(status, LABEL_SCALE_FACTOR, DEFAULT_FACTOR)
    if not 0 <= factor <= 100:
        raise InvalidRequest(f"{status.name}: label {LABEL_SCALE_FACTOR} must be between 0 and 100, got {factor}")
    step = math.ceil(high * factor / 100)
    if firing and step > 0:
        return min(status.replicas + step, high)
    return low


async def _apply(functions: Functions, alert: Alert) -> None:
    status = await functions.get(alert.name, alert.namespace)
    target = target_replicas(status, alert.firing)
    if target != status.replicas:
        log.info("alert: scaling %s.%s from %d to %d", alert.name, alert.namespace, status.replicas, target)
        await functions.scale(ScaleServiceRequest(alert.name, target, alert.namespace))


async def handle_alert(request: web.Request) -> web.Response:
    alerts = parse_alerts(await read_json(request))
    functions = request.app[PROVIDER].functions
    failures: list[tuple[int, str]] = []
    for i, alert in enumerate(alerts):
        try:
            await _apply(functions, alert)
        except FaasdError as exc:
            failures.append((exc.status, f"[{i}] {exc.message}"))
    if failures:
        status = max(code for code, _ in failures)
        return web.Response(status=status, text="\n".join(line for _, line in failures), content_type="text/plain")
    return web.Response()
