"""docker-compose.yaml parsing: keys, port forms, start order, interpolation, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from faasd_py.credentials import NATS_TOKEN_VARIABLE
from faasd_py.errors import InvalidRequest
from faasd_py.provider.compose import (
    SERVICE_KEYS,
    PortMapping,
    RestartPolicy,
    ServiceSpec,
    interpolate,
    load_compose,
    parse_compose,
    parse_port,
    start_order,
)
from faasd_py.provider.core_services import capabilities, core_netns_prefix
from faasd_py.runtime.spec import DEFAULT_CAPABILITIES

REPO = Path(__file__).resolve().parents[2]
BASE = Path("/srv/faasd/docker-compose.yaml")


def parse(text: str, env: dict[str, str] | None = None) -> object:
    return parse_compose(text, BASE, env or {})


def services(text: str, env: dict[str, str] | None = None) -> dict[str, ServiceSpec]:
    compose = parse_compose(text, BASE, env or {})
    return {s.name: s for s in compose.services}


def test_shipped_compose_file_parses_with_nats_and_prometheus() -> None:
    compose = load_compose(REPO / "docker-compose.yaml", env={NATS_TOKEN_VARIABLE: "tok"})
    assert compose.warnings == ()
    assert compose.names() == ["nats", "prometheus"]
    nats, prom = compose.services
    assert nats.image == "localhost/faasd-py/nats:latest"
    assert nats.command is not None and "-js" in nats.command
    assert nats.volumes[0].source == str(REPO / "nats") and nats.volumes[0].target == "/data"
    # the token reaches nats-server through its environment and nats.conf, never its command line
    assert dict(nats.environment) == {"NATS_TOKEN": "tok"}
    assert "tok" not in nats.command
    conf = nats.volumes[1]
    assert (conf.source, conf.target, conf.read_only) == (str(REPO / "nats.conf"), "/etc/nats/nats.conf", True)
    assert nats.command[:2] == ("-c", "/etc/nats/nats.conf")
    assert "token: $NATS_TOKEN" in (REPO / "nats.conf").read_text()
    assert {str(p) for p in nats.ports} == {"127.0.0.1:4222->4222/tcp", "127.0.0.1:8222->8222/tcp"}
    assert prom.volumes[0].read_only and prom.volumes[0].source == str(REPO / "prometheus.yml")
    assert (REPO / "prometheus.yml").is_file()
    assert prom.restart == RestartPolicy("always") and nats.user == "65534:65534"
    # functions may use NATS (with its token) but cannot read every namespace's metrics
    assert (nats.private, prom.private) == (False, True)


def test_the_shipped_compose_file_will_not_start_nats_without_the_token() -> None:
    with pytest.raises(InvalidRequest, match=NATS_TOKEN_VARIABLE):
        load_compose(REPO / "docker-compose.yaml", env={})


def test_shipped_prometheus_config_scrapes_itself_and_the_gateway_metrics_port() -> None:
    conf = yaml.safe_load((REPO / "prometheus.yml").read_text())
    targets = {t for job in conf["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"localhost:9090", "gateway:8082"}


def test_all_supported_keys() -> None:
    svc = services("""
services:
  redis:
    image: redis:7
    entrypoint: /usr/bin/redis-server
    command: --appendonly yes --dir "/data dir"
    environment:
      A: "1"
      B: true
      C: 3
    volumes:
      - ./data:/data
      - /etc/ssl:/etc/ssl:ro
      - type: bind
        source: ../conf
        target: /conf
        read_only: true
    user: 999
    cap_add: [net_raw, CAP_SYS_NICE]
    cap_drop: [KILL]
    ports: ["127.0.0.1:6379:6379"]
    restart: on-failure:3
    stop_grace_period: 1m30s
