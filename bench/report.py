"""Markdown for one benchmark run: the figures per image next to faasd's, and the targets.

Rows are computed from the per-repeat results only; the faasd columns come from
:mod:`bench.baseline` and are labelled as measured elsewhere.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import baseline
from bench.measure import ColdCycle, Throughput, Warm, summarize_cold
from bench.stats import median, spread

MARKER = "<!-- runs: newest first; `python -m bench.run` inserts each run below this line -->"

TARGET_FIRST_200_MS = 250.0
TARGET_OVERHEAD_MS = 0.3
TARGET_RATIO = 0.60


@dataclass
class Repeat:
    """One repeat of every benchmark for one image."""

    cold: list[ColdCycle] = field(default_factory=list)
    warm: Warm | None = None
    throughput: dict[int, Throughput] = field(default_factory=dict)
    rss_before: dict[str, float] = field(default_factory=dict)  # process -> MiB
    rss_after: dict[str, float] = field(default_factory=dict)


Results = dict[str, list[Repeat]]  # image -> repeats


@dataclass
class Row:
    key: str
    label: str
    cells: dict[str, str]
    target: str = ""


def _per_repeat(reps: Sequence[Repeat], f: Callable[[Repeat], float]) -> list[float]:
    out = []
    for r in reps:
        try:
            out.append(f(r))
        except (KeyError, AttributeError, TypeError):
            out.append(math.nan)
    return out


def _warm(r: Repeat) -> Warm:
    if r.warm is None:
        raise AttributeError("no warm result")
    return r.warm


def rows(results: Results, connections: Sequence[int]) -> list[Row]:
    names = list(results)
    table: list[Row] = []

    def add(key: str, label: str, f: Callable[[Repeat], float], digits: int = 1, target: str = "") -> None:
        table.append(Row(key, label, {n: spread(_per_repeat(results[n], f), digits) for n in names}, target))

    def add_text(key: str, label: str, f: Callable[[list[Repeat]], str], target: str = "") -> None:
        table.append(Row(key, label, {n: f(results[n]) for n in names}, target))

    def cold(field_: str) -> Callable[[Repeat], float]:
        return lambda r: summarize_cold(r.cold)[field_] if r.cold else math.nan

    add("post_ms", "Deploy: `POST /system/functions` returns (ms)", cold("post_ms"), 0)
    add("first_200_ms", "Deploy POST → first 200 via gateway (ms)", cold("first_200_ms"), 0,
        f"≤ {TARGET_FIRST_200_MS:g}")
    add("after_post_ms", "Deploy returned → first 200 (ms)", cold("after_post_ms"), 1)
    add_text("first_was_200", "Cold cycles whose first invocation was already a 200",
             lambda reps: f"{sum(c.first_was_200 for r in reps for c in r.cold)}/{sum(len(r.cold) for r in reps)}")
    add("delete_ms", "Delete: `DELETE /system/functions` returns (ms)", cold("delete_ms"), 1)
    add("gone_ms", "Delete sent → replica's netns gone (ms)", cold("gone_ms"), 0)
    for which in ("gateway", "direct"):
        for q in (50, 90, 99):
            add(f"warm_{which}_p{q}", f"Warm c=1 {'via gateway' if which == 'gateway' else 'direct to :8080'} "
                f"p{q} (ms)", _warm_p(which, q), 2)
    add("overhead_p50", "Gateway overhead at c=1: p50 gateway - p50 direct (ms)",
        lambda r: _warm(r).p("gateway", 50) - _warm(r).p("direct", 50), 2, f"≤ {TARGET_OVERHEAD_MS:g}")
    add("cpu_c1_daemon", "CPU per request at c=1 via gateway: daemon (ms)",
        lambda r: _warm(r).cpu_per_request["daemon"], 2)
    add("cpu_c1_containerd", "CPU per request at c=1 via gateway: containerd (ms)",
        lambda r: _warm(r).cpu_per_request["containerd"], 2)
    add("cpu_c1_logs", "CPU per request at c=1 via gateway: the daemon's log helper (ms)",
        lambda r: _warm(r).cpu_per_request.get("logs", math.nan), 2)
    add("cpu_c1_journald", "CPU per request at c=1 via gateway: journald, for the function's log lines (ms)",
        lambda r: _warm(r).cpu_per_request["journald"], 2)
    for c in connections:
        add(f"rps_gateway_{c}", f"Throughput via gateway c={c} (req/s)", _tp(c, lambda t: t.gateway.rps), 0)
    for c in connections:
        add(f"rps_direct_{c}", f"Throughput direct c={c} (req/s)", _tp(c, lambda t: t.direct.rps), 0)
    for c in connections:
        add(f"ratio_{c}", f"Throughput gateway / direct c={c}", _tp(c, lambda t: t.ratio), 2,
            f"≥ {TARGET_RATIO:.2f}")
    add_text("errors", "Errors in any throughput run (socket errors, timeouts, wrong answers)", _errors)
    cs = " / ".join(f"c={c}" for c in connections)
    add_text("p99_gateway", f"p99 via gateway {cs} (ms)",
             lambda reps: _joined(reps, connections, lambda t: t.gateway.p99_ms))
    add_text("p99_direct", f"p99 direct {cs} (ms)",
             lambda reps: _joined(reps, connections, lambda t: t.direct.p99_ms))
    for c in connections:
        add(f"cpu_{c}_daemon", f"CPU per request via gateway c={c}: daemon (ms)",
            _tp(c, lambda t: t.cpu_per_request["daemon"]), 2)
        add(f"cpu_{c}_containerd", f"CPU per request via gateway c={c}: containerd (ms)",
            _tp(c, lambda t: t.cpu_per_request["containerd"]), 2)
        add(f"cpu_{c}_logs", f"CPU per request via gateway c={c}: the daemon's log helper (ms)",
            _tp(c, lambda t: t.cpu_per_request.get("logs", math.nan)), 2)
        add(f"cpu_{c}_journald", f"CPU per request via gateway c={c}: journald (ms)",
            _tp(c, lambda t: t.cpu_per_request["journald"]), 2)
    for proc in ("daemon", "logs", "containerd"):
        add_text(f"rss_{proc}", f"RSS {proc} before → after load (MiB; one process for all images)",
                 _rss(proc))
    return table


def _warm_p(which: str, q: float) -> Callable[[Repeat], float]:
    return lambda r: _warm(r).p(which, q)


def _tp(c: int, f: Callable[[Throughput], float]) -> Callable[[Repeat], float]:
    return lambda r: f(r.throughput[c])


def _rss(proc: str) -> Callable[[list[Repeat]], str]:
    return lambda reps: (f"{median([r.rss_before.get(proc, math.nan) for r in reps]):.1f} → "
                         f"{median([r.rss_after.get(proc, math.nan) for r in reps]):.1f}")


def _errors(reps: list[Repeat]) -> str:
    runs = [t for r in reps for t in r.throughput.values()]
    total = sum(t.gateway.failures + t.direct.failures for t in runs)
    warm_fail = sum(r.warm.failures for r in reps if r.warm is not None)
    text = f"{total} (in {2 * len(runs)} runs)"
    return text + (f"; {warm_fail} failed warm requests" if warm_fail else "")


def _joined(reps: list[Repeat], connections: Sequence[int], f: Callable[[Throughput], float]) -> str:
    parts = []
    for c in connections:
        parts.append(f"{median([f(r.throughput[c]) for r in reps if c in r.throughput]):.0f}")
    return " / ".join(parts)


def verdicts(table: list[Row], results: Results) -> list[str]:
    """One line per target and image: the median against the target."""
    out = []
    for row in table:
        if not row.target:
            continue
        for name in results:
            cell = row.cells[name]
            try:
                value = float(cell.split()[0])
            except (ValueError, IndexError):
                continue
            op, limit = row.target.split()
            met = value <= float(limit) if op == "≤" else value >= float(limit)
            out.append(f"{'MET   ' if met else 'MISSED'} {name}: {row.label} = {cell} (target {row.target})")
    return out


def markdown(table: list[Row], results: Results, kinds: dict[str, str]) -> str:
    names = list(results)
    header = ["metric"]
    for n in names:
        header.append(f"faasd-py **{n}**")
        if n in baseline.PAIRS:
            header.append(f"faasd {baseline.PAIRS[n]} ¹")
    header.append("target")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [row.label]
        for n in names:
            cells.append(row.cells[n])
            if n in baseline.PAIRS:
                pair = baseline.FIGURES.get(row.key)
                index = list(baseline.PAIRS).index(n)
                cells.append(pair[index] if pair else "")
        cells.append(row.target)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"¹ faasd (Go) baseline, **measured elsewhere** on the same machine kind: {baseline.SOURCE}. "
                 "Its images fork busybox `cat|rev|tr` (echo-classic) and a busybox shell (http-of) per request, "
                 "so its *direct* figures are not the same handler's; compare the gateway overhead and the "
                 "gateway/direct ratio.")
    lines.append("")
    lines.append("Images: " + "; ".join(f"**{n}**: {kinds[n]}" for n in names) + ".")
    return "\n".join(lines)


def section(title: str, meta: list[tuple[str, str]], table_md: str, verdict_lines: list[str],
            notes: list[str]) -> str:
    out = [f"### {title}", ""]
    out += [f"- {k}: {v}" for k, v in meta]
    out += ["", table_md, "", "Targets (median over repeats):", "", "```", *verdict_lines, "```"]
    if notes:
        out += ["", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


def insert_into(doc: Path, text: str, marker: str = MARKER, heading: str = "## Runs") -> None:
    """Put ``text`` right below ``marker`` (newest first); a file without the marker gets
    ``heading`` and the marker appended once."""
    content = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if marker not in content:
        content = content.rstrip("\n") + f"\n\n{heading}\n\n{marker}\n"
    head, _, tail = content.partition(marker)
    doc.write_text(f"{head}{marker}\n\n{text}{tail}")


def print_leaks(leaks: list[str]) -> None:
    print("bench: left behind:\n  " + "\n  ".join(leaks), file=sys.stderr)


def failed(error: BaseException, leaks: list[str]) -> int:
    """Report a benchmark that did not finish; its exit code (130 for Ctrl-C)."""
    print(f"bench: failed: {error!r}", file=sys.stderr)
    if leaks:
        print_leaks(leaks)
    return 130 if isinstance(error, KeyboardInterrupt) else 1
