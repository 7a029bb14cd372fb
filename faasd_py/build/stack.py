"""stack.yml as faas-cli reads it: ``${VAR}`` substitution over the whole text first (like its
drone/envsubst), then YAML with every scalar kept as the text written (Go decodes into strings,
so ``A: 1.10`` stays ``"1.10"``), then faas-cli's validation and defaults. Also writes the YAML
that ``faasd-py new`` produces, in the shape ``faas-cli new`` writes it."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faasd_py.errors import InvalidRequest

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
PROVIDER = "openfaas"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE = frozenset({"true", "yes", "on", "y"})
_FALSE = frozenset({"false", "no", "off", "n", ""})


# --- ${VAR} substitution -----------------------------------------------------------------------


def envsubst(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``${VAR}``, ``${VAR:-default}`` (also ``-``, ``=``, ``:=``; defaults may nest ``${...}``),
    ``${#VAR}``, ``${VAR^}``/``^^``/``,``/``,,``; ``$${`` is a literal ``${``. A bare ``$VAR`` is
    left alone and an unset variable is empty, as in faas-cli."""
    env = os.environ if environ is None else environ
    out, _ = _subst(text, 0, env, top=True)
    return out


def _subst(text: str, i: int, env: Mapping[str, str], top: bool) -> tuple[str, int]:
    """Expands from ``i`` to the end (top level) or to the ``}`` closing a default; returns the
    text and the index after it."""
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if text.startswith("$${", i):
            out.append("${")
            i += 3
        elif text.startswith("${", i):
            value, i = _expression(text, i + 2, env)
            out.append(value)
        elif c == "}" and not top:
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    if not top:
        raise InvalidRequest("stack: unterminated ${...} in a default value")
    return "".join(out), i


def _expression(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    start = i - 2
    length = text.startswith("#", i)
    if length:
        i += 1
    m = _NAME.match(text, i)
    if m is None:
        raise InvalidRequest(f"stack: invalid variable reference {text[start:start + 30]!r}")
    name, i = m.group(), m.end()
    value = env.get(name, "")
    if length:
        if not text.startswith("}", i):
            raise InvalidRequest(f"stack: invalid variable reference {text[start:i + 1]!r}")
        return str(len(value)), i + 1
    for op in (":-", ":=", "-", "="):
        if text.startswith(op, i):
            default, i = _subst(text, i + len(op), env, top=False)
            return (value or default), i
    for op, fn in (("^^", str.upper), (",,", str.lower), ("^", _upper_first), (",", _lower_first)):
        if text.startswith(op + "}", i):
            return fn(value), i + len(op) + 1
    if text.startswith("}", i):
        return value, i + 1
    end = text.find("}", i)
    shown = text[start:end + 1] if end != -1 else text[start:start + 30]
    raise InvalidRequest(f"stack: unsupported substitution {shown!r} (use ${{VAR}} or ${{VAR:-default}})")


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


# --- YAML with string scalars -----------------------------------------------------------------


class _StringLoader(yaml.SafeLoader):
    """SafeLoader without implicit typing (every plain scalar is a string), keeping ``<<`` merges."""


_StringLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:merge"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    name: str = PROVIDER
    gateway: str = DEFAULT_GATEWAY


@dataclass(frozen=True)
class StackFunction:
    name: str
    lang: str = ""
    handler: str = ""
    image: str = ""
    fprocess: str = ""
    namespace: str = ""
    environment: dict[str, str] = field(default_factory=dict)  # environment_file values merged in
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    readonly_root_filesystem: bool = False
    build_args: dict[str, str] = field(default_factory=dict)
    skip_build: bool = False

    @property
    def image_ref(self) -> str:
        """The image as faas-cli deploys it: ``:latest`` added when the last path segment has no tag."""
        image = self.image
        if image and "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
            image += ":latest"
        return image

    def deploy_body(self) -> dict[str, Any]:
        """The ``/system/functions`` JSON ``faas-cli deploy -f`` sends for this function."""
        body: dict[str, Any] = {"service": self.name, "image": self.image_ref}
        if self.namespace:
            body["namespace"] = self.namespace
        if self.fprocess:
            body["envProcess"] = self.fprocess
        for key, value in (("envVars", self.environment), ("constraints", self.constraints),
                           ("secrets", self.secrets), ("labels", self.labels),
                           ("annotations", self.annotations), ("limits", self.limits),
                           ("requests", self.requests)):
            if value:
                body[key] = value
        if self.readonly_root_filesystem:
            body["readOnlyRootFilesystem"] = True
        return body


@dataclass(frozen=True)
class Stack:
    provider: Provider
    functions: dict[str, StackFunction]
    version: str = ""
    path: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        """Handlers and environment files are relative to the stack file."""
        return self.path.parent if self.path is not None else Path.cwd()

    def select(self, pattern: str | None = None) -> list[StackFunction]:
        """The functions matching ``pattern`` (a shell wildcard, as faas-cli's ``--filter``)."""
        if not pattern:
            return list(self.functions.values())
        chosen = [f for n, f in self.functions.items() if fnmatch.fnmatchcase(n, pattern)]
        if not chosen:
            raise InvalidRequest(f"stack: no function matches {pattern!r} (have {', '.join(self.functions)})")
        return chosen


def load_stack(path: Path, environ: Mapping[str, str] | None = None, *, substitute: bool = True) -> Stack:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"stack: cannot read {path}: {exc.strerror or exc}") from exc
    return parse_stack(text, path=path, environ=environ, substitute=substitute)