""")["redis"]
    assert svc.entrypoint == ("/usr/bin/redis-server",)
    assert svc.command == ("--appendonly", "yes", "--dir", "/data dir")
    assert dict(svc.environment) == {"A": "1", "B": "true", "C": "3"}
    assert [(v.source, v.target, v.read_only) for v in svc.volumes] == [
        ("/srv/faasd/data", "/data", False), ("/etc/ssl", "/etc/ssl", True), ("/srv/conf", "/conf", True)]
    assert svc.user == "999"
    assert svc.cap_add == ("CAP_NET_RAW", "CAP_SYS_NICE") and svc.cap_drop == ("CAP_KILL",)
    assert svc.ports == (PortMapping("127.0.0.1", 6379, 6379),)
    assert svc.restart == RestartPolicy("on-failure", 3)
    assert svc.stop_grace_period == 90.0


def test_defaults_and_version_key() -> None:
    compose = parse_compose("version: '3.7'\nservices:\n  a:\n    image: x\n", BASE, {})
    svc = compose.services[0]
    assert compose.warnings == ()
    assert svc.command is None and svc.entrypoint is None and svc.user == ""
    assert svc.restart == RestartPolicy("always") and svc.stop_grace_period == 5.0


def test_unknown_keys_warn_but_load() -> None:
    compose = parse_compose("""
services:
  a:
    image: x
    healthcheck: {test: ["CMD", "true"]}
    networks: [default]
    x-note: fine
networks:
  default: {}
x-common: &c {}
""", BASE, {})
    assert compose.names() == ["a"]
    text = "\n".join(compose.warnings)
    assert "'healthcheck'" in text and "'networks'" in text and "x-note" not in text and "x-common" not in text


@pytest.mark.parametrize(("value", "expected"), [
    ("8222", PortMapping("127.0.0.1", 8222, 8222)),
    (8222, PortMapping("127.0.0.1", 8222, 8222)),
    ("4222:4222", PortMapping("127.0.0.1", 4222, 4222)),
    ("14222:4222/tcp", PortMapping("127.0.0.1", 14222, 4222)),
    ("127.0.0.1:9090:9090", PortMapping("127.0.0.1", 9090, 9090)),
    ("0.0.0.0:8080:80", PortMapping("0.0.0.0", 8080, 80)),
    ("[::1]:9090:9090", PortMapping("::1", 9090, 9090)),
    ({"target": 80, "published": 8080, "host_ip": "127.0.0.2"}, PortMapping("127.0.0.2", 8080, 80)),
    ({"target": 80}, PortMapping("127.0.0.1", 80, 80)),
])
def test_port_forms(value: object, expected: PortMapping) -> None:
    assert parse_port(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("53:53/udp", "only tcp"),
    ("8000-8010:8000-8010", "ranges"),
    ("127.0.0.1::80", "host port"),
    ("localhost:80:80", "not an IP address"),
    ("70000", "out of range"),
    ("abc", "not a port number"),
    (True, "not a port"),
])
def test_port_errors(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_port(value)


def test_same_host_port_twice_is_an_error_naming_both() -> None:
    with pytest.raises(InvalidRequest, match=r"host port 9090 is published twice.*a:.*b:"):
        parse("services:\n  a: {image: x, ports: ['9090']}\n  b: {image: y, ports: ['0.0.0.0:9090:80']}\n")
    # different host addresses on one port are fine
    parse("services:\n  a: {image: x, ports: ['127.0.0.1:9090:9090']}\n  b: {image: y, ports: ['127.0.0.2:9090:80']}\n")


def test_depends_on_orders_dependencies_first() -> None:
    compose = parse_compose("""
services:
  api: {image: g, depends_on: [nats, prometheus]}
  worker: {image: w, depends_on: {nats: {condition: service_started}}}
  prometheus: {image: p}
  nats: {image: n}
