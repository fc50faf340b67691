"""Bounded workloads: what one call of a workload will cost, estimated before it runs, and the
limits a workload must stay under (`speed --max-memory`, `--max-samples-per-bin`).

The estimates are deliberately coarse (the tensors of one forward and backward, plus the sampling
buffers of an im2col-style implementation such as the float64 oracle's): they exist to refuse a
workload that would exhaust the machine or run for ever, not to predict a backend's peak.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dcnbench.errors import UsageError

DEFAULT_MAX_SAMPLES_PER_BIN = 4096
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class Cost:
    bytes: float  # estimated memory of one call (float: an absurd workload must not overflow anything)
    samples_per_bin: float | None = None  # RoI pooling: the most sampling points one bin averages


@dataclass(frozen=True)
class Limits:
    max_bytes: float
    max_samples_per_bin: float = DEFAULT_MAX_SAMPLES_PER_BIN


def machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_max_bytes() -> float:
    """Half the machine's memory (the rest is for the other backends' copies, the OS and the user)."""
    total = machine_memory()
    return total / 2 if total else float(16 * 2**30)


def parse_size(text: str, option: str = "--max-memory") -> float:
    """`12G`, `512M`, `1.5G` or a number of bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not found or float(found.group(1)) <= 0:
        raise UsageError(f"{option} '{text}' is not a size", hint=f"write e.g. {option} 8G, 512M or a number of bytes")
    return float(found.group(1)) * _UNITS[found.group(2).upper()]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check(case_id: str, cost: Cost, limits: Limits) -> None:
    """Refuse a workload over a limit, with the numbers and the flag that overrides it (exit 2)."""
    if cost.samples_per_bin is not None and not cost.samples_per_bin <= limits.max_samples_per_bin:
        raise UsageError(f"workload {case_id} needs up to {cost.samples_per_bin:.3g} sampling points in one bin, over the "
                         f"limit of {limits.max_samples_per_bin:.0f} (RoIs this large with sampling_ratio 0 take "
                         f"ceil(RoI size / bins) points per axis)",
                         hint="check the RoIs' coordinates and spatial_scale, set a sampling ratio, or raise "
                              "--max-samples-per-bin")
    if not cost.bytes <= limits.max_bytes:
        raise UsageError(f"workload {case_id} would need about {human(cost.bytes)} for one call, over the limit of "
                         f"{human(limits.max_bytes)}",
                         hint="use a smaller shape, or raise --max-memory (default: half this machine's memory)")
