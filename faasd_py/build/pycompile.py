"""``.pyc`` files for the layers we generate, compiled by the image's own interpreter.

They use PEP 552 unchecked-hash invalidation, so they stay valid whatever mtime the tar gives the
sources (we write 0), and the watchdog starts without compiling anything. Compiling happens in a
fresh interpreter because marshal output depends on reference counts in the compiling process:
a clean process compiling the same sources in the same order gives the same bytes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

_SCRIPT = r"""
import importlib._bootstrap_external as be, importlib.util as u, json, sys
req = json.load(sys.stdin)
out = {}
for path in sorted(req):
    src = req[path].encode("latin-1")
    code = compile(src, path, "exec", dont_inherit=True, optimize=0)
    out[path] = be._code_to_hash_pyc(code, u.source_hash(src), checked=False).hex()
json.dump({"tag": sys.implementation.cache_tag, "pycs": out}, sys.stdout)
"""


def compile_pycs(python: str, cache_tag: str, sources: Mapping[str, bytes]) -> dict[str, bytes]:
    """Maps each in-image ``.py`` path to the ``__pycache__/<mod>.<tag>.pyc`` path and bytes.
    Returns nothing (the image still works, just compiles at start) when the interpreter cannot
    run here or is not the one the image runs."""
    if not sources or not cache_tag or not os.access(python, os.X_OK):
        return {}
    payload = json.dumps({p: s.decode("latin-1") for p, s in sources.items()})
    try:
        out = subprocess.run([python, "-S", "-E", "-c", _SCRIPT], input=payload, capture_output=True, text=True,
                             timeout=60, check=True, env={"PYTHONHASHSEED": "0"})
    except (OSError, subprocess.SubprocessError):
        return {}
    result = json.loads(out.stdout)
    if result["tag"] != cache_tag:
        return {}
    pycs: dict[str, bytes] = {}
    for path, hexdata in result["pycs"].items():
        directory, name = path.rsplit("/", 1)
        pycs[f"{directory}/__pycache__/{name[:-3]}.{cache_tag}.pyc"] = bytes.fromhex(hexdata)
    return pycs
