"""Percentiles and the ``median [min-max]`` notation the faasd baseline uses, so figures line up."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation): the value a request actually took."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def spread(values: Sequence[float], digits: int = 1) -> str:
    """``median [min-max]`` over repeats; just the value when there is one repeat."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return "n/a"
    mid = f"{statistics.median(clean):.{digits}f}"
    if len(clean) == 1:
        return mid
    return f"{mid} [{min(clean):.{digits}f}-{max(clean):.{digits}f}]"
