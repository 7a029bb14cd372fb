"""The real daemon against the OpenFaaS gateway spec (tests/contract/openapi.py): a subset.

Valid requests answer as documented (or as listed there), and generated requests to the read-only
operations never get a 5xx and answer in the documented shape. Only reads are generated: a
generated deploy would make the daemon pull from whatever registry host the generator made up.
schemathesis sends its requests synchronously, so they go from a worker thread while the daemon
serves on the session's loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import schemathesis
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.contract.openapi import FUZZ_CHECKS, SPEC, STATUS_DEVIATIONS, no_traceback, status_is_known
from tests.integration.conftest import PushedImages
from tests.integration.daemon_harness import DaemonHandle, function_body

FN = "contract-echo"
NS = "openfaas-fn"
GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}

schema = schemathesis.openapi.from_dict(SPEC, config=schemathesis.Config.from_dict({
    "dictionaries": {"functions": {"values": [FN]}, "namespaces": {"values": [NS]}},
    "parameters": {
        "path.functionName": {"dictionary": "functions", "probability": 0.5},
        "query.name": {"dictionary": "functions", "probability": 0.5},
        "query.namespace": {"dictionary": "namespaces", "probability": 0.5},
    },
}))

# (method, spec path, request overrides, expected status), in this order
VALID: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/healthz", {}, 200),
    ("GET", "/system/info", {}, 200),
    ("GET", "/system/namespaces", {}, 200),
    ("GET", "/system/functions", {}, 200),
    ("GET", "/system/function/{functionName}", {"path_parameters": {"functionName": FN}, "query": {"namespace": NS}},
     200),
    ("GET", "/system/function/{functionName}", {"path_parameters": {"functionName": "contract-nope"}}, 404),
    ("POST", "/system/secrets", {"body": {"name": "contract-s", "value": "v"}}, 201),
    ("PUT", "/system/secrets", {"body": {"name": "contract-s", "value": "w"}}, 202),
    ("GET", "/system/secrets", {}, 200),
    ("DELETE", "/system/secrets", {"body": {"name": "contract-s"}}, 202),
    ("POST", "/function/{functionName}.{namespace}",
     {"path_parameters": {"functionName": FN, "namespace": NS}, "body": "hi", "media_type": "text/plain"}, 200),
    ("GET", "/system/logs", {"query": {"name": FN, "follow": False, "tail": 5}}, 200),
    ("POST", "/system/scale-function/{functionName}",
     {"path_parameters": {"functionName": FN}, "body": {"serviceName": FN, "namespace": NS, "replicas": 1}}, 202),
]
READ_ONLY = [("GET", "/system/function/{functionName}"), ("GET", "/system/logs"), ("GET", "/system/functions"),
             ("GET", "/system/secrets"), ("GET", "/system/info")]


def call(case: schemathesis.Case[Any], url: str, auth: dict[str, str], excluded: list[Any]) -> int:
    return case.call_and_validate(base_url=url, headers=auth, excluded_checks=excluded, timeout=30).status_code


def fuzz(method: str, path: str, url: str, auth: dict[str, str]) -> None:
    operation = schema[path][method]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        if mode is GenerationMode.NEGATIVE and not operation.definition.raw.get("parameters"):
            continue  # nothing to make invalid

        @hypothesis.settings(max_examples=10, derandomize=True, database=None, deadline=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case[Any]) -> None:
            if path == "/system/logs" and case.query and str(case.query.get("follow")) in GO_TRUE:
                case.query["follow"] = "false"  # a followed stream never ends by itself
            case.call_and_validate(base_url=url, headers=auth, checks=FUZZ_CHECKS,
                                   additional_checks=[status_is_known, no_traceback], timeout=30)

        run()


async def test_the_daemon_answers_as_the_spec_says(daemon: DaemonHandle, images: PushedImages) -> None:
    await daemon.deploy_ok(function_body(FN, images["echo"]))
    try:
        for method, path, overrides, expected in VALID:
            case = schema[path][method].Case(**overrides)
            deviation = STATUS_DEVIATIONS.get((method, path))
            excluded = [status_code_conformance] if deviation and deviation[0] == expected else []
            status = await asyncio.to_thread(call, case, daemon.url, daemon.auth, excluded)
            assert status == expected, (method, path)

        for method, path in READ_ONLY:
            await asyncio.to_thread(fuzz, method, path, daemon.url, daemon.auth)
    finally:
        status, body = await daemon.remove(FN)
        assert status == 202, body
