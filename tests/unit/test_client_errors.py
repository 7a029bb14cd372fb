"""containerd client pieces that need no containerd: error mapping, event decoding, connect failure."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from faasd_py.errors import (
    Conflict,
    ContainerdAlreadyExists,
    ContainerdError,
    ContainerdNotFound,
    ContainerdUnavailable,
    NotFound,
)
from faasd_py.runtime._api.api.events import task_pb2 as task_events
from faasd_py.runtime.client import ContainerdClient, decode_event_payload, map_rpc_error


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "cls", "status"),
    [
        (grpc.StatusCode.NOT_FOUND, ContainerdNotFound, 404),
        (grpc.StatusCode.ALREADY_EXISTS, ContainerdAlreadyExists, 409),
        (grpc.StatusCode.UNAVAILABLE, ContainerdUnavailable, 503),
        (grpc.StatusCode.FAILED_PRECONDITION, ContainerdError, 500),
    ],
)
def test_grpc_codes_map_to_domain_errors(code: grpc.StatusCode, cls: type[ContainerdError], status: int) -> None:
    err = map_rpc_error(rpc_error(code, 'container "f1": not found'), "get container openfaas-fn/f1")
    assert type(err) is cls
    assert err.status == status
    assert err.code == code.name
    assert "get container openfaas-fn/f1" in err.message and 'container "f1": not found' in err.message


def test_not_found_and_exists_are_also_the_generic_client_errors() -> None:
    assert isinstance(map_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, ""), "x"), NotFound)
    assert isinstance(map_rpc_error(rpc_error(grpc.StatusCode.ALREADY_EXISTS, ""), "x"), Conflict)


def test_event_payload_is_decoded_from_its_type_url() -> None:
    exit_event = task_events.TaskExit(container_id="f1", pid=42, exit_status=137)
    payload = any_pb2.Any(type_url="containerd.events.TaskExit", value=exit_event.SerializeToString())
    decoded = decode_event_payload(payload)
    assert isinstance(decoded, task_events.TaskExit)
    assert (decoded.container_id, decoded.exit_status) == ("f1", 137)
    prefixed = any_pb2.Any(type_url="types.googleapis.com/containerd.events.TaskOOM", value=b"\n\x02f1")
    assert decode_event_payload(prefixed).container_id == "f1"
    assert decode_event_payload(any_pb2.Any(type_url="example.com/Unknown", value=b"x")) is None


async def test_connect_to_a_missing_socket_is_unavailable(tmp_path: Path) -> None:
    client = ContainerdClient(str(tmp_path / "nope.sock"))
    with pytest.raises(ContainerdUnavailable, match="does not exist"):
        await client.connect()
    with pytest.raises(ContainerdUnavailable, match="not connected"):
        await client.list_namespaces()


async def test_connect_to_a_dead_socket_is_unavailable(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))  # bound but never listening: connections are refused
    try:
        client = ContainerdClient(str(path), timeout=2)
        with pytest.raises(ContainerdUnavailable, match="does not answer"):
            await client.connect()
    finally:
        s.close()
