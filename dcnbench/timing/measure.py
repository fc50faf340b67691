"""Timing: a timer with a clock seam, warm-up by time, and a measurement that keeps raw samples.

CPU work is timed with a monotonic clock; CUDA work with events between synchronisations, so
asynchronous launches are not mistaken for finished work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# What `speed` can time: the forward, the backward of a fresh (untimed) forward, or both.
DIRECTIONS = ("fwd", "bwd", "fwdbwd")

# IQR/median above this means the numbers are not trustworthy as they stand.
NOISY_SPREAD = 0.10


@dataclass(frozen=True)
class Measurement:
    samples_ms: tuple[float, ...]
    warmup_runs: int = 0

    def _quartiles(self) -> tuple[float, float, float]:
        s = sorted(self.samples_ms)
        if len(s) == 1:
            return s[0], s[0], s[0]
        q1, q2, q3 = statistics.quantiles(s, n=4, method="inclusive")
        return q1, q2, q3

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def iqr_ms(self) -> float:
        q1, _, q3 = self._quartiles()
        return q3 - q1

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def spread(self) -> float:
        """IQR / median: the relative noise of this measurement."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    def warnings(self) -> list[str]:
        found = []
        if self.spread > NOISY_SPREAD:
            found.append(f"IQR is {self.spread:.0%} of the median (> {NOISY_SPREAD:.0%}): the machine is noisy; "
                         "close other programs, pin --threads, or raise --repeat")
        if len(self.samples_ms) < 5:
            found.append(f"only {len(self.samples_ms)} samples: raise --repeat for a trustworthy median and IQR")
        return found


class Timer:
    """Times one call of a function, in milliseconds.

    `clock` is the seam tests use to drive timing with a fake clock; on CUDA, events are used
    instead and the clock only paces warm-up.
    """

    def __init__(self, device: str = "cpu", clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.clock = clock

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def once(self, fn: Callable[[], object], setup: Callable[[], object] | None = None) -> float:
        if setup is not None:
            setup()
        self._sync()
        if self.device == "cuda":
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = self.clock()
        fn()
        return (self.clock() - t0) * 1e3

    def warmup(self, fn: Callable[[], object], seconds: float, setup: Callable[[], object] | None = None) -> int:
        """Run fn until `seconds` have passed (at least once); returns how many runs it took."""
        runs = 0
        t0 = self.clock()
        while True:
            self.once(fn, setup)
            runs += 1
            if self.clock() - t0 >= seconds:
                return runs
