"""The OpenFaaS gateway spec as the contract tests use it, and every known difference from it.

The spec is data: ``openfaas-gateway.openapi.yml`` beside this file is a verbatim copy of
shared/reference/openfaas-gateway.openapi.yml, kept here because a checkout may not have shared/
beside it (tests/unit/test_openapi_contract.py flags drift when it does). Where the spec is wrong
about OpenFaaS itself it is corrected (``SPEC_ERRATA``); where we differ from it on purpose
(faas-cli compatibility wins: gateway-behaviour.md §10, faas-cli-contract.md §2) the difference is
listed with its reason (``STATUS_DEVIATIONS``, ``INPUT_LENIENCY``, ``EXCLUDED_CHECKS``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import schemathesis
import yaml
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

SPEC_PATH = Path(__file__).with_name("openfaas-gateway.openapi.yml")
SHARED_SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / SPEC_PATH.name

# The spec documents /metrics under the :8080 server, but the OpenFaaS gateway (and ours) serves it
# on the metrics port, 8082 (gateway-behaviour.md §10).
METRICS_PORT_ONLY = {("GET", "/metrics")}

# The spec's mistakes about OpenFaaS itself: (method, path, status, reason); load_spec() fixes them,
# so the schema checks test what clients really parse.
SPEC_ERRATA = [
    ("GET", "/system/secrets", "200",
     "the spec says one SecretDescription; OpenFaaS and faasd answer an array of them, and faas-cli "
     "`secret list` parses `[{name, namespace}]`"),
]

# Inputs we accept beyond the spec on purpose; load_spec() loosens the request bodies accordingly,
# so they are not reported as "schema-violating request accepted".
INPUT_LENIENCY = {
    "null": "an optional field sent as null counts as unset, as Go's encoding/json in faas-provider decodes it "
            "(except readOnlyRootFilesystem, which must be a boolean)",
    "network, registryAuth": "deprecated FunctionDeployment fields the spec calls completely ignored: ignored "
                             "whatever their type (the OpenFaaS UI still sends network)",
    "scale without serviceName, namespace": "the path names the function and the query (or the default) its "
                                            "namespace: the OpenFaaS gateway's own scaler sends no namespace",
}
NOT_NULLABLE = {"readOnlyRootFilesystem"}
IGNORED_FIELDS = {"network", "registryAuth"}
OPTIONAL_FIELDS = {("POST", "/system/scale-function/{functionName}"): {"serviceName", "namespace"}}

# Success codes that differ from the spec on purpose: (method, path) -> (our status, reason).
STATUS_DEVIATIONS: dict[tuple[str, str], tuple[int, str]] = {
    ("PUT", "/system/functions"): (
        202, "the old replicas are still draining when it answers; faas-cli deploy exits 0 on 200 or 202"),
    ("DELETE", "/system/functions"): (
        202, "the replicas are still draining when it answers; faas-cli remove accepts 200/201/202"),
    ("PUT", "/system/secrets"): (202, "faas-cli secret update accepts 200/202"),
    ("DELETE", "/system/secrets"): (
        202, "faas-cli secret remove accepts only 200/202, so the spec's 204 would break it"),
}

# Statuses the gateway may answer for a client's mistake although an operation does not document them.
CLIENT_ERRORS = {400, 404, 405, 409, 413, 422}

# Schemathesis checks run on generated requests, and the ones left out with the reason. Status
# codes are checked by status_is_known (errors) and the tests of valid requests (successes) instead.
FUZZ_CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_rejection]
EXCLUDED_CHECKS = {
    "status_code_conformance": "400/409/413/422 for bad input are undocumented for most operations, "
                               "and STATUS_DEVIATIONS lists the success codes faas-cli needs",
    "positive_data_acceptance": "names must be DNS-1123 labels (as in faas-netes/faasd); the spec leaves them "
                                "free-form, so most schema-valid bodies are rightly a 400",
}


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    secrets = spec["paths"]["/system/secrets"]["get"]["responses"]["200"]["content"]["application/json"]
    secrets["schema"] = {"type": "array", "items": secrets["schema"]}
    _loosen_request_bodies(spec)
    return spec


def _loosen_request_bodies(spec: dict[str, Any]) -> None:
    """INPUT_LENIENCY, applied to inlined copies of the request body schemas (responses stay strict)."""
    components = spec["components"]["schemas"]

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(copy.deepcopy(components[node["$ref"].rsplit("/", 1)[1]]))
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    def loosen(node: Any) -> None:
        if isinstance(node, dict):
            properties = node.get("properties", {})
            for name, prop in properties.items():
                if name in IGNORED_FIELDS:
                    properties[name] = {}
                elif name not in node.get("required", []) and name not in NOT_NULLABLE:
                    prop["nullable"] = True
            for value in node.values():
                loosen(value)
        elif isinstance(node, list):
            for value in node:
                loosen(value)

    for path, item in spec["paths"].items():
        for method, operation in item.items():
            optional = OPTIONAL_FIELDS.get((method.upper(), path), set())
            for media in operation.get("requestBody", {}).get("content", {}).values():
                if "schema" in media:
                    body = media["schema"] = inline(media["schema"])
                    if optional:
                        body["required"] = [name for name in body["required"] if name not in optional]
                    loosen(body)


SPEC = load_spec()
OPERATIONS = [(method.upper(), path) for path, item in SPEC["paths"].items() for method in item]


def is_documented(method: str, path: str, status: int) -> bool:
    """Documented by the spec, or one of the listed deviations."""
    operation = SPEC["paths"][path].get(method.lower(), {})  # coverage also tries undocumented methods
    if str(status) in operation.get("responses", {}):
        return True
    deviation = STATUS_DEVIATIONS.get((method, path))
    return deviation is not None and deviation[0] == status


# --- our own checks, run along with schemathesis' ----------------------------------------------------


def status_is_known(ctx: Any, response: schemathesis.Response, case: schemathesis.Case[Any]) -> bool | None:
    """A documented status, a listed deviation, or a 4xx for the client's mistake: nothing else."""
    path = case.operation.path
    if path.startswith(("/function/", "/async-function/")):
        return None  # invocations answer whatever the function answers
    status = response.status_code
    ok = is_documented(case.method.upper(), path, status) or status in CLIENT_ERRORS
    assert ok, f"{case.method} {case.formatted_path}: undocumented status {status}"
    return None


def no_traceback(ctx: Any, response: schemathesis.Response, case: schemathesis.Case[Any]) -> bool | None:
    assert b"Traceback" not in response.content, response.text
    return None
