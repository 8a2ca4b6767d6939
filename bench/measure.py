"""Shared measuring helpers for the benchmarks: interleaved timing and peak RSS.

Why interleaved medians: the development machines have 2 cores shared with other people's
test runs, so a baseline measured a minute before or after the code under test sees a
different machine. Running every contender once per round, in a shuffled order, and taking
the median per contender makes the disturbance hit all of them alike; the ratio of medians
is then stable even when the absolute times are not.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Timings", "interleaved", "peak_rss_reset", "rss_kib"]


@dataclass
class Timings:
    """Seconds per run, per contender, from one interleaved measurement."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, name: str, baseline: str) -> float:
        """``median(name) / median(baseline)``: above 1 means ``name`` is slower."""
        return self.median(name) / self.median(baseline)

    def spread(self, name: str) -> str:
        """``min..max`` in ms, to show in a table how noisy a row was."""
        values = self.samples[name]
        return f"{min(values) * 1e3:.0f}..{max(values) * 1e3:.0f} ms"


def interleaved(
    contenders: Mapping[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 1,
    shuffle: bool = True,
    seed: int = 0,
) -> Timings:
    """Time each contender ``repeats`` times, one of each per round, in shuffled order.

    Each contender runs ``warmup`` times first (imports, allocator pools, connections).
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    rng = random.Random(seed)
    order = list(contenders.items())
    out = Timings({name: [] for name in contenders})
    for _ in range(repeats):
        if shuffle:
            rng.shuffle(order)
        for name, fn in order:
            start = time.perf_counter()
            fn()
            out.samples[name].append(time.perf_counter() - start)
    return out


def rss_kib(field_name: str = "VmRSS") -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    match = re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text())
    if not match:
        raise RuntimeError(f"{field_name} not in /proc/self/status")
    return int(match.group(1))


def peak_rss_reset() -> int:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS; return that RSS in KiB.

    Then ``rss_kib("VmHWM") - <returned>`` after some work is what that work added at its peak.
    """
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    return before
