"""CPU time and RSS of a process from /proc: the same source the faasd baseline used."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far, in ms (children are not counted: the
    invocation path spawns none, and CNI plugin runs belong to deploys, not invocations)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone (a shared journald another test env stopped): no figure, not a failed run
        return math.nan
    # after the ")" field 1 is the state (stat field 3), so utime (14) and stime (15) are 11 and 12
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_MS


def rss_mib(pid: int) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return math.nan
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class CpuMeter:
    """Accumulates CPU ms of several processes over the measured stretches only."""

    pids: dict[str, int]

    def __post_init__(self) -> None:
        self.total: dict[str, float] = dict.fromkeys(self.pids, 0.0)
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_ms(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        for name, pid in self.pids.items():
            self.total[name] += cpu_ms(pid) - self._start[name]

    def per_request(self, requests: int) -> dict[str, float]:
        return {name: (ms / requests if requests else float("nan")) for name, ms in self.total.items()}
