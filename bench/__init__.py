"""Benchmarks of the faasd-py core path against real containerd, runc and CNI (``python -m bench.run``).

``bench.run`` drives a daemon running as its own process, the way ``faasd-py up`` runs in production,
and writes its figures into docs/benchmarks.md next to the faasd (Go) baseline. ``bench.invoke_bench``
is a smaller loopback-only micro-benchmark of the gateway's proxy.
"""
