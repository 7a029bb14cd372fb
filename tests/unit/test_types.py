import pytest

from faasd_py.errors import InvalidRequest
from faasd_py.types import (
    DEFAULT_NAMESPACE,
    FunctionDeployment,
    FunctionStatus,
    Secret,
    cpu_millis,
    memory_bytes,
)


def test_deployment_round_trips_faas_cli_body() -> None:
    body = {
        "service": "env-fn", "image": "ghcr.io/openfaas/alpine:latest", "namespace": "openfaas-fn",
        "envProcess": "env", "envVars": {"A": "x=y=z", "B": "2"}, "constraints": ["c"], "secrets": ["s1"],
        "labels": {"com.openfaas.scale.min": "1"}, "annotations": {"topic": '{"a": [1, 2]}' * 500},
        "limits": {"memory": "128Mi", "cpu": "100m"}, "requests": {"memory": "64Mi"},
        "readOnlyRootFilesystem": True,
    }
    dep = FunctionDeployment.from_json(body)
    assert dep.to_json() == body
    assert dep.memory_limit_bytes == 128 * 2**20
    assert dep.cpu_limit_millis == 100


def test_defaults_and_status_json() -> None:
    dep = FunctionDeployment.from_json({"service": "fn1", "image": "alpine", "labels": None})
    assert dep.namespace == DEFAULT_NAMESPACE
    out = FunctionStatus(dep, replicas=1, available_replicas=1).to_json()
    assert out["name"] == "fn1" and out["replicas"] == 1 and out["createdAt"] is None
    assert "service" not in out


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"image": "alpine"},
        {"service": "Bad_Name", "image": "alpine"},
        {"service": "a" * 64, "image": "alpine"},
        {"service": "fn", "image": ""},
        {"service": "fn", "image": "alpine", "namespace": "../etc"},
        {"service": "fn", "image": "alpine", "envVars": {"A": 1}},
        {"service": "fn", "image": "alpine", "limits": {"memory": "lots"}},
        {"service": "fn", "image": "alpine", "secrets": ["../x"]},
        {"service": "fn", "image": "alpine", "readOnlyRootFilesystem": "yes"},
        # valid-looking, but runc would fail on them after the container was made (a 500)
        {"service": "fn", "image": "alpine", "limits": {"memory": "1e400"}},
        {"service": "fn", "image": "alpine", "limits": {"memory": "9999999999999999999999Ei"}},
        {"service": "fn", "image": "alpine", "limits": {"memory": "1"}},
        {"service": "fn", "image": "alpine", "limits": {"memory": "5Mi"}},
        {"service": "fn", "image": "alpine", "limits": {"cpu": "1e308"}},
        {"service": "fn", "image": "alpine", "requests": {"memory": "1e400"}},
        {"service": "fn", "image": "alpine", "envVars": {"BIG": "x" * 200_000}},
        {"service": "fn", "image": "alpine", "envVars": {f"V{i}": "x" * 100_000 for i in range(11)}},
        {"service": "fn", "image": "alpine", "envProcess": "x" * 200_000},
    ],
)
def test_invalid_deployments_are_rejected(body: object) -> None:
    with pytest.raises(InvalidRequest):
        FunctionDeployment.from_json(body)


def test_quantities() -> None:
    assert memory_bytes("1G") == 10**9
    assert memory_bytes("1.5Gi") == int(1.5 * 2**30)
    assert cpu_millis("0.5") == 500
    assert cpu_millis("2") == 2000
    with pytest.raises(InvalidRequest):
        cpu_millis("0.0001")
    assert memory_bytes("7Ei") == 7 * 2**60  # 8Ei is one byte too many for an int64
    assert cpu_millis("1000000") == 10**9  # the largest: a million cores
    for too_big in (lambda: memory_bytes("8Ei"), lambda: cpu_millis("1000001")):
        with pytest.raises(InvalidRequest):
            too_big()


def test_bounds_leave_room_for_what_functions_use() -> None:
    """Small requests, big hosts and generous env stay valid: only what runc/execve refuse is not."""
    dep = FunctionDeployment.from_json({
        "service": "fn", "image": "alpine", "requests": {"memory": "1Mi", "cpu": "1m"},
        "limits": {"memory": "6Mi", "cpu": "512"}, "envVars": {"CERT": "x" * 100_000, "B": "y" * 100_000},
    })
    assert dep.memory_limit_bytes == 6 * 2**20 and dep.cpu_limit_millis == 512_000


def test_secret_raw_value_wins() -> None:
    s = Secret.from_json({"name": "s1", "value": "text", "rawValue": "AAEC"})
    assert s.value == b"\x00\x01\x02"
    with pytest.raises(InvalidRequest):
        Secret.from_json({"name": "s1", "rawValue": "!!"})


def test_go_durations() -> None:
    from faasd_py.types import parse_duration

    assert parse_duration("90s") == 90
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2
    for bad in ("", "10x", "s", "1m junk"):
        with pytest.raises(InvalidRequest):
            parse_duration(bad)


@pytest.mark.parametrize(("body", "message"), [
    ({"service": "fn", "image": "alpine", "namespace": 5}, "invalid namespace: must be a string, got int 5"),
    ({"service": ["fn"], "image": "alpine"}, "invalid function name (service): must be a string, got list"),
    ({"image": "alpine"}, "function name (service) is required"),
    ({"service": "fn", "image": "alpine", "secrets": [7]}, "secrets must be a list of strings"),
])
def test_a_wrong_type_is_named_as_such(body: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        FunctionDeployment.from_json(body)
    assert message in err.value.message