""", BASE, {})
    order = compose.names()
    assert order.index("nats") < order.index("api") and order.index("prometheus") < order.index("api")
    assert order.index("nats") < order.index("worker")
    assert sorted(order) == ["api", "nats", "prometheus", "worker"]


def test_depends_on_cycle_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match=r"depends_on cycle: a -> b -> c -> a"):
        parse("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n"
              "  c: {image: x, depends_on: [a]}\n")
    with pytest.raises(InvalidRequest, match="depends on itself"):
        parse("services:\n  a: {image: x, depends_on: [a]}\n")
    with pytest.raises(InvalidRequest, match="depends on 'nope', which is not defined"):
        parse("services:\n  a: {image: x, depends_on: [nope]}\n")


def test_start_order_keeps_file_order_without_dependencies() -> None:
    specs = [ServiceSpec("c", "i"), ServiceSpec("a", "i"), ServiceSpec("b", "i", depends_on=("c",))]
    assert [s.name for s in start_order(specs)] == ["c", "a", "b"]


def test_interpolation_forms() -> None:
    env = {"TAG": "7", "EMPTY": "", "HOST_DIR": "/mnt/x"}
    assert interpolate("redis:${TAG}", env, "w") == "redis:7"
    assert interpolate("redis:$TAG", env, "w") == "redis:7"
    assert interpolate("${MISSING:-6}", env, "w") == "6"
    assert interpolate("${EMPTY:-d}", env, "w") == "d"
    assert interpolate("${EMPTY-d}", env, "w") == ""
    assert interpolate("${TAG:+set}", env, "w") == "set"
    assert interpolate("cost $$5", env, "w") == "cost $5"
    warnings: list[str] = []
    assert interpolate("a${MISSING}b", env, "w", warnings) == "ab"
    assert "MISSING is not set" in warnings[0]
    with pytest.raises(InvalidRequest, match="NEEDED is required: give it"):
        interpolate("${NEEDED:?give it}", env, "w")
    with pytest.raises(InvalidRequest, match="invalid interpolation"):
        interpolate("price $5", env, "w")


def test_interpolation_applies_to_the_whole_file() -> None:
    svc = services("""
services:
  redis:
    image: redis:${TAG:-7}
    command: ["--port", "${PORT}"]
    environment: ["PASS=${PASS}", "FROM_DAEMON", "NOT_SET_ANYWHERE"]
    volumes: ["${HOST_DIR}:/data"]
    ports: ["${PORT}:${PORT}"]
