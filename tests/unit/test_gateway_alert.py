"""POST /system/alert: AlertManager's webhook scales functions (gateway-behaviour.md §5.3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faasd_py.errors import InvalidRequest
from faasd_py.gateway.alert import parse_alerts, target_replicas
from faasd_py.types import FunctionDeployment, FunctionStatus
from tests.unit.gateway_support import AUTH, Gateway, running_gateway


def alert(*items: tuple[str, str]) -> dict[str, Any]:
    """An AlertManager body with one alert per (status, function_name)."""
    return {
        "receiver": "scale-up", "status": items[0][0] if items else "firing",
        "alerts": [{"status": s, "labels": {"alertname": "APIHighInvocationRate", "function_name": fn}}
                   for s, fn in items],
    }


def status(replicas: int, **labels: str) -> FunctionStatus:
    return FunctionStatus(FunctionDeployment(service="fn", image="img", labels=labels), replicas=replicas)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path) as gateway:
        yield gateway


@pytest.mark.parametrize(
    ("replicas", "labels", "firing", "expected"),
    [
        (1, {}, True, 2),  # step ceil(5 * 10 / 100) = 1
        (5, {}, True, 5),  # capped at max
        (1, {"com.openfaas.scale.max": "20", "com.openfaas.scale.factor": "25"}, True, 6),  # step 5
        (1, {"com.openfaas.scale.factor": "0"}, True, 1),  # factor 0: alerts never scale up
        (4, {}, False, 1),  # resolved: back to min
        (4, {"com.openfaas.scale.min": "2"}, False, 2),
        (0, {}, False, 1),  # resolved wakes a function scaled to zero, as in OpenFaaS
        (1, {"com.openfaas.scale.max": "x"}, True, 2),  # unparsable label: its default
    ],
)
def test_target_replicas(replicas: int, labels: dict[str, str], firing: bool, expected: int) -> None:
    assert target_replicas(status(replicas, **labels), firing) == expected


def test_factor_out_of_range_is_the_function_s_mistake() -> None:
    with pytest.raises(InvalidRequest, match="factor"):
        target_replicas(status(1, **{"com.openfaas.scale.factor": "101"}), True)


@pytest.mark.parametrize(
    "body",
    [
        [], {"alerts": []}, {"status": "firing", "receiver": "r", "alerts": {}},
        {"status": "firing", "receiver": "r", "alerts": [1]},
        {"status": "firing", "receiver": "r", "alerts": [{"status": "firing", "labels": {"function_name": "fn"}}]},
        alert(("firing", "Not_A_Name")),
    ],
)
def test_malformed_alerts_are_rejected_whole(body: object) -> None:
    with pytest.raises(InvalidRequest, match="alert"):
        parse_alerts(body)


def test_function_name_may_carry_the_namespace() -> None:
    parsed = parse_alerts(alert(("firing", "fn.dev"), ("resolved", "fn2"), ("firing", "fn3.")))
    assert [(a.name, a.namespace, a.firing) for a in parsed] == [
        ("fn", "dev", True), ("fn2", "openfaas-fn", False), ("fn3", "openfaas-fn", True)]


async def test_firing_scales_up_and_resolved_scales_back(gw: Gateway) -> None:
    gw.deploy("fn1")
    fake = gw.provider.fake_functions
    for expected in (2, 3):
        resp = await gw.client.post("/system/alert", json=alert(("firing", "fn1")), headers=AUTH)
        assert resp.status == 200 and await resp.text() == ""
        assert fake.replicas[("fn1", "openfaas-fn")] == expected
    resp = await gw.client.post("/system/alert", json=alert(("resolved", "fn1.openfaas-fn")), headers=AUTH)
    assert resp.status == 200
    assert [s.replicas for s in fake.scaled] == [2, 3, 1]
    again = await gw.client.post("/system/alert", json=alert(("resolved", "fn1")), headers=AUTH)
    assert again.status == 200 and len(fake.scaled) == 3  # already at min: no scale call


async def test_failures_are_reported_per_alert_with_their_own_status(gw: Gateway) -> None:
    gw.deploy("fn1")
    resp = await gw.client.post("/system/alert", json=alert(("firing", "gone"), ("firing", "fn1")), headers=AUTH)
    assert resp.status == 404  # not 500: AlertManager would retry that forever
    assert await resp.text() == "[0] function gone.openfaas-fn not found"
    assert [s.service_name for s in gw.provider.fake_functions.scaled] == ["fn1"]  # the others still apply


async def test_bad_bodies_and_missing_credentials(gw: Gateway) -> None:
    assert (await gw.client.post("/system/alert", data=b"{", headers=AUTH)).status == 400
    bad = await gw.client.post("/system/alert", json={"alerts": "x"}, headers=AUTH)
    assert bad.status == 400 and "Unable to parse alert, bad format" in await bad.text()
    assert (await gw.client.post("/system/alert", json=alert(("firing", "fn1")))).status == 401
