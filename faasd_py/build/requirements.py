"""A handler's ``requirements.txt``, installed at build time into one reproducible layer.

The host's interpreter runs ``pip install --target`` (the offline base is that same interpreter,
so wheels match its ABI); the result is normalised before it becomes a layer: fixed mtimes,
root-owned, modes reduced to 0644/0755 (pip's depend on the umask), pip's ``__pycache__``
dropped and replaced by unchecked-hash ``.pyc`` files compiled for the base's interpreter. The
layer is cached by the requirements text and everything else that went into it, so a warm
build does not run pip; ``refresh=True`` resolves the requirements again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from faasd_py.build.base import Base
from faasd_py.build.layer import (
    Entry,
    Layer,
    dir_entry,
    file_entry,
    load_cached,
    remember,
    source_date_epoch,
    symlink_entry,
    with_parents,
    write_layer,
)
from faasd_py.build.pycompile import compile_pycs
from faasd_py.build.template import workdir_entry
from faasd_py.errors import ImageError

PIP_PYTHON = "/usr/bin/python3.11"
FORMAT = 1  # bump when the layer content rules change, to invalidate cached layers
PIP_TIMEOUT = 900.0
OUTPUT_TAIL = 3000  # characters of pip's output kept in an error message


def has_requirements(path: Path | None) -> bool:
    """True when the file names at least one requirement (blank lines and comments do not count)."""
    if path is None or not path.is_file():
        return False
    return any(line.split("#", 1)[0].strip() for line in path.read_text().splitlines())


def requirements_layer(requirements: Path, base: Base, target: str, cache_dir: Path, *,
                       python: str = PIP_PYTHON, env: Mapping[str, str] | None = None, refresh: bool = False,
                       compression: str = "gzip") -> Layer | None:
    """Installs ``requirements`` into the in-image directory ``target`` (absolute); None when the
    file is absent or names nothing. ``env`` (a stack's build_args) is passed to pip, e.g.
    PIP_INDEX_URL."""
    if not has_requirements(requirements):
        return None
    extra = dict(env or {})
    mtime = source_date_epoch()
    h = hashlib.sha256(f"{FORMAT}|{python}|{base.python}|{base.python_cache_tag}|{base.user}|{base.working_dir}|"
                       f"{target}|{compression}|{mtime}".encode())
    h.update(requirements.read_bytes())
    h.update(json.dumps(sorted(extra.items())).encode())
    meta_path = cache_dir / f"requirements-{h.hexdigest()[:32]}.json"
    if not refresh and (cached := load_cached(meta_path)) is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pip-", dir=cache_dir) as tmp:
        site = Path(tmp) / "site"
        pip_install(requirements, site, python=python, env=extra)
        entries = installed_entries(site, target, mtime)
        sources = {e.path: Path(e.source).read_bytes() for e in entries if e.source and e.path.endswith(".py")}
        pycs = compile_pycs(base.python, base.python_cache_tag, sources)
        entries += [file_entry(p, d, 0o644, mtime=mtime) for p, d in pycs.items()]
        entries.append(workdir_entry(base, mtime))
        layer = write_layer(with_parents(entries, mtime), cache_dir / "blobs", compression)
    remember(meta_path, layer, pycs=len(pycs))
    return layer


def pip_install(requirements: Path, dest: Path, *, python: str = PIP_PYTHON,
                env: Mapping[str, str] | None = None) -> None:
    """``pip install --target dest -r requirements``, run where the file is (for relative paths)."""
    if not os.access(python, os.X_OK):
        raise ImageError(f"requirements: {python} is not installed; it runs pip for requirements.txt")
    argv = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--no-compile",
            "--no-warn-script-location", "--root-user-action=ignore", "--target", str(dest),
            "-r", str(requirements.resolve())]
    run_env = {**os.environ, **(env or {}), "PYTHONDONTWRITEBYTECODE": "1"}
    run_env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run(argv, cwd=requirements.resolve().parent, env=run_env, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"requirements: pip install -r {requirements} took longer than {PIP_TIMEOUT:.0f} s") from exc
    except OSError as exc:
        raise ImageError(f"requirements: cannot run {python} -m pip: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise ImageError(f"requirements: pip install -r {requirements} failed (exit {proc.returncode}):\n"
                         f"{output[-OUTPUT_TAIL:]}")


def installed_entries(site: Path, target: str, mtime: int) -> list[Entry]:
    """What pip left in ``site`` as layer entries under ``target``, normalised for reproducibility."""
    entries: list[Entry] = [dir_entry(target, mtime=mtime)]
    for dirpath, dirnames, filenames in os.walk(site):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = Path(dirpath).relative_to(site)
        for name in [*dirnames, *sorted(filenames)]:
            src = Path(dirpath) / name
            path = f"{target}/{(rel / name).as_posix()}"
            st = os.lstat(src)
            if stat.S_ISLNK(st.st_mode):
                entries.append(symlink_entry(path, os.readlink(src), mtime))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(dir_entry(path, mtime=mtime))
            elif stat.S_ISREG(st.st_mode) and not name.endswith((".pyc", ".pyo")):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(Entry(path, "file", mode, mtime=mtime, source=src))
    return entries
