"""The core-path benchmark: real containerd, runc, CNI and registry, the daemon as its own process.

    sudo .venv/bin/python -m bench.run            # full: 3 repeats (~25 min); writes docs/benchmarks.md
    sudo .venv/bin/python -m bench.run --quick    # CI smoke (~2 min); prints only

Per image (echo, http, fast), side by side in one run: deploy → first 200 with the image local,
warm latency at c=1 via the gateway and direct to the watchdog, wrk throughput at c=16/64 both
ways, and the daemon's CPU per request and RSS. Everything it starts (containerd, registry,
journald if none runs, the daemon, functions, netns, bridge, iptables rules) is removed at the
end, also on error or Ctrl-C; leftovers are listed and make the exit status non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import measure, report, wrk
from bench.daemon import DaemonProcess
from bench.images import DEFAULT_NAMES, NAMES, BenchImage, build_and_push
from bench.procstat import CpuMeter, rss_mib
from tests.infra import TestEnv, missing_prerequisite

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"


@dataclasses.dataclass
class Plan:
    repeats: int
    cycles: int
    requests: int
    wrk_seconds: float
    connections: tuple[int, ...]
    images: tuple[str, ...]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI smoke: 1 repeat, 2 cold cycles, 300 requests, 3 s wrk")
    p.add_argument("--repeats", type=int, help="repeats of every benchmark (default 3; quick 1)")
    p.add_argument("--cycles", type=int, help="deploy→200→delete cycles per repeat and image (default 10; quick 2)")
    p.add_argument("--requests", type=int, help="sequential requests per side at c=1 (default 2000; quick 300)")
    p.add_argument("--wrk-seconds", type=float, help="length of each wrk run (default 10; quick 3)")
    p.add_argument("--connections", default="16,64", help="wrk concurrency levels (default 16,64)")
    p.add_argument("--images", default=",".join(DEFAULT_NAMES),
                   help=f"functions to measure (default {','.join(DEFAULT_NAMES)}; also: fastlog)")
    p.add_argument("--pull-policy", default="Always", choices=["Always", "IfNotPresent"],
                   help="daemon's registry.pull_policy (default Always: every deploy re-resolves the tag, like faasd)")
    p.add_argument("--doc", type=Path, help=f"markdown file to add the run to (default {DOC.relative_to(REPO)} "
                                            "for a full run, none for --quick)")
    p.add_argument("--no-doc", action="store_true", help="only print the results")
    p.add_argument("--json", type=Path, help="also write the raw per-repeat results here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a performance target is missed")
    p.add_argument("--dir", default="/tmp/fdpy-g", help="scratch dir for containerd, registry and daemon state")
    p.add_argument("--bridge", default="fdpyg0")
    p.add_argument("--subnet", default="10.98.0.0/16")
    p.add_argument("--netns-prefix", default="fdpyg-")
    return p.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    quick = args.quick

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    images = tuple(n.strip() for n in args.images.split(",") if n.strip())
    unknown = set(images) - set(NAMES)
    if unknown:
        raise SystemExit(f"unknown image(s) {sorted(unknown)}; have {', '.join(NAMES)}")
    return Plan(
        repeats=pick(args.repeats, 3, 1),
        cycles=pick(args.cycles, 10, 2),
        requests=pick(args.requests, 2000, 300),
        wrk_seconds=pick(args.wrk_seconds, 10.0, 3.0),
        connections=tuple(int(c) for c in args.connections.split(",")),
        images=images,
    )


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the run -------------------------------------------------------------------------------------


def run_all(plan: Plan, env: TestEnv, daemon: DaemonProcess, images: dict[str, BenchImage],
            loads: list[str]) -> report.Results:
    """Every benchmark, ``plan.repeats`` times; appends the load average at each repeat's start to ``loads``."""
    results: report.Results = {n: [] for n in plan.images}
    pids = {"daemon": daemon.pid, "containerd": env.pids["containerd"]}
    helper = daemon.log_helper_pid()
    if helper is not None:
        pids["logs"] = helper
    journald = journald_pid()
    if journald is not None:
        pids["journald"] = journald
    scripts = env.path / "wrk"
    scripts.mkdir(exist_ok=True)

    say("priming: one unmeasured deploy/delete per image (pulls the content, warms caches)")
    for name in plan.images:
        measure.cold_cycle(daemon, images[name])

    for rep in range(plan.repeats):
        loads.append(loadavg())
        reps = {n: report.Repeat() for n in plan.images}
        for n in plan.images:
            results[n].append(reps[n])
        say(f"repeat {rep + 1}/{plan.repeats}: {plan.cycles} deploy → first 200 → delete cycles per image")
        for _ in range(plan.cycles):
            for n in plan.images:  # interleaved, so drift hits every image alike
                reps[n].cold.append(measure.cold_cycle(daemon, images[n]))
        for n in plan.images:
            s = measure.summarize_cold(reps[n].cold)
            say(f"  {n}: POST {s['post_ms']:.0f} ms, POST → first 200 {s['first_200_ms']:.0f} ms, "
                f"delete {s['delete_ms']:.0f} ms, gone {s['gone_ms']:.0f} ms")

        addresses = deploy_all(daemon, images, plan.images)
        for n in plan.images:
            reps[n].rss_before = {k: rss_mib(pid) for k, pid in pids.items()}
        for n in plan.images:
            w = measure.warm(daemon, images[n], addresses[n], plan.requests, CpuMeter(pids))
            reps[n].warm = w
            say(f"  {n} c=1: gateway p50 {w.p('gateway', 50):.2f} ms, direct p50 {w.p('direct', 50):.2f} ms, "
                f"overhead {w.p('gateway', 50) - w.p('direct', 50):.2f} ms, "
                f"daemon CPU {w.cpu_per_request['daemon']:.2f} ms/req, failures {w.failures}")
        for n in plan.images:
            for c in plan.connections:
                t = measure.throughput(daemon, images[n], addresses[n], c, plan.wrk_seconds, scripts, CpuMeter(pids))
                reps[n].throughput[c] = t
                say(f"  {n} c={c}: gateway {t.gateway.rps:.0f} req/s, direct {t.direct.rps:.0f} req/s "
                    f"({t.ratio:.2f}), failures {t.gateway.failures}/{t.direct.failures}, "
                    f"daemon CPU {t.cpu_per_request['daemon']:.2f} ms/req")
        for n in plan.images:
            reps[n].rss_after = {k: rss_mib(pid) for k, pid in pids.items()}
        delete_all(daemon, plan.images)
    return results


