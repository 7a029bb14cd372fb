"""Function templates (``python3``, ``python3-http``, ``shell``) shipped as package data.

Each is a directory with a ``template.yml`` in OpenFaaS's format (``language``, ``fprocess``; our
build hints under ``faasd_py``), the files the image gets (``index.py``) and ``function/``, the
handler ``faasd-py new`` scaffolds. This module reads them, turns a template into its image layer
and implements ``faasd-py new``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from faasd_py.build.base import Base
from faasd_py.build.hostbase import _cached_deps, _stat_key, add_host_path, default_cache_dir
from faasd_py.build.layer import Entry, Layer, cached_layer, dir_entry, file_entry, source_date_epoch, with_parents
from faasd_py.build.pycompile import compile_pycs
from faasd_py.build.stack import DEFAULT_GATEWAY, append_function, stack_yaml
from faasd_py.errors import Conflict, InvalidRequest
from faasd_py.types import validate_name

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
SCAFFOLD_DIR = "function"  # inside a template: what `new` copies into the handler directory
TOOLS_PATH = "/usr/local/bin:/usr/bin:/bin"
MODES = ("classic", "serializing", "streaming", "http")


@dataclass(frozen=True)
class Template:
    language: str
    root: Path
    fprocess: str
    mode: str = "classic"
    upstream_url: str = ""
    handler_path: str = "function"  # where the handler directory goes, relative to the workdir
    requirements: str = ""  # file in the handler directory installed with pip ("" = none)
    packages_path: str = ""  # where requirements go, relative to the workdir
    scaffold: tuple[str, ...] = ()
    host_tools: tuple[str, ...] = ()  # executables copied from the build host (with their libraries)
    welcome_message: str = ""

    def image_files(self) -> list[tuple[str, Path]]:
        """(path relative to the workdir, source) of every file the template puts in the image."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not (rel == Path(".")
                                                                                   and d == SCAFFOLD_DIR))
            for name in sorted(filenames):
                if rel == Path(".") and name == "template.yml":
                    continue
                out.append(((rel / name).as_posix(), Path(dirpath) / name))
        return out


def available(templates_dir: Path | None = None) -> list[str]:
    root = templates_dir or TEMPLATES_DIR
    return sorted(p.name for p in root.iterdir() if (p / "template.yml").is_file()) if root.is_dir() else []


def load_template(language: str, templates_dir: Path | None = None) -> Template:
    root = (templates_dir or TEMPLATES_DIR) / language
    spec = root / "template.yml"
    if not language or "/" in language or not spec.is_file():
        have = ", ".join(available(templates_dir)) or "none"
        raise InvalidRequest(f"unknown template language {language!r} (available: {have})")
    try:
        data = yaml.safe_load(spec.read_text())
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{spec}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("fprocess"), str):
        raise InvalidRequest(f"{spec}: needs at least language and fprocess")
    hints = data.get("faasd_py") or {}
    if not isinstance(hints, dict):
        raise InvalidRequest(f"{spec}: faasd_py must be a mapping")
    mode = str(hints.get("mode") or "classic")
    if mode not in MODES:
        raise InvalidRequest(f"{spec}: faasd_py.mode must be one of {', '.join(MODES)}")
    handler_path = str(hints.get("handler_path") or ".").strip("/") or "."
    if ".." in Path(handler_path).parts:
        raise InvalidRequest(f"{spec}: faasd_py.handler_path must stay inside the working directory")
    return Template(
        language=str(data.get("language") or language),
        root=root,
        fprocess=data["fprocess"],
        mode=mode,
        upstream_url=str(hints.get("upstream_url") or ""),
        handler_path=handler_path,
        requirements=str(hints.get("requirements") or ""),
        packages_path=str(hints.get("packages_path") or ""),
        scaffold=tuple(str(s) for s in hints.get("scaffold") or ()),
        host_tools=tuple(str(t) for t in hints.get("host_tools") or ()),
        welcome_message=str(data.get("welcome_message") or ""),
    )


# --- the template layer ----------------------------------------------------------------------


def template_entries(template: Template, base: Base, cache_dir: Path | None = None) -> list[Entry]:
    """The template's own files under the workdir (with .pyc files for the base's interpreter)
    and the host tools it asks for."""
    mtime = source_date_epoch()
    entries: list[Entry] = []
    sources: dict[str, bytes] = {}
    for rel, src in template.image_files():
        path, data = f"{base.working_dir}/{rel}", src.read_bytes()
        entries.append(file_entry(path, data, mtime=mtime))  # mode from the content (#!), not the install
        if rel.endswith(".py"):
            sources[path] = data
    pycs = compile_pycs(base.python, base.python_cache_tag, sources)
    entries += [file_entry(p, d, 0o644, mtime=mtime) for p, d in pycs.items()]
    if entries:
        entries.append(workdir_entry(base, mtime))
    cache = cache_dir or default_cache_dir()
    entries += host_tool_entries(template.host_tools, skip=_base_libraries(base, cache), cache_dir=cache)
    return with_parents(entries, mtime)


