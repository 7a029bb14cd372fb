"""The replica labels (min/max) and the ``faasd`` field of a function's status, without containerd."""

from __future__ import annotations

import pytest

from faasd_py.errors import InvalidRequest
from faasd_py.provider.functions import MAX_REPLICAS, _check_replica_labels, _max_replicas, _min_replicas
from faasd_py.types import FunctionDeployment, FunctionStatus, RuntimeState


def dep(**labels: str) -> FunctionDeployment:
    return FunctionDeployment.from_json({"service": "f", "image": "img", "labels": labels})


def test_min_and_max_default_and_clamp_to_the_host_cap() -> None:
    assert (_min_replicas(dep()), _max_replicas(dep())) == (1, MAX_REPLICAS)
    labels = {"com.openfaas.scale.min": "3", "com.openfaas.scale.max": "5"}
    assert (_min_replicas(dep(**labels)), _max_replicas(dep(**labels))) == (3, 5)
    huge = {"com.openfaas.scale.min": "1000", "com.openfaas.scale.max": "1000"}
    assert (_min_replicas(dep(**huge)), _max_replicas(dep(**huge))) == (MAX_REPLICAS, MAX_REPLICAS)
    assert _min_replicas(dep(**{"com.openfaas.scale.min": "0"})) == 1  # a deploy always starts one
    _check_replica_labels(dep(**labels))
    _check_replica_labels(dep(**{"com.openfaas.scale.min": "4", "com.openfaas.scale.max": "4"}))


@pytest.mark.parametrize(("labels", "says"), [
    ({"com.openfaas.scale.min": "3", "com.openfaas.scale.max": "2"}, "must not be greater than"),
    ({"com.openfaas.scale.max": "0"}, "must be at least 1"),
    ({"com.openfaas.scale.max": "-2"}, "must be at least 1"),
    ({"com.openfaas.scale.max": "lots"}, "must be an integer"),
    ({"com.openfaas.scale.min": "1.5"}, "must be an integer"),
])
def test_invalid_replica_labels_are_a_400_that_names_the_label(labels: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _check_replica_labels(dep(**labels))
    assert err.value.status == 400
    assert says in err.value.message and "com.openfaas.scale." in err.value.message


def test_the_faasd_field_is_added_only_when_known() -> None:
    plain = FunctionStatus(deployment=dep()).to_json()
    assert "faasd" not in plain
    full = FunctionStatus(deployment=dep(), runtime=RuntimeState("crashloop", 3, "OOMKilled", 2)).to_json()
    assert full["faasd"] == {"state": "crashloop", "restarts": 3, "lastExit": "OOMKilled", "wakes": 2}
    assert full["name"] == "f" and full["replicas"] == 0  # the OpenFaaS fields are unchanged
