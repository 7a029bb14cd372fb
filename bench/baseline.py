"""The faasd (Go) figures faasd-py is compared with, transcribed from the project's baseline note
(shared/reference/faasd-baseline.md, measured 2026-11-21 on the same machine kind: Debian 12 VM,
2 vCPU AMD EPYC, 24 GiB). They are reference numbers measured elsewhere, not results of this run.

Keys match the rows of :mod:`bench.report`; values are (echo-classic, http-of) as printed there.
faasd runs a gateway and a provider process where faasd-py has one daemon, so CPU and RSS rows
give both.
"""

from __future__ import annotations

SOURCE = "faasd 0.19.7 + OpenFaaS gateway, containerd 1.6.20, measured 2026-11-21 (faasd-baseline.md)"

# the faasd-py image each faasd image is compared with
PAIRS = {"echo": "echo-classic", "http": "http-of"}

FIGURES: dict[str, tuple[str, str]] = {
    "post_ms": ("156 [153-159]", "157 [141-162]"),
    "first_200_ms": ("172 [168-174]", "191 [168-198]"),
    "after_post_ms": ("15 [14-17]", "36 [34-38]"),
    "first_was_200": ("14/15", "12/15"),
    "delete_ms": ("30181 [30170-30191]", "168 [149-169]"),
    "warm_gateway_p50": ("12.54 [10.48-13.07]", "31.96 [30.48-32.08]"),
    "warm_gateway_p90": ("15.06 [12.86-15.75]", "36.81 [35.90-37.72]"),
    "warm_gateway_p99": ("19.56 [16.23-20.39]", "42.09 [41.74-44.64]"),
    "warm_direct_p50": ("2.81 [2.75-2.92]", "16.80 [15.40-17.31]"),
    "warm_direct_p90": ("3.28 [3.20-3.44]", "19.36 [18.30-19.54]"),
    "warm_direct_p99": ("4.01 [3.69-4.30]", "22.32 [20.61-22.89]"),
    "overhead_p50": ("9.7", "15.2"),
    "cpu_c1_daemon": ("4.9 + 1.4 (provider + gateway)", "n/a"),
    "cpu_c1_containerd": ("4.2", "n/a"),
    "rps_gateway_16": ("261 [204-277]", "57 [54-63]"),
    "rps_gateway_64": ("236 [234-265]", "61 [55-66]"),
    "rps_direct_16": ("614 [522-625]", "122 [99-123]"),
    "rps_direct_64": ("549 [501-606]", "120 [96-128]"),
    "ratio_16": ("0.43", "0.47"),
    "ratio_64": ("0.43 (236/549)", "0.51 (61/120)"),
    "errors": ("0 (12 runs)", "0 (12 runs)"),
    "p99_gateway": ("120 / 535", "494 / 1694"),
    "p99_direct": ("56 / 271", "239 / 1507"),
    "cpu_16_daemon": ("1.54 + 0.51 (provider + gateway)", "4.00 + 1.32 (provider + gateway)"),
    "cpu_16_containerd": ("1.21 [1.20-1.60]", "3.12 [2.72-3.63]"),
    "rss_daemon": ("31.0 → 34.6 + 21.0 → 21.4 (provider + gateway)", "29.3 → 34.0 + 19.2 → 19.6 (provider + gateway)"),
    "rss_containerd": ("45.6 → 43.4", "44.7 → 42.2"),
}