""", {"PORT": "6380", "PASS": "s3cret", "FROM_DAEMON": "yes", "HOST_DIR": "/mnt/r"})["redis"]
    assert svc.image == "redis:7" and svc.command == ("--port", "6380")
    assert dict(svc.environment) == {"PASS": "s3cret", "FROM_DAEMON": "yes"}
    assert svc.volumes[0].source == "/mnt/r" and svc.ports == (PortMapping("127.0.0.1", 6380, 6380),)


@pytest.mark.parametrize(("body", "message"), [
    ("a: {image: x, volumes: ['data:/data']}", "named volume"),
    ("a: {image: x, volumes: ['/data']}", "anonymous volumes"),
    ("a: {image: x, volumes: [{type: volume, source: d, target: /d}]}", "only bind mounts"),
    ("a: {image: x, volumes: ['./d:data']}", "absolute path"),
    ("a: {image: x, volumes: ['./d:/d:rx']}", "unsupported option"),
    ("a: {command: x}", "needs an image"),
    ("Bad_Name: {image: x}", "DNS label"),
    ("gateway: {image: x}", "reserved"),
    ("a: {image: x, restart: sometimes}", "not one of"),
    ("a: {image: x, restart: 'always:3'}", "not one of"),
    ("a: {image: x, environment: 3}", "mapping or a list"),
    ("a: {image: x, stop_grace_period: soon}", "Go duration"),
    ("a: [image, x]", "must be a mapping"),
])
def test_errors_name_the_problem(body: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse("services:\n  " + body + "\n")


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not valid YAML"):
        parse("services: [\n")
    with pytest.raises(InvalidRequest, match="top level must be a mapping"):
        parse("- a\n")
    with pytest.raises(InvalidRequest, match="cannot read"):
        load_compose(tmp_path / "missing.yaml")
    assert parse_compose("", BASE, {}).services == ()
    named = parse_compose("services: {}\nvolumes:\n  data: {}\n", BASE, {})
    assert "named volumes are not supported" in named.warnings[0]


def test_restart_no_survives_yaml_booleans() -> None:
    assert services("services:\n  a: {image: x, restart: no}\n")["a"].restart == RestartPolicy("no")
    assert services("services:\n  a: {image: x, restart: 'no'}\n")["a"].restart == RestartPolicy("no")


@pytest.mark.parametrize(("policy", "status", "retries", "restart"), [
    (RestartPolicy("always"), 0, 99, True),
    (RestartPolicy("unless-stopped"), 0, 0, True),
    (RestartPolicy("no"), 137, 0, False),
    (RestartPolicy("on-failure"), 0, 0, False),
    (RestartPolicy("on-failure"), 1, 50, True),
    (RestartPolicy("on-failure", 2), 1, 1, True),
    (RestartPolicy("on-failure", 2), 1, 2, False),
])
def test_restart_policy(policy: RestartPolicy, status: int, retries: int, restart: bool) -> None:
    assert policy.should_restart(status, retries) is restart


def test_argv_follows_dockers_entrypoint_and_command_rules() -> None:
    ep, cmd = ("/bin/srv",), ("--default",)
    assert ServiceSpec("a", "i").argv(ep, cmd) == ["/bin/srv", "--default"]
    assert ServiceSpec("a", "i", command=("-x",)).argv(ep, cmd) == ["/bin/srv", "-x"]
    assert ServiceSpec("a", "i", entrypoint=("/bin/other",)).argv(ep, cmd) == ["/bin/other"]
    assert ServiceSpec("a", "i", entrypoint=("/bin/o",), command=("-y",)).argv(ep, cmd) == ["/bin/o", "-y"]


def test_capabilities_are_the_default_set_plus_added_minus_dropped() -> None:
    assert capabilities(ServiceSpec("a", "i")) == DEFAULT_CAPABILITIES
    caps = capabilities(ServiceSpec("a", "i", cap_add=("CAP_NET_RAW",), cap_drop=("CAP_KILL",)))
    assert "CAP_NET_RAW" in caps and "CAP_KILL" not in caps and "CAP_CHOWN" in caps
    assert capabilities(ServiceSpec("a", "i", cap_add=("CAP_NET_RAW",), cap_drop=("ALL",))) == ("CAP_NET_RAW",)
    assert "CAP_SYS_ADMIN" in capabilities(ServiceSpec("a", "i", cap_add=("ALL",)))


def test_core_netns_prefix_is_never_under_the_functions_prefix() -> None:
    for prefix in ("faasd-", "fdpyj-", "x", "c", "core-", "fpcore-"):
        core = core_netns_prefix(prefix)
        assert not core.startswith(prefix) and not prefix.startswith(core), (prefix, core)
    assert core_netns_prefix("faasd-") == "faasdcore-"


def test_docs_list_every_supported_key() -> None:
    text = (REPO / "docs" / "core-services.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \|", text, flags=re.MULTILINE):
        documented |= set(re.findall(r"`([a-z_]+)`", cell))
    assert documented >= SERVICE_KEYS, SERVICE_KEYS - documented


def test_a_private_service_must_say_true_or_false() -> None:
    assert services("services:\n  db:\n    image: x\n    x-faasd-py-private: true\n")["db"].private
    assert not services("services:\n  db:\n    image: x\n")["db"].private
    with pytest.raises(InvalidRequest, match="x-faasd-py-private must be true or false, got 'yes'"):
        services("services:\n  db:\n    image: x\n    x-faasd-py-private: 'yes'\n")
