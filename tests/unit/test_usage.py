"""provider/usage.py against fake cgroup trees (v1 as on this host, and pure v2)."""

from __future__ import annotations

from pathlib import Path

from faasd_py.provider.usage import InstanceUsage, UsageMeter


def v1(root: Path, ns: str, cid: str, cpu_ns: int, mem: int) -> None:
    (root / "cpuacct" / ns / cid).mkdir(parents=True, exist_ok=True)
    (root / "memory" / ns / cid).mkdir(parents=True, exist_ok=True)
    (root / "cpuacct" / ns / cid / "cpuacct.usage").write_text(f"{cpu_ns}\n")
    (root / "memory" / ns / cid / "memory.usage_in_bytes").write_text(f"{mem}\n")


def test_v1_totals_sum_instances_and_skip_missing_ones(tmp_path: Path) -> None:
    v1(tmp_path, "openfaas-fn", "a", 2_500_000_000, 1000)
    v1(tmp_path, "openfaas-fn", "b", 500_000_000, 24)
    meter = UsageMeter(tmp_path)
    t = meter.totals("openfaas-fn", ["a", "b", "stopped"])
    assert (t.cpu_seconds, t.memory_bytes) == (3.0, 1024)
    assert meter.read("openfaas-fn", "stopped") is None


def test_v2_files(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    d = tmp_path / "ns" / "a"
    d.mkdir(parents=True)
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (d / "memory.current").write_text("4096\n")
    u = UsageMeter(tmp_path).read("ns", "a")
    assert u is not None and (u.cpu_seconds, u.memory_bytes) == (1.5, 4096)


class BusyMeter(UsageMeter):
    """Each reading finds the instance 0.05 s of CPU further: busy while the meter sleeps its probe."""

    def read(self, namespace: str, instance: str) -> InstanceUsage | None:
        u = super().read(namespace, instance)
        v1(self._root, namespace, instance, int((u.cpu_seconds if u else 0) * 1e9) + 50_000_000, 5000)
        return u


async def test_cpu_rate_from_a_probe_then_from_the_previous_reading(tmp_path: Path) -> None:
    v1(tmp_path, "ns", "a", 0, 5000)
    meter = BusyMeter(tmp_path, min_window=0.2, probe=0.1)
    usage = await meter.usage("ns", ["a"])
    assert usage.total_memory_bytes == 5000
    assert 0.2 < usage.cpu < 0.6  # 0.05 s over ~0.1 s: about half a core

    # asked again right away: the same answer, without a new probe
    again = await meter.usage("ns", ["a"])
    assert again.cpu == usage.cpu


async def test_a_frozen_or_idle_instance_reports_zero_cpu_and_a_stopped_one_nothing(tmp_path: Path) -> None:
    v1(tmp_path, "ns", "paused", 7_000_000_000, 3000)  # the freezer keeps the counter still
    meter = UsageMeter(tmp_path, probe=0.05)
    usage = await meter.usage("ns", ["paused", "stopped"])
    assert usage.cpu == 0.0 and usage.total_memory_bytes == 3000
    empty = await meter.usage("ns", ["stopped"])
    assert empty.cpu == 0.0 and empty.total_memory_bytes == 0


async def test_a_replaced_task_does_not_give_a_negative_rate(tmp_path: Path) -> None:
    v1(tmp_path, "ns", "a", 9_000_000_000, 1)
    meter = UsageMeter(tmp_path, min_window=0.0, probe=0.01)
    await meter.usage("ns", ["a"])
    v1(tmp_path, "ns", "a", 1_000_000, 1)  # restarted: the counter began again
    usage = await meter.usage("ns", ["a"])
    assert usage.cpu >= 0.0
