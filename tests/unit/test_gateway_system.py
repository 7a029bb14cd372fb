"""/system/* driven the way faas-cli drives it (faas-cli-contract.md), against the fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from faasd_py.errors import RuntimeFailure
from faasd_py.types import FunctionNamespace, LogMessage
from tests.unit.gateway_support import AUTH, Gateway, ndjson, running_gateway

DEPLOY_BODY = {
    "service": "env-fn", "image": "ghcr.io/openfaas/alpine:latest", "namespace": "openfaas-fn", "envProcess": "env",
    "envVars": {"A": "from-file", "B": "2"}, "constraints": ["node.platform.os == linux"], "secrets": ["s1"],
    "labels": {"com.openfaas.scale.min": "1"}, "annotations": {"topic": "cron"},
    "limits": {"memory": "128Mi", "cpu": "100m"}, "requests": {"memory": "64Mi"}, "readOnlyRootFilesystem": True,
}
JSON = {**AUTH, "Content-Type": "application/json", "User-Agent": "faas-cli/0.17.0"}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path) as gateway:
        yield gateway


async def test_login_is_a_plain_list_with_basic_auth(gw: Gateway) -> None:
    resp = await gw.client.get("/system/functions", headers={**AUTH, "User-Agent": "Go-http-client/1.1"})
    assert resp.status == 200
    assert await resp.json() == []


async def test_deploy_put_404_then_post_then_update(gw: Gateway) -> None:
    c = gw.client
    put = await c.put("/system/functions", json=DEPLOY_BODY, headers=JSON)
    assert put.status == 404  # faas-cli falls back to POST on exactly this
    post = await c.post("/system/functions", json=DEPLOY_BODY, headers=JSON)
    assert post.status == 202
    assert gw.provider.fake_functions.deployments[("env-fn", "openfaas-fn")].to_json() == DEPLOY_BODY
    again = await c.put("/system/functions", json={**DEPLOY_BODY, "image": "alpine:3"}, headers=JSON)
    assert again.status == 202
    assert gw.provider.fake_functions.deployments[("env-fn", "openfaas-fn")].image == "alpine:3"
    conflict = await c.post("/system/functions", json=DEPLOY_BODY, headers=JSON)
    assert conflict.status == 409


async def test_list_and_describe(gw: Gateway) -> None:
    gw.deploy("fn1")
    gw.deploy("fn2", "dev")
    gw.provider.fake_namespaces.items["dev"] = FunctionNamespace("dev", labels={"openfaas": "1"})
    listed = await (await gw.client.get("/system/functions", headers=AUTH)).json()
    assert [f["name"] for f in listed] == ["fn1"]
    assert listed[0]["createdAt"] == "2026-01-02T03:04:05Z" and listed[0]["replicas"] == 1
    dev = await (await gw.client.get("/system/functions?namespace=dev", headers=AUTH)).json()
    assert [f["name"] for f in dev] == ["fn2"]

    one = await gw.client.get("/system/function/fn2?namespace=dev&usage=1", headers=AUTH)
    assert one.status == 200
    body = await one.json()
    assert body["name"] == "fn2" and body["namespace"] == "dev" and body["availableReplicas"] == 0
    missing = await gw.client.get("/system/function/nope?usage=1", headers=AUTH)
    assert missing.status == 404
    assert "nope" in await missing.text()
    unknown_ns = await gw.client.get("/system/functions?namespace=ghost", headers=AUTH)
    assert unknown_ns.status == 404


async def test_remove(gw: Gateway) -> None:
    gw.deploy("fn1")
    body = {"functionName": "fn1", "namespace": "openfaas-fn"}
    assert (await gw.client.delete("/system/functions", json=body, headers=JSON)).status == 202
    assert (await gw.client.delete("/system/functions", json=body, headers=JSON)).status == 404
    no_ns = await gw.client.delete("/system/functions", json={"functionName": "fn1"}, headers=JSON)
    assert no_ns.status == 404


async def test_scale(gw: Gateway) -> None:
    gw.deploy("fn1")
    resp = await gw.client.post("/system/scale-function/fn1", json={"serviceName": "fn1", "replicas": 0}, headers=JSON)
    assert resp.status == 202
    by_path = await gw.client.post("/system/scale-function/fn1?namespace=openfaas-fn", json={"replicas": 2},
                                   headers=JSON)
    assert by_path.status == 202
    assert [(s.service_name, s.replicas, s.namespace) for s in gw.provider.fake_functions.scaled] == [
        ("fn1", 0, "openfaas-fn"), ("fn1", 2, "openfaas-fn")]
    bad = await gw.client.post("/system/scale-function/fn1", json={"replicas": -1}, headers=JSON)
    assert bad.status == 400


async def test_info_has_the_shape_faas_cli_version_reads(gw: Gateway) -> None:
    info = await (await gw.client.get("/system/info", headers=AUTH)).json()
    assert info["provider"]["provider"] == "faasd-py"
    assert info["provider"]["orchestration"] == "containerd"
    assert set(info["provider"]["version"]) >= {"release", "sha"}
    assert set(info["version"]) == {"release", "sha", "commit_message"}
    assert isinstance(info["arch"], str) and info["arch"]


async def test_healthz_follows_provider_readiness_without_auth(gw: Gateway) -> None:
    gw.provider.is_ready = False
    assert (await gw.client.get("/healthz")).status == 503
    gw.provider.is_ready = True
    resp = await gw.client.get("/healthz")
    assert resp.status == 200


async def test_root_redirects_to_ui_and_ui_is_served(gw: Gateway) -> None:
    resp = await gw.client.get("/", allow_redirects=False)
    assert resp.status == 307 and resp.headers["Location"] == "/ui/"
    ui = await gw.client.get("/ui/", headers=AUTH)
    assert ui.status == 200 and "<html" in await ui.text()
    assert (await gw.client.get("/ui/index.html", headers=AUTH)).status == 200
    assert (await gw.client.get("/ui/../app.py", headers=AUTH)).status == 404
    assert (await gw.client.get("/ui/%2e%2e/app.py", headers=AUTH)).status == 404


async def test_secrets_lifecycle(gw: Gateway) -> None:
    c = gw.client
    created = await c.post("/system/secrets", json={"name": "s1", "value": "v1"}, headers=JSON)
    assert created.status == 201
    dup = await c.post("/system/secrets", json={"name": "s1", "value": "v1"}, headers=JSON)
    assert dup.status == 409
    raw = await c.post("/system/secrets", json={"name": "s2", "namespace": "openfaas-fn", "value": "t",
                                                "rawValue": "AAEC"}, headers=JSON)
    assert raw.status == 201
    assert gw.provider.fake_secrets.items[("s2", "openfaas-fn")].value == b"\x00\x01\x02"
    listed = await (await c.get("/system/secrets", headers=AUTH)).json()
    assert listed == [{"name": "s1", "namespace": "openfaas-fn"}, {"name": "s2", "namespace": "openfaas-fn"}]
    assert (await c.put("/system/secrets", json={"name": "s1", "value": "v2"}, headers=JSON)).status == 202
    assert gw.provider.fake_secrets.items[("s1", "openfaas-fn")].value == b"v2"
    assert (await c.put("/system/secrets", json={"name": "zz", "value": "v"}, headers=JSON)).status == 404
    assert (await c.delete("/system/secrets", json={"name": "s1"}, headers=JSON)).status == 202
    assert (await c.delete("/system/secrets", json={"name": "s1"}, headers=JSON)).status == 404
    bad = await c.post("/system/secrets", json={"name": "../etc", "value": "v"}, headers=JSON)
    assert bad.status == 400


async def test_secret_delete_takes_namespace_from_body_or_query(gw: Gateway) -> None:
    gw.provider.fake_namespaces.items["dev"] = FunctionNamespace("dev", labels={"openfaas": "1"})
    for name in ("a", "b"):
        r = await gw.client.post("/system/secrets", json={"name": name, "namespace": "dev", "value": "v"}, headers=JSON)
        assert r.status == 201
    body = await gw.client.delete("/system/secrets", json={"name": "a", "namespace": "dev"}, headers=JSON)
    query = await gw.client.delete("/system/secrets?namespace=dev", json={"name": "b"}, headers=JSON)
    assert (body.status, query.status) == (202, 202)
    assert gw.provider.fake_secrets.items == {}


async def test_namespaces_lifecycle(gw: Gateway) -> None:
    c = gw.client
    sdk = {**AUTH, "User-Agent": "openfaas-go-sdk"}
    assert await (await c.get("/system/namespaces", headers=sdk)).json() == ["openfaas-fn"]
    body = {"name": "dev", "annotations": {"openfaas": "1"}, "labels": {"openfaas": "1", "team": "a"}}
    assert (await c.post("/system/namespace/", json=body, headers=sdk)).status == 201
    assert (await c.post("/system/namespace/", json=body, headers=sdk)).status == 409
    no_label = await c.post("/system/namespace/", json={"name": "x", "labels": {"team": "a"}}, headers=sdk)
    assert no_label.status == 400
    assert "openfaas=1" in await no_label.text()
    got = await c.get("/system/namespace/dev", headers=sdk)
    assert got.status == 200
    assert (await got.json())["labels"] == {"openfaas": "1", "team": "a"}
    assert (await c.get("/system/namespace/nope", headers=sdk)).status == 404
    upd = await c.put("/system/namespace/dev", json={**body, "labels": {"openfaas": "1"}}, headers=sdk)
    assert upd.status == 202
    assert gw.provider.fake_namespaces.items["dev"].labels == {"openfaas": "1"}
    mismatch = await c.put("/system/namespace/dev", json={**body, "name": "other"}, headers=sdk)
    assert mismatch.status == 400
    assert (await c.put("/system/namespace/nope", json={"labels": {"openfaas": "1"}}, headers=sdk)).status == 404
    assert await (await c.get("/system/namespaces", headers=sdk)).json() == ["openfaas-fn", "dev"]
    delete_body = {"name": "dev", "labels": {"openfaas": "1"}}
    assert (await c.delete("/system/namespace/dev", json=delete_body, headers=sdk)).status == 202
    assert (await c.delete("/system/namespace/dev", headers=sdk)).status == 404


def _msg(text: str, second: int = 0) -> LogMessage:
    return LogMessage("fn1", "openfaas-fn", "inst-1", datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC), text)


async def test_logs_ndjson_without_follow(gw: Gateway) -> None:
    gw.provider.fake_logs.history = [_msg("one\n", 1), _msg("two\n", 2), _msg("three\n", 3)]
    resp = await gw.client.get("/system/logs?follow=false&name=fn1&tail=2", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(await resp.text())
    assert [m["text"] for m in lines] == ["two\n", "three\n"]
    assert lines[0] == {"name": "fn1", "namespace": "openfaas-fn", "instance": "inst-1",
                        "timestamp": "2026-01-01T00:00:02Z", "text": "two\n"}
    since = await gw.client.get("/system/logs?name=fn1&since=2026-01-01T00:00:03Z&tail=-1", headers=AUTH)
    assert [m["text"] for m in ndjson(await since.text())] == ["three\n"]
    req = gw.provider.fake_logs.requests[-1]
    assert req.since == datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC) and req.tail == -1 and not req.follow


@pytest.mark.parametrize("follow", ["false", "true"])
async def test_a_log_reader_that_fails_at_once_is_a_500_with_its_reason(gw: Gateway, follow: str) -> None:
    gw.provider.fake_logs.history = [_msg("one\n", 1)]
    gw.provider.fake_logs.fail_after = 0
    resp = await gw.client.get(f"/system/logs?name=fn1&follow={follow}", headers=AUTH)
    assert resp.status == 500
    assert await resp.text() == "function log request failed: journalctl exited with status 1: broken"
    assert gw.provider.fake_logs.closed == 1


async def test_a_log_reader_failing_mid_stream_ends_the_stream_it_started(gw: Gateway) -> None:
    """The 200 is sent by then: what was read stays, the stream ends (and the log says why)."""
    gw.provider.fake_logs.history = [_msg("one\n", 1), _msg("two\n", 2)]
    gw.provider.fake_logs.fail_after = 1
    resp = await gw.client.get("/system/logs?name=fn1", headers=AUTH)
    assert resp.status == 200
    assert [m["text"] for m in ndjson(await resp.text())] == ["one\n"]


async def test_a_follow_stream_without_entries_answers_200_while_it_waits(gw: Gateway) -> None:
    resp = await asyncio.wait_for(gw.client.get("/system/logs?name=fn1&follow=true", headers=AUTH), 5)
    assert resp.status == 200
    gw.provider.fake_logs.push(_msg("late\n"))
    line = await asyncio.wait_for(resp.content.readline(), 5)
    assert ndjson(line.decode())[0]["text"] == "late\n"
    resp.close()


@pytest.mark.parametrize("query", ["tail=ten", "follow=maybe", "since=yesterday"])
async def test_logs_bad_parameters_are_422(gw: Gateway, query: str) -> None:
    resp = await gw.client.get(f"/system/logs?name=fn1&{query}", headers=AUTH)
    assert resp.status == 422


async def test_logs_follow_streams_each_line_until_the_client_leaves(gw: Gateway) -> None:
    logs = gw.provider.fake_logs
    logs.history = [_msg("old\n")]
    resp = await gw.client.get("/system/logs?follow=true&name=fn1&tail=-1", headers=AUTH)
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readline(), 5)
    assert ndjson(first.decode())[0]["text"] == "old\n"
    for i in range(3):  # each pushed line arrives on its own: flushed per line, no timeout cut-off
        logs.push(_msg(f"live {i}\n"))
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert ndjson(line.decode())[0]["text"] == f"live {i}\n"
    resp.close()  # the client disconnects
    for _ in range(200):
        if logs.closed == 1:
            break
        await asyncio.sleep(0.01)
    assert logs.closed == 1 and logs.followers == []


async def test_open_log_followers_do_not_hold_shutdown(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        resp = await gw.client.get("/system/logs?follow=true&name=fn1", headers=AUTH)
        assert resp.status == 200
        await asyncio.sleep(0.05)
        assert len(gw.provider.fake_logs.followers) == 1
        closing = asyncio.ensure_future(gw.client.close())
        await asyncio.wait_for(closing, 5)
        assert gw.provider.fake_logs.closed == 1


async def test_invalid_json_is_400_with_the_parser_message(gw: Gateway) -> None:
    resp = await gw.client.post("/system/functions", data=b"{not json", headers=JSON)
    assert resp.status == 400
    text = await resp.text()
    assert text.startswith("invalid JSON:") and "line 1" in text
    assert resp.headers["Content-Type"].startswith("text/plain")
    wrong_shape = await gw.client.post("/system/functions", json=["a"], headers=JSON)
    assert wrong_shape.status == 400


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"[" * 100_000, "/system/functions"),  # deeper than the parser's stack: was RecursionError, a 500
        (b'{"service":"x","image":"i","n":' + b"9" * 5000 + b"}", "/system/secrets"),  # int over 4300 digits
        (b'{"serviceName":"fn1","replicas":' + b"1" * 5000 + b"}", "/system/scale-function/fn1"),
        (b"[" * 100_000, "/system/namespace/"),
    ],
)
async def test_pathological_json_is_400_not_500(gw: Gateway, body: bytes, path: str) -> None:
    resp = await gw.client.post(path, data=body, headers=JSON)
    assert resp.status == 400
    assert (await resp.text()).startswith("invalid JSON:")


async def test_a_body_that_does_not_match_its_content_encoding_is_400(gw: Gateway) -> None:
    """The test server inflates bodies (the daemon's serve() does not): a bad gzip stream was a 500."""
    resp = await gw.client.post("/system/functions", data=b"not gzip",
                                headers={**JSON, "Content-Encoding": "gzip"})
    assert resp.status == 400
    assert (await resp.text()).startswith("cannot read the request body")


async def test_oversized_system_body_is_413(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, max_json_body=1000) as gw:
        big = {"service": "fn", "image": "x", "envVars": {"A": "x" * 2000}}
        assert (await gw.client.post("/system/functions", json=big, headers=JSON)).status == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            yield b'{"service": "fn", "image": "x", "envVars": {"A": "'
            yield b"x" * 2000
            yield b'"}}'

        resp = await gw.client.post("/system/functions", data=chunked(), headers=JSON)
        assert resp.status == 413


async def test_unknown_route_404_wrong_method_405(gw: Gateway) -> None:
    assert (await gw.client.get("/nope")).status == 404
    assert (await gw.client.get("/system/nope", headers=AUTH)).status == 404
    assert (await gw.client.patch("/system/functions", headers=AUTH)).status == 405
    assert (await gw.client.post("/system/info", headers=AUTH)).status == 405


async def test_unexpected_errors_are_500_without_traceback(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    async def boom(namespace: str) -> list[object]:
        raise KeyError("secret internals")

    gw.provider.fake_functions.list = boom  # type: ignore[method-assign,assignment]
    resp = await gw.client.get("/system/functions", headers=AUTH)
    assert resp.status == 500
    text = await resp.text()
    assert "Traceback" not in text and "secret internals" not in text
    assert any("GET /system/functions failed" in r.getMessage() for r in caplog.records)


async def test_domain_errors_keep_their_status_and_message(gw: Gateway) -> None:
    async def fail(namespace: str) -> list[object]:
        raise RuntimeFailure("containerd: task create failed: no space left")

    gw.provider.fake_functions.list = fail  # type: ignore[method-assign,assignment]
    resp = await gw.client.get("/system/functions", headers=AUTH)
    assert resp.status == 500
    assert await resp.text() == "containerd: task create failed: no space left"