def parse_stack(text: str, *, path: Path | None = None, environ: Mapping[str, str] | None = None,
                substitute: bool = True) -> Stack:
    where = str(path) if path else "stack"
    if substitute:
        text = envsubst(text, environ)
    try:
        data = yaml.load(text, Loader=_StringLoader)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{where}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where}: must be a mapping with provider and functions")
    version = _string(data.get("version"), f"{where}: version")
    if version and version != "1.0":
        raise InvalidRequest(f"{where}: version must be 1.0, got {version!r}")
    raw_provider = data.get("provider")
    if not isinstance(raw_provider, dict):
        raise InvalidRequest(f"{where}: provider is missing (provider: {{name: openfaas, gateway: URL}})")
    name = _string(raw_provider.get("name"), f"{where}: provider.name")
    if name != PROVIDER:
        raise InvalidRequest(f"{where}: provider.name must be {PROVIDER!r}, got {name!r}")
    provider = Provider(name, _string(raw_provider.get("gateway"), f"{where}: provider.gateway") or DEFAULT_GATEWAY)
    raw_functions = data.get("functions")
    if raw_functions is None:
        raw_functions = {}
    if not isinstance(raw_functions, dict):
        raise InvalidRequest(f"{where}: functions must be a mapping of name to function")
    base_dir = path.parent if path else Path.cwd()
    warnings: list[str] = []
    functions = {str(n): _function(str(n), spec, base_dir, where, warnings) for n, spec in raw_functions.items()}
    return Stack(provider, functions, version, path, tuple(warnings))


def _function(name: str, raw: object, base_dir: Path, where: str, warnings: list[str]) -> StackFunction:
    at = f"{where}: functions.{name}"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{at} must be a mapping (lang, handler, image, ...)")
    known = {"lang", "handler", "image", "fprocess", "namespace", "environment", "environment_file", "labels",
             "annotations", "secrets", "constraints", "limits", "requests", "readonly_root_filesystem",
             "build_args", "skip_build", "build_options", "build_secrets", "platforms"}
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:  # faas-cli ignores them too, but a typo deserves a word
        warnings.append(f"{at}: ignoring unknown field(s) {', '.join(unknown)}")
    environment = _string_map(raw.get("environment"), f"{at}.environment")
    for env_file in _string_list(raw.get("environment_file"), f"{at}.environment_file"):
        environment.update(_environment_file(base_dir / env_file, at))
    return StackFunction(
        name=name,
        lang=_string(raw.get("lang"), f"{at}.lang"),
        handler=_string(raw.get("handler"), f"{at}.handler"),
        image=_string(raw.get("image"), f"{at}.image"),
        fprocess=_string(raw.get("fprocess"), f"{at}.fprocess"),
        namespace=_string(raw.get("namespace"), f"{at}.namespace"),
        environment=environment,
        labels=_string_map(raw.get("labels"), f"{at}.labels"),
        annotations=_string_map(raw.get("annotations"), f"{at}.annotations"),
        secrets=_string_list(raw.get("secrets"), f"{at}.secrets"),
        constraints=_string_list(raw.get("constraints"), f"{at}.constraints"),
        limits=_resources(raw.get("limits"), f"{at}.limits"),
        requests=_resources(raw.get("requests"), f"{at}.requests"),
        readonly_root_filesystem=_bool(raw.get("readonly_root_filesystem"), f"{at}.readonly_root_filesystem"),
        build_args=_string_map(raw.get("build_args"), f"{at}.build_args"),
        skip_build=_bool(raw.get("skip_build"), f"{at}.skip_build"),
    )


