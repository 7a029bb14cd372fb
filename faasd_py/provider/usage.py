"""What a function costs: CPU seconds and memory bytes of its instances, read from their cgroups.

containerd's ``Tasks.Metrics`` would give the same numbers, but its answer is a protobuf ``Any``
holding ``io.containerd.cgroups.v1.Metrics``, whose .proto Debian does not ship (only the API
protos are packaged), so it cannot be decoded here. runc puts every task in the cgroup
``/<namespace>/<container id>`` (the spec's ``cgroupsPath``), and the kernel's files there are
the very numbers containerd would report: ``cpuacct.usage`` (ns) and ``memory.usage_in_bytes``
on cgroup v1 (this host), ``cpu.stat`` / ``memory.current`` on a pure cgroup v2 host.

A paused instance keeps its cgroup (memory still counted, CPU frozen, so its CPU rate is 0); a
stopped one has none and counts as 0 for both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from faasd_py.types import FunctionUsage

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class InstanceUsage:
    cpu_seconds: float  # since the task started
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class FunctionSample:
    """One function's numbers at one moment, for the metrics endpoint (chargeback)."""

    name: str
    namespace: str
    replicas: int  # as listed: 0 while scaled to zero
    cpu_seconds: float  # of the instances that exist now (a counter that resets when they are replaced)
    memory_bytes: int
    invocations: int


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_bytes().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class UsageMeter:
    """Reads instance cgroups; turns CPU seconds into a rate (cores) between two readings.

    The rate needs two readings: the previous one is reused when it is between ``min_window``
    and ``max_window`` old (a describe every few seconds costs one read), otherwise a fresh pair
    ``probe`` seconds apart is taken. The file reads are sysfs reads of a few bytes each.
    """

    def __init__(self, root: Path = CGROUP_ROOT, *, min_window: float = 1.0, max_window: float = 60.0,
                 probe: float = 0.25) -> None:
        self._root = root
        self._v2 = (root / "cgroup.controllers").exists()
        self._min_window = min_window
        self._max_window = max_window
        self._probe = probe
        self._last: dict[tuple[str, str], tuple[float, float]] = {}  # (ns, id) -> (monotonic, cpu seconds)
        self._rate: dict[tuple[str, str], tuple[float, float]] = {}  # (ns, id) -> (when, cores)

    def read(self, namespace: str, instance: str) -> InstanceUsage | None:
        """None when the instance has no cgroup (no task: stopped, or never started)."""
        if self._v2:
            base = self._root / namespace / instance
            memory = _read_int(base / "memory.current")
            cpu = self._cpu_v2(base / "cpu.stat")
        else:
            memory = _read_int(self._root / "memory" / namespace / instance / "memory.usage_in_bytes")
            ns = _read_int(self._root / "cpuacct" / namespace / instance / "cpuacct.usage")
            cpu = None if ns is None else ns / 1e9
        if memory is None and cpu is None:
            return None
        return InstanceUsage(cpu_seconds=cpu or 0.0, memory_bytes=memory or 0)

    @staticmethod
    def _cpu_v2(path: Path) -> float | None:
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            return None
        return None

    def totals(self, namespace: str, instances: Iterable[str]) -> InstanceUsage:
        """CPU seconds and memory bytes summed over the instances (for the metrics counters)."""
        cpu, memory = 0.0, 0
        for inst in instances:
            u = self.read(namespace, inst)
            if u is not None:
                cpu += u.cpu_seconds
                memory += u.memory_bytes
        return InstanceUsage(cpu, memory)

    async def usage(self, namespace: str, instances: Iterable[str]) -> FunctionUsage:
        """Current CPU (cores) and memory (bytes) of a function: ``?usage=1`` of the API."""
        now = time.monotonic()
        readings = {(namespace, i): self.read(namespace, i) for i in instances}
        rates: dict[tuple[str, str], float] = {}
        probe: list[tuple[str, str]] = []
        for key, u in readings.items():
            if u is None:
                continue
            rate = self._rate_from_last(key, now, u.cpu_seconds)
            if rate is None:
                self._last[key] = (now, u.cpu_seconds)
                probe.append(key)
            else:
                rates[key] = rate
        if probe:
            await asyncio.sleep(self._probe)
            now = time.monotonic()
            for key in probe:
                u = self.read(*key)
                readings[key] = u
                if u is not None:
                    rates[key] = self._rate_from_last(key, now, u.cpu_seconds, min_window=0.0) or 0.0
        memory = sum(u.memory_bytes for u in readings.values() if u is not None)
        self._forget_old(now)
        return FunctionUsage(cpu=round(sum(rates.values()), 6), total_memory_bytes=float(memory))

    def _rate_from_last(self, key: tuple[str, str], now: float, cpu_seconds: float,
                        min_window: float | None = None) -> float | None:
        """The CPU rate against the previous reading, or None when there is no usable one."""
        window = self._min_window if min_window is None else min_window
        cached = self._rate.get(key)
        if cached is not None and now - cached[0] < window:
            return cached[1]  # asked again right away: the same answer, no new window
        last = self._last.get(key)
        if last is None or cpu_seconds < last[1]:  # none yet, or the task was replaced
            return None
        age = now - last[0]
        if age <= 0 or age < window or age > self._max_window:
            return None
        rate = (cpu_seconds - last[1]) / age
        self._last[key] = (now, cpu_seconds)
        self._rate[key] = (now, rate)
        return rate

    def _forget_old(self, now: float) -> None:
        for key in [k for k, (t, _) in self._last.items() if now - t > self._max_window * 2]:
            self._last.pop(key, None)
            self._rate.pop(key, None)
