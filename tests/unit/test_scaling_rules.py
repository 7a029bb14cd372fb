"""The replica labels (min/max) and the ``faasd`` field of a function's status, without containerd."""

from __future__ import annotations

import pytest

from faasd_py.errors import InvalidRequest
from faasd_py.provider.functions import MAX_REPLICAS, _check_replica_labels, _max_replicas, _min_replicas
from faasd_py.provider.instances import OOM_WINDOW, Instance
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


def _instance() -> Instance:
    return Instance(namespace="openfaas-fn", function="fn", id="fn-0", generation=1)


@pytest.mark.parametrize("oom_first", [True, False], ids=["oom-then-exit", "exit-then-oom"])
def test_an_oom_kill_is_named_whichever_event_comes_first(oom_first: bool) -> None:
    """containerd's shim reports the OOM and the exit independently; CI once saw the exit first."""
    inst = _instance()
    if oom_first:
        inst.record_oom(100.0)
        inst.record_exit(137, 100.1)
    else:
        inst.record_exit(137, 100.0)
        assert inst.last_exit == "exit status 137"
        inst.record_oom(100.1)
    assert inst.last_exit == "OOMKilled"
    assert inst.last_exit_at == (100.1 if oom_first else 100.0)


def test_an_oom_event_far_from_the_exit_or_another_status_is_not_an_oom_kill() -> None:
    late = _instance()
    late.record_exit(137, 100.0)  # SIGKILL from elsewhere
    late.record_oom(100.0 + OOM_WINDOW + 1)  # a child's OOM, much later
    assert late.last_exit == "exit status 137"

    other = _instance()
    other.record_exit(1, 100.0)
    other.record_oom(100.1)
    assert other.last_exit == "exit status 1"

    old = _instance()
    old.record_oom(100.0)
    old.record_exit(137, 100.0 + OOM_WINDOW + 1)
    assert old.last_exit == "exit status 137"
