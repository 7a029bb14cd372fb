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
        self._rate: dict[tuple[str, str], float] = {}

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
        ids = list(instances)
        now = time.monotonic()
        readings = {i: self.read(namespace, i) for i in ids}
        need_probe = any(
            u is not None and not self._fresh((namespace, i), now) and (namespace, i) not in self._usable(now)
            for i, u in readings.items()
        )
        if need_probe:
            for i, u in readings.items():
                if u is not None:
                    self._last[(namespace, i)] = (now, u.cpu_seconds)
            await asyncio.sleep(self._probe)
            now = time.monotonic()
            readings = {i: self.read(namespace, i) for i in ids}
        cpu = 0.0
        memory = 0
        for i, u in readings.items():
            if u is None:
                continue
            memory += u.memory_bytes
            cpu += self._cpu_rate((namespace, i), now, u.cpu_seconds)
        self._forget_old(now)
        return FunctionUsage(cpu=round(cpu, 6), total_memory_bytes=float(memory))

    def _fresh(self, key: tuple[str, str], now: float) -> bool:
        """A rate computed less than min_window ago can be answered again as it is."""
        last = self._last.get(key)
        return last is not None and now - last[0] < self._min_window and key in self._rate

    def _usable(self, now: float) -> set[tuple[str, str]]:
        return {k for k, (t, _) in self._last.items() if self._min_window <= now - t <= self._max_window}

    def _cpu_rate(self, key: tuple[str, str], now: float, cpu_seconds: float) -> float:
        last = self._last.get(key)
        if last is not None and now - last[0] < self._min_window and key in self._rate and now - last[0] < self._probe:
            return self._rate[key]
        if last is None or now <= last[0] or cpu_seconds < last[1]:
            self._last[key] = (now, cpu_seconds)
            return 0.0
        if now - last[0] < self._min_window and key in self._rate:
            return self._rate[key]
        rate = max(0.0, (cpu_seconds - last[1]) / (now - last[0]))
        self._last[key] = (now, cpu_seconds)
        self._rate[key] = rate
        return rate

    def _forget_old(self, now: float) -> None:
        for key in [k for k, (t, _) in self._last.items() if now - t > self._max_window * 2]:
            self._last.pop(key, None)
            self._rate.pop(key, None)