def workdir_entry(base: Base, mtime: int = 0) -> Entry:
    """The working directory as the base has it (owned by the app user): a layer that adds files
    below it must not turn it back into root's."""
    uid, _, gid = base.user.partition(":")
    try:
        ids = int(uid), int(gid or uid)
    except ValueError:
        ids = 0, 0
    return dir_entry(base.working_dir, 0o755, ids[0], ids[1], mtime)


def host_tool_entries(tools: Iterable[str], skip: Iterable[str] = (), cache_dir: Path | None = None) -> list[Entry]:
    """Host executables by name (looked up in /usr/local/bin, /usr/bin, /bin) or absolute path,
    every symlink on the way to them and the shared libraries they load, minus the ``skip`` ones."""
    found = []
    for tool in tools:
        path = shutil.which(tool, path=TOOLS_PATH)
        if path is None:
            print(f"faasd-py build: warning: {tool} is not installed on this host; the image goes without it",
                  file=sys.stderr)
            continue
        found.append(path)
    if not found:
        return []
    skipped = {os.path.realpath(p) for p in skip}  # one library may be reached by several names
    real = sorted({os.path.realpath(p) for p in found})
    libs = [lib for lib in _libraries(real, cache_dir) if os.path.realpath(lib) not in skipped]
    entries: dict[str, Entry] = {}
    for p in [*found, *libs]:
        add_host_path(p, entries)
    return list(entries.values())


def _base_libraries(base: Base, cache_dir: Path | None) -> list[str]:
    """Libraries the host-built base already holds (the interpreter's): no need to copy them again."""
    if not base.description.startswith("host python") or not os.access(base.python, os.X_OK):
        return []
    return _libraries([base.python], cache_dir)


def _libraries(binaries: Sequence[str], cache_dir: Path | None) -> list[str]:
    """``ldd`` of the binaries, cached by their stat data (ldd costs ~100 ms for a dozen tools)."""
    paths = [Path(b) for b in binaries]
    return _cached_deps(cache_dir or default_cache_dir(), _stat_key(paths, [], extra="tools"), paths)




def template_layer(template: Template, base: Base, cache_dir: Path, compression: str = "gzip") -> Layer | None:
    """The template's layer, or None when it adds nothing to the image."""
    entries = template_entries(template, base, cache_dir)
    if not any(e.kind != "dir" for e in entries):
        return None
    return cached_layer(entries, cache_dir, f"template-{template.language}", compression)


# --- faasd-py new ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewFunction:
    name: str
    stack_file: Path
    handler_dir: Path
    files: tuple[Path, ...]  # every file written, the stack included
    image: str
    message: str


def image_name(name: str, prefix: str = "") -> str:
    prefix = prefix.strip().rstrip("/")
    return f"{prefix}/{name}:latest" if prefix else f"{name}:latest"


def new_function(name: str, language: str, directory: Path = Path("."), *, prefix: str = "",
                 append: Path | None = None, gateway: str = DEFAULT_GATEWAY,
                 templates_dir: Path | None = None) -> NewFunction:
    """Scaffolds ``<directory>/<name>/`` from the template and writes ``<directory>/<name>.yml``
    (or adds the function to the stack ``append``). Also writes ``template/<lang>/template.yml``
    next to the stack when missing: ``faas-cli deploy`` reads ``fprocess`` from there. Never
    overwrites a file."""
    validate_name(name)
    template = load_template(language, templates_dir)
    stack_file = append if append is not None else directory / f"{name}.yml"
    handler_dir = (append.parent if append is not None else directory) / name
    if handler_dir.exists():
        raise Conflict(f"{handler_dir} already exists; not overwriting it")
    image = image_name(name, prefix)
    handler = f"./{name}"
    if append is None:
        if stack_file.exists():
            raise Conflict(f"{stack_file} already exists; use --append {stack_file} to add the function to it")
        stack_text = stack_yaml(name, template.language, handler, image, gateway)
    else:
        if not stack_file.is_file():
            raise InvalidRequest(f"cannot append to {stack_file}: no such file")
        stack_text = append_function(stack_file.read_text(), name, template.language, handler, image,
                                     str(stack_file))
    source = template.root / SCAFFOLD_DIR
    names = template.scaffold or tuple(sorted(p.name for p in source.iterdir() if p.is_file()))
    written: list[Path] = []
    handler_dir.mkdir(parents=True)
    for file_name in names:
        data = (source / file_name).read_bytes()
        target = handler_dir / file_name
        target.write_bytes(data)
        target.chmod(0o755 if data.startswith(b"#!") else 0o644)
        written.append(target)
    faas_cli_template = stack_file.parent / "template" / template.language / "template.yml"
    if not faas_cli_template.exists():
        faas_cli_template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template.root / "template.yml", faas_cli_template)
        written.append(faas_cli_template)
    tmp = stack_file.with_name(f".{stack_file.name}.{os.getpid()}")
    tmp.write_text(stack_text)
    os.replace(tmp, stack_file)
    written.append(stack_file)
    return NewFunction(name, stack_file, handler_dir, tuple(written), image, template.welcome_message)