def deploy_all(daemon: DaemonProcess, images: dict[str, BenchImage], names: tuple[str, ...]) -> dict[str, str]:
    conn = daemon.connect()
    try:
        for n in names:
            reply = daemon.deploy(conn, n, images[n].ref, images[n].env)
            if reply.status not in (200, 202):
                raise RuntimeError(f"deploy {n}: {reply.status} {reply.body[:300]!r}")
    finally:
        conn.close()
    return {n: daemon.address_of(n) for n in names}


def delete_all(daemon: DaemonProcess, names: tuple[str, ...] | list[str]) -> None:
    conn = daemon.connect()
    try:
        for n in names:
            daemon.delete(conn, n)
    finally:
        conn.close()
    for n in names:
        measure.wait_gone(daemon, n)


# --- context for the report ----------------------------------------------------------------------


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} vCPU {model}, {mem_kib / 1024 / 1024:.0f} GiB RAM, kernel {platform.release()}"


def git_commit() -> str:
    sha = _cmd("git", "-C", str(REPO), "rev-parse", "--short", "HEAD") or "unknown"
    dirty = _cmd("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no")
    return sha + (" (with uncommitted changes)" if dirty else "")


def versions() -> str:
    ctd = _cmd("containerd", "--version").split()
    runc = _cmd("runc", "--version").splitlines()
    wrk_v = _cmd("wrk", "-v").split()
    return (f"Python {platform.python_version()}, containerd {ctd[2] if len(ctd) > 2 else '?'}, "
            f"{runc[0] if runc else 'runc ?'}, {' '.join(wrk_v[:2]) if wrk_v else 'wrk ?'}")


