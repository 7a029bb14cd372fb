"""Generate the containerd gRPC stubs from the .proto files Debian ships.

The stubs live under the private package ``faasd_py.runtime._api`` (proto import paths are
rewritten to that prefix) so they can never clash with another containerd client installed in
the same environment. They are built at install time and never committed or hand-edited.

Usage: ``python -m faasd_py.runtime.codegen [--out DIR] [--gocode /usr/share/gocode/src]``
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

GOCODE = Path("/usr/share/gocode/src")
PREFIX = "faasd_py/runtime/_api"
DEFAULT_OUT = Path(__file__).resolve().parents[2]  # the directory that holds faasd_py/

# (source relative to GOCODE, destination relative to PREFIX)
_EXTRA = [
    ("github.com/containerd/containerd/protobuf/plugin/fieldpath.proto", "plugin/fieldpath.proto"),
    ("github.com/gogo/protobuf/gogoproto/gogo.proto", "gogoproto/gogo.proto"),
    ("github.com/containerd/containerd/runtime/v2/runc/options/oci.proto", "runc/options/oci.proto"),
]
_REWRITES = [
    (re.compile(r'"github\.com/containerd/containerd/api/'), f'"{PREFIX}/api/'),
    (re.compile(r'"github\.com/containerd/containerd/protobuf/plugin/fieldpath\.proto"'),
     f'"{PREFIX}/plugin/fieldpath.proto"'),
    (re.compile(r'"gogoproto/gogo\.proto"'), f'"{PREFIX}/gogoproto/gogo.proto"'),
]


def generate(out: Path = DEFAULT_OUT, gocode: Path = GOCODE) -> int:
    """Write the stubs to ``out/faasd_py/runtime/_api``; return the number of modules."""
    from grpc_tools import protoc  # imported late: only needed at install time

    api = gocode / "github.com/containerd/containerd/api"
    if not api.is_dir():
        raise SystemExit(
            f"containerd API protos not found under {api}: "
            "install the Debian package golang-github-containerd-containerd-dev"
        )
    target = out / PREFIX
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        for proto in api.rglob("*.proto"):
            dest = stage / PREFIX / "api" / proto.relative_to(api)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proto, dest)
        for src, dst in _EXTRA:
            dest = stage / PREFIX / dst
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(gocode / src, dest)
        protos = sorted(stage.rglob("*.proto"))
        for proto in protos:
            text = proto.read_text()
            for pattern, repl in _REWRITES:
                text = pattern.sub(repl, text)
            proto.write_text(text)
        if target.exists():
            shutil.rmtree(target)
        out.mkdir(parents=True, exist_ok=True)
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{stage}",
            f"-I{gocode / 'github.com/gogo/googleapis'}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *[str(p.relative_to(stage)) for p in protos],
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
    for d in [target, *[p for p in target.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    (target / "__init__.py").write_text('"""Generated containerd API stubs (do not edit)."""\n')
    return sum(1 for _ in target.rglob("*_pb2*.py"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory that holds (or will hold) the faasd_py package")
    parser.add_argument("--gocode", type=Path, default=GOCODE, help="Debian's Go source tree")
    ns = parser.parse_args(argv)
    n = generate(ns.out, ns.gocode)
    print(f"generated {n} modules into {ns.out / PREFIX}", file=sys.stderr)


if __name__ == "__main__":
    main()