def _environment_file(path: Path, at: str) -> dict[str, str]:
    try:
        data = yaml.load(path.read_text(), Loader=_StringLoader)
    except OSError as exc:
        raise InvalidRequest(f"{at}.environment_file: cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{at}.environment_file: {path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict) or "environment" not in data:
        raise InvalidRequest(f"{at}.environment_file: {path} must hold an 'environment:' mapping")
    return _string_map(data["environment"], f"{path}: environment")


def _string(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, not a {_kind(value)}")
    return value


def _string_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a mapping of names to strings, not a {_kind(value)}")
    out = {}
    for k, v in value.items():
        if v is not None and not isinstance(v, str):
            raise InvalidRequest(f"{what}.{k} must be a string, not a {_kind(v)}")
        out[str(k)] = v or ""
    return out


def _string_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{what} must be a list of strings")
    return list(value)


def _resources(value: object, what: str) -> dict[str, str]:
    out = {k: v for k, v in _string_map(value, what).items() if v}
    unknown = sorted(set(out) - {"memory", "cpu"})
    if unknown:
        raise InvalidRequest(f"{what}: unknown resource(s) {', '.join(unknown)} (use memory and cpu)")
    return out


def _bool(value: object, what: str) -> bool:
    if value is None:
        return False
    text = _string(value, what).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidRequest(f"{what} must be true or false, got {value!r}")


def _kind(value: object) -> str:
    return "mapping" if isinstance(value, dict) else "list" if isinstance(value, list) else type(value).__name__


# --- writing ----------------------------------------------------------------------------------


def function_yaml(name: str, lang: str, handler: str, image: str, indent: str = "  ") -> str:
    """One entry of ``functions:``, as ``faas-cli new`` writes it."""
    return (f"{indent}{name}:\n"
            f"{indent * 2}lang: {lang}\n"
            f"{indent * 2}handler: {handler}\n"
            f"{indent * 2}image: {image}\n")


def stack_yaml(name: str, lang: str, handler: str, image: str, gateway: str = DEFAULT_GATEWAY) -> str:
    return (f"version: 1.0\nprovider:\n  name: {PROVIDER}\n  gateway: {gateway}\nfunctions:\n"
            + function_yaml(name, lang, handler, image))


def append_function(text: str, name: str, lang: str, handler: str, image: str, where: str = "stack") -> str:
    """Adds a function to a stack's text. When ``functions:`` is the last top-level key (what
    ``faas-cli new`` writes) the entry is appended and comments survive; otherwise the file is
    re-written from its parsed form."""
    stack = parse_stack(text, path=None, substitute=False)
    if name in stack.functions:
        raise InvalidRequest(f"{where}: function {name!r} already exists")
    lines = text.splitlines()
    top = [i for i, line in enumerate(lines) if line and not line[0].isspace() and not line.startswith("#")]
    if top and re.fullmatch(r"functions:\s*(#.*)?", lines[top[-1]]):
        body = lines[top[-1] + 1:]
        indents = [len(b) - len(b.lstrip(" ")) for b in body if b.strip() and not b.lstrip().startswith("#")]
        indent = " " * (indents[0] if indents else 2)
        prefix = text if text.endswith("\n") else text + "\n"
        return prefix + function_yaml(name, lang, handler, image, indent)
    data = yaml.load(text, Loader=_StringLoader)
    functions = data.get("functions") or {}
    functions[name] = {"lang": lang, "handler": handler, "image": image}
    data["functions"] = functions
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