def journald_pid() -> int | None:
    """The journald the functions' logs go to (ours or one already running), if there is exactly one."""
    pids = _cmd("pgrep", "-x", "systemd-journal").split()
    return int(pids[0]) if len(pids) == 1 else None


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def other_load() -> str:
    """Other busy processes on the host: a shared machine skews throughput figures."""
    out = _cmd("ps", "-eo", "pcpu=,comm=", "--sort=-pcpu")
    busy = [ln.split(None, 1) for ln in out.splitlines() if ln.strip()]
    tops = [f"{c.strip()} {p}%" for p, c in busy[:5] if float(p) >= 5.0]
    return ", ".join(tops) or "none above 5 % CPU"


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from(args)
    why = missing_prerequisite() or (None if wrk.available() else "wrk is not installed (apt-get install wrk)")
    if why:
        print(f"bench: cannot run: {why}", file=sys.stderr)
        return 2
    command = "sudo .venv/bin/python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)
    load_before, others_before = loadavg(), other_load()
    env = TestEnv(dir=args.dir, bridge=args.bridge, subnet=args.subnet, netns_prefix=args.netns_prefix)
    daemon: DaemonProcess | None = None
    results: report.Results = {}
    loads: list[str] = []
    error: BaseException | None = None
    t0 = time.monotonic()
    try:
        say(f"starting containerd, registry, journald under {env.dir}")
        env.up()
        say("building and pushing the images")
        images = build_and_push(plan.images, env.path / "images", env.registry)
        daemon = DaemonProcess(env, env.path / "daemon", args.pull_policy)
        say(f"starting the daemon: {daemon.command}")
        daemon.start()
        results = run_all(plan, env, daemon, images, loads)
    except BaseException as exc:  # reported below, after the teardown
        error = exc
        traceback.print_exc()
        if daemon is not None:  # env.down() deletes the log with the rest of the dir
            print(f"daemon log (tail):\n{daemon.log_tail()}", file=sys.stderr)
    finally:
        leaks = teardown(env, daemon)
    elapsed = time.monotonic() - t0
    if error is not None:
        return report.failed(error, leaks)

    table = report.rows(results, plan.connections)
    verdict_lines = report.verdicts(table, results)
    from bench.images import KINDS

    title = f"{started:%Y-%m-%d %H:%M} UTC — {'quick' if args.quick else 'full'} run"
    meta = [
        ("Machine", machine()),
        ("Software", versions()),
        ("Git commit", git_commit()),
        ("Command", f"`{command}`"),
        ("Plan", f"{plan.repeats} repeat(s); per repeat and image: {plan.cycles} cold cycles, {plan.requests} "
                 f"sequential requests per side at c=1, wrk {plan.wrk_seconds:g} s at "
                 f"c={'/'.join(map(str, plan.connections))} (2 threads); pull policy {args.pull_policy}; "
                 f"took {elapsed / 60:.1f} min"),
        ("Host load", f"loadavg {load_before} at start, {'; '.join(loads)} at each repeat's start, {loadavg()} at "
                      f"the end; other busy processes at start: {others_before}"),
    ]
    notes = ["Cells are **median [min-max] over repeats**; each repeat value is the median of its cold cycles, "
             "a percentile over its sequential requests, or one wrk run. wrk, the client, the daemon, containerd "
             "and the functions all share the machine's CPUs."]
    text = report.section(title, meta, report.markdown(table, results, KINDS), verdict_lines, notes)
    print()
    print(text)
    doc = None if args.no_doc else (args.doc or (None if args.quick else DOC))
    if doc is not None:
        report.insert_into(doc, text)
        say(f"added to {doc}")
    if args.json is not None:
        args.json.write_text(json.dumps({n: [dataclasses.asdict(r) for r in reps] for n, reps in results.items()},
                                        indent=1, default=str))
    failures = sum(c.failures > 0 for reps in results.values() for r in reps for c in r.cold)
    failures += sum(t.gateway.failures + t.direct.failures for reps in results.values() for r in reps
                    for t in r.throughput.values())
    failures += sum(r.warm.failures for reps in results.values() for r in reps if r.warm is not None)
    if leaks:
        report.print_leaks(leaks)
    missed = [v for v in verdict_lines if v.startswith("MISSED")]
    if failures or leaks:
        print(f"bench: {failures} failed request(s) or cycle(s), {len(leaks)} leftover(s)", file=sys.stderr)
        return 1
    return 1 if args.strict and missed else 0


def teardown(env: TestEnv, daemon: DaemonProcess | None) -> list[str]:
    """Delete what is still deployed through the API (the clean path), stop the daemon, then let
    TestEnv.down remove everything else; returns what is still there."""
    say("tearing down")
    if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
        try:
            left = daemon.functions()
            if left:
                delete_all(daemon, left)
        except Exception as exc:  # env.down() removes the rest regardless
            say(f"  deleting functions through the API failed ({exc!r}); env.down() removes them")
        daemon.stop()
    env.down()
    return env.leaks()


if __name__ == "__main__":
    raise SystemExit(main())
