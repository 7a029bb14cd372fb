"""Throughput with wrk: POST ``hello world``, check every response, report in a parseable form.

The Lua script counts responses that are not a 200 carrying the body (wrk itself only counts
socket errors and non-2xx/3xx statuses) and prints its summary as ``KEY value`` lines, so the
parser does not depend on wrk's human-readable output.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = """\
wrk.method = "POST"
wrk.body = "%(body)s"
wrk.headers["Content-Type"] = "text/plain"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

bad = 0
function response(status, headers, body)
  if status ~= 200 or not string.find(body, "%(expect)s", 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total_bad = 0
  for _, t in ipairs(threads) do
    total_bad = total_bad + t:get("bad")
  end
  local e = summary.errors
  io.write(string.format("BENCH requests %%d\\n", summary.requests))
  io.write(string.format("BENCH duration_us %%d\\n", summary.duration))
  io.write(string.format("BENCH bad %%d\\n", total_bad))
  io.write(string.format("BENCH errors %%d\\n", e.connect + e.read + e.write + e.timeout))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format("BENCH p%%d_us %%d\\n", p, latency:percentile(p)))
  end
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # socket errors and timeouts
    bad: int  # responses that are not a 200 with the expected body (includes non-200s)
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failures(self) -> int:
        return self.errors + self.bad


def available() -> bool:
    return shutil.which("wrk") is not None


def write_script(path: Path, body: str, expect: str) -> Path:
    path.write_text(SCRIPT % {"body": body, "expect": expect})
    return path


def run(url: str, script: Path, connections: int, seconds: float, threads: int = 2,
        timeout_s: float = 10.0) -> WrkResult:
    # wrk takes whole seconds only
    argv = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s:g}s", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    values: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "BENCH":
            values[parts[1]] = int(parts[2])
    if proc.returncode != 0 or "requests" not in values:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return WrkResult(
        requests=values["requests"],
        seconds=values["duration_us"] / 1e6,
        errors=values["errors"],
        bad=values["bad"],
        p50_ms=values["p50_us"] / 1000,
        p90_ms=values["p90_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
    )
