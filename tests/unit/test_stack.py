"""stack.yml parsing (faasd_py.build.stack): faas-cli's envsubst, defaults, deploy JSON and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd_py.build.stack import (
    DEFAULT_GATEWAY,
    append_function,
    envsubst,
    load_stack,
    parse_stack,
    stack_yaml,
)
from faasd_py.errors import InvalidRequest

ENV = {"REG": "127.0.0.1:5000", "TAG": "v2", "EMPTY": "", "NAME": "world"}


@pytest.mark.parametrize(("text", "want"), [
    ("image: ${REG}/fn:${TAG}", "image: 127.0.0.1:5000/fn:v2"),
    ("${MISSING}", ""),
    ("${MISSING:-dflt}", "dflt"),
    ("${EMPTY:-dflt}", "dflt"),
    ("${TAG:-dflt}", "v2"),
    ("${MISSING-dflt} ${MISSING=x} ${MISSING:=y}", "dflt x y"),
    ("${MISSING:-${REG}/nested}", "127.0.0.1:5000/nested"),
    ("${#NAME} ${NAME^} ${NAME^^} ${TAG,,}", "5 World WORLD v2"),
    ("$${REG} stays", "${REG} stays"),
    ("$REG bare", "$REG bare"),  # faas-cli's envsubst only expands ${...}
    ("cost: $5 and }", "cost: $5 and }"),
])
def test_envsubst(text: str, want: str) -> None:
    assert envsubst(text, ENV) == want


@pytest.mark.parametrize(("text", "match"), [
    ("${REG/a/b}", "unsupported substitution"),
    ("${1abc}", "invalid variable reference"),
    ("${MISSING:-never closed", "unterminated"),
])
def test_envsubst_errors(text: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        envsubst(text, ENV)


FULL = """\
version: 1.0
provider:
  name: openfaas
  gateway: http://${GW_HOST:-127.0.0.1}:8081
functions:
  env-fn:
    lang: python3
    handler: ./env-fn
    image: ${REG}/env-fn
    fprocess: env
    namespace: dev
    environment:
      A: "1"
      B: 2
      RATIO: 1.10
      DEBUG: true
      EMPTY:
    environment_file:
      - env.yml
    labels:
      com.openfaas.scale.min: 1
    annotations:
      topic: cron
    secrets: [s1]
    constraints: ["node.platform.os == linux"]
    limits: {memory: 128Mi, cpu: 100m}
    requests: {memory: 64Mi, cpu: ""}
    readonly_root_filesystem: true
    build_args:
      PIP_INDEX_URL: http://127.0.0.1:3141/simple
  plain:
    image: alpine:3.19
