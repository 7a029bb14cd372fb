"""Build time of a python3-template function (``faasd-py new`` + ``faasd-py build``), cold and warm.

cold: an empty build cache every run, so the host base layer, the watchdog layer, the template
      layer and (with requirements) the pip install are all made from scratch;
warm: the cache filled by a previous build: only the handler layer, config and manifest are new
      (measured in-process, and as a whole ``faasd-py build --no-import`` process).

    .venv/bin/python -m bench.build_time [--cold 3] [--warm 10] [--requirements six]

Prints the median (and min/max) of each; nothing is pushed or imported.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from faasd_py.build.stack import load_stack
from faasd_py.build.stackbuild import BuildOptions, build_stack
from faasd_py.build.template import new_function


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _report(label: str, samples: list[float]) -> None:
    print(f"{label:<34} median {statistics.median(samples) * 1000:8.0f} ms   "
          f"min {min(samples) * 1000:6.0f}   max {max(samples) * 1000:6.0f}   (n={len(samples)})")


def measure(work: Path, cold_runs: int, warm_runs: int, requirements: str) -> dict[str, list[float]]:
    made = new_function("bench-fn", "python3", work, prefix="127.0.0.1:5000/bench")
    (made.handler_dir / "handler.py").write_text("def handle(req):\n    return req[::-1]\n")
    (made.handler_dir / "requirements.txt").write_text(requirements.replace(",", "\n") + "\n" if requirements else "")
    stack = load_stack(made.stack_file)
    digests: set[str] = set()

    def build(cache: Path) -> None:
        [result] = build_stack(stack, options=BuildOptions(output=work / "out", cache_dir=cache))
        digests.add(result.digest)

    results: dict[str, list[float]] = {"cold": [], "warm": [], "warm-cli": []}
    for i in range(cold_runs):
        results["cold"].append(_timed(functools.partial(build, work / f"cold-cache-{i}")))
    warm_cache = work / "warm-cache"
    build(warm_cache)  # fill it
    for _ in range(warm_runs):
        results["warm"].append(_timed(lambda: build(warm_cache)))
    argv = [sys.executable, "-m", "faasd_py", "build", "-f", str(made.stack_file), "--no-import",
            "--output", str(work / "out-cli"), "--cache-dir", str(warm_cache)]
    for _ in range(max(1, warm_runs // 2)):
        results["warm-cli"].append(_timed(lambda: subprocess.run(argv, check=True, capture_output=True)))
    if len(digests) != 1:
        raise SystemExit(f"not reproducible: {len(digests)} different digests: {sorted(digests)}")
    print(f"digest (same in every run): {digests.pop()}")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--cold", type=int, default=3, help="cold builds (each with an empty cache)")
    p.add_argument("--warm", type=int, default=10, help="warm builds")
    p.add_argument("--requirements", default="", help="comma-separated requirements, e.g. six (from PyPI)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="faasd-py-bench-build-") as tmp:
        results = measure(Path(tmp), args.cold, args.warm, args.requirements)
    what = f"python3 template{' + ' + args.requirements if args.requirements else ''}"
    print(f"build time, {what}:")
    _report("cold (empty cache)", results["cold"])
    _report("warm (in-process)", results["warm"])
    _report("warm (faasd-py build process)", results["warm-cli"])


if __name__ == "__main__":
    main()