"""


def test_full_stack_and_faas_cli_deploy_body(tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text("environment:\n  A: from-file\n  C: '3'\n")
    stack_file = tmp_path / "stack.yml"
    stack_file.write_text(FULL)
    stack = load_stack(stack_file, ENV)
    assert stack.version == "1.0"
    assert stack.provider.gateway == "http://127.0.0.1:8081"
    assert stack.directory == tmp_path
    fn = stack.functions["env-fn"]
    # scalars stay the text written (Go decodes them into strings); files override inline values
    assert fn.environment == {"A": "from-file", "B": "2", "RATIO": "1.10", "DEBUG": "true", "EMPTY": "", "C": "3"}
    assert fn.image_ref == "127.0.0.1:5000/env-fn:latest"
    assert fn.build_args == {"PIP_INDEX_URL": "http://127.0.0.1:3141/simple"}
    assert fn.deploy_body() == {
        "service": "env-fn", "image": "127.0.0.1:5000/env-fn:latest", "namespace": "dev", "envProcess": "env",
        "envVars": {"A": "from-file", "B": "2", "RATIO": "1.10", "DEBUG": "true", "EMPTY": "", "C": "3"},
        "constraints": ["node.platform.os == linux"], "secrets": ["s1"],
        "labels": {"com.openfaas.scale.min": "1"}, "annotations": {"topic": "cron"},
        "limits": {"memory": "128Mi", "cpu": "100m"}, "requests": {"memory": "64Mi"},
        "readOnlyRootFilesystem": True,
    }
    plain = stack.functions["plain"]
    assert plain.image_ref == "alpine:3.19"  # tagged already
    assert plain.deploy_body() == {"service": "plain", "image": "alpine:3.19"}
    assert not stack.warnings


def test_defaults_and_image_tagging() -> None:
    stack = parse_stack("provider: {name: openfaas}\nfunctions:\n  a: {image: localhost:5000/team/a}\n"
                        "  b: {image: 'reg/b@sha256:" + "a" * 64 + "'}\n")
    assert stack.provider.gateway == DEFAULT_GATEWAY
    assert stack.version == ""
    assert stack.functions["a"].image_ref == "localhost:5000/team/a:latest"  # a port is not a tag
    assert stack.functions["b"].image_ref.endswith("a" * 64)
    assert stack.functions["a"].readonly_root_filesystem is False


def test_envsubst_can_be_turned_off() -> None:
    stack = parse_stack("provider: {name: openfaas}\nfunctions:\n  a: {image: '${REG}/a'}\n", environ=ENV,
                        substitute=False)
    assert stack.functions["a"].image == "${REG}/a"


def test_merge_keys_work() -> None:
    text = ("provider: {name: openfaas}\ndefaults: &d\n  lang: python3\n  environment: {A: '1'}\n"
            "functions:\n  a:\n    <<: *d\n    image: a\n")
    fn = parse_stack(text).functions["a"]
    assert (fn.lang, fn.environment) == ("python3", {"A": "1"})


def test_select_with_wildcards() -> None:
    stack = parse_stack(stack_yaml("api-one", "python3", "./a", "a") + "  api-two:\n    image: b\n"
                        "  worker:\n    image: c\n")
    assert [f.name for f in stack.select("api-*")] == ["api-one", "api-two"]
    assert [f.name for f in stack.select(None)] == ["api-one", "api-two", "worker"]
    with pytest.raises(InvalidRequest, match="no function matches 'nope'"):
        stack.select("nope")


def test_unknown_function_fields_are_warnings() -> None:
    stack = parse_stack("provider: {name: openfaas}\nfunctions:\n  a: {image: a, enviroment: {A: '1'}}\n")
    assert stack.warnings == ("stack: functions.a: ignoring unknown field(s) enviroment",)


@pytest.mark.parametrize(("text", "match"), [
    ("provider: {name: faas}\nfunctions: {}\n", "provider.name must be 'openfaas', got 'faas'"),
    ("functions: {}\n", "provider is missing"),
    ("version: 2.0\nprovider: {name: openfaas}\n", "version must be 1.0, got '2.0'"),
    ("provider: {name: openfaas}\nfunctions: [a, b]\n", "functions must be a mapping"),
    ("provider: {name: openfaas}\nfunctions:\n  a: just-a-string\n", "functions.a must be a mapping"),
    ("provider: {name: openfaas}\nfunctions:\n  a: {environment: [A=1]}\n",
     "functions.a.environment must be a mapping"),
    ("provider: {name: openfaas}\nfunctions:\n  a: {environment: {A: {x: 1}}}\n",
     "functions.a.environment.A must be a string, not a mapping"),
    ("provider: {name: openfaas}\nfunctions:\n  a: {secrets: s1}\n", "functions.a.secrets must be a list"),
    ("provider: {name: openfaas}\nfunctions:\n  a: {readonly_root_filesystem: maybe}\n",
     "readonly_root_filesystem must be true or false"),
    ("provider: {name: openfaas}\nfunctions:\n  a: {limits: {gpu: '1'}}\n", "unknown resource\\(s\\) gpu"),
    ("provider: {name: openfaas}\nfunctions:\n  a: {environment_file: [missing.yml]}\n", "cannot read"),
    ("provider: {name: openfaas\n", "invalid YAML"),
    ("- just\n- a list\n", "must be a mapping with provider and functions"),
])
def test_errors_are_clear(text: str, match: str, tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(text)
    with pytest.raises(InvalidRequest, match=match) as err:
        load_stack(path, {})
    assert str(path) in err.value.message


def test_missing_file() -> None:
    with pytest.raises(InvalidRequest, match=r"cannot read /nonexistent/stack\.yml"):
        load_stack(Path("/nonexistent/stack.yml"))


def test_new_stack_text_is_what_faas_cli_writes() -> None:
    assert stack_yaml("hello", "python3", "./hello", "reg/hello:latest") == (
        "version: 1.0\n"
        "provider:\n"
        "  name: openfaas\n"
        "  gateway: http://127.0.0.1:8080\n"
        "functions:\n"
        "  hello:\n"
        "    lang: python3\n"
        "    handler: ./hello\n"
        "    image: reg/hello:latest\n"
    )


def test_append_keeps_comments_and_indentation() -> None:
    text = "# my stack\nversion: 1.0\nprovider:\n  name: openfaas\nfunctions:\n    one:  # first\n" \
           "        lang: python3\n        handler: ./one\n        image: one:latest\n"
    out = append_function(text, "two", "shell", "./two", "two:latest")
    assert out.startswith(text)
    assert out.endswith("    two:\n        lang: shell\n        handler: ./two\n        image: two:latest\n")
    assert list(parse_stack(out).functions) == ["one", "two"]
    with pytest.raises(InvalidRequest, match="function 'one' already exists"):
        append_function(text, "one", "shell", "./one", "one:latest")


def test_append_when_functions_is_not_last_rewrites() -> None:
    text = "version: 1.0\nfunctions:\n  one: {image: one}\nprovider:\n  name: openfaas\n"
    out = append_function(text, "two", "python3", "./two", "two:latest")
    stack = parse_stack(out)
    assert list(stack.functions) == ["one", "two"]
    assert stack.functions["two"].lang == "python3"
    assert stack.version == "1.0"
