"""Is the machine oversubscribed while `speed` times? Three signs, each cheap and standard-library only:

- the load average (1 minute, at the end of the run) above the cores this process may use: more
  runnable threads than cores, the timed ones included;
- CPU steal over the run, from /proc/stat: a hypervisor gave this virtual machine's cores to another
  (above STEAL_LIMIT of the time);
- a busy probe: a thread spinning for PROBE_S seconds, before and after the run, gets less than
  PROBE_LIMIT of a core (another process took its turn).

An oversubscribed machine times the competition as well as the kernels: `speed` says so in its
footer and in the results' environment (`contention`), and `gate` then calls its performance verdict
untrustworthy instead of giving a ratio. The OpenMP wait policy in force (dcnbench/__init__.py sets
it passive before torch loads) is recorded beside it: an active spin-wait turns a busy machine's
timings into a measure of the others' load (README, "Timing on a busy machine").
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

PROBE_S = 0.05
PROBE_LIMIT = 0.8  # share of a core the probe must get
STEAL_LIMIT = 0.05  # share of the CPU time stolen over the run


@dataclass(frozen=True)
class Contention:
    cores: int
    load_1m: float | None  # None where the OS has no load average
    steal: float | None  # share of all CPU time stolen during the run; None without /proc/stat
    probe_share: float | None  # the smaller share of a core the busy probe got, before and after
    wait_policy: str  # the OpenMP wait policy dcnbench's own process runs with

    @property
    def reasons(self) -> tuple[str, ...]:
        found = []
        if self.load_1m is not None and self.load_1m > self.cores:
            found.append(f"load {self.load_1m:.1f} on {self.cores} core{'s' if self.cores != 1 else ''}")
        if self.steal is not None and self.steal > STEAL_LIMIT:
            found.append(f"{self.steal:.0%} of the CPU time stolen by the hypervisor")
        if self.probe_share is not None and self.probe_share < PROBE_LIMIT:
            found.append(f"a busy probe got {self.probe_share:.0%} of a core")
        return tuple(found)

    @property
    def oversubscribed(self) -> bool:
        return bool(self.reasons)

    def line(self) -> str:
        """The footer line `speed` prints."""
        seen = "; ".join(filter(None, [
            f"load {self.load_1m:.1f} on {self.cores} cores" if self.load_1m is not None else "",
            f"steal {self.steal:.0%}" if self.steal is not None else "",
            f"busy probe {self.probe_share:.0%} of a core" if self.probe_share is not None else "",
            f"OpenMP wait policy {self.wait_policy}"]))
        if self.oversubscribed:
            return (f"machine: OVERSUBSCRIBED ({'; '.join(self.reasons)}): these times include the competition; "
                    f"time on a quiet machine, or compare only ratios taken in one run ({seen})")
        return f"machine: not oversubscribed ({seen})"

    def to_dict(self) -> dict:
        return asdict(self) | {"oversubscribed": self.oversubscribed, "reasons": list(self.reasons)}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat's first line."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user and nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def probe(seconds: float = PROBE_S) -> float | None:
    """The share of one core a spinning thread gets for `seconds` of wall time."""
    try:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
    except (AttributeError, OSError):
        return None
    while time.perf_counter() - wall0 < seconds:
        pass
    wall = time.perf_counter() - wall0
    return min(1.0, (time.thread_time() - cpu0) / wall) if wall > 0 else None


def wait_policy() -> str:
    """The OpenMP wait policy of this process's runtime, as far as can be known without asking it."""
    import dcnbench

    policy = (dcnbench.OMP_WAIT_POLICY or "").lower() or "unset (the runtime's default: spin, then sleep)"
    return policy + ("; torch was imported before dcnbench, so the setting may not have applied"
                     if dcnbench.TORCH_BEFORE_DCNBENCH else "")


class Watch:
    """What `watch()` saw; `result` is set when the block ends."""

    result: Contention | None = None


@contextmanager
def watch():
    """Measure contention around a timed block: a probe and /proc/stat before, the same and the load after."""
    found = Watch()
    before, first = _cpu_times(), probe()
    try:
        yield found
    finally:
        after, last = _cpu_times(), probe()
        steal = None
        if before and after and after[1] > before[1]:
            steal = (after[0] - before[0]) / (after[1] - before[1])
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
        shares = [s for s in (first, last) if s is not None]
        found.result = Contention(cores(), load, steal, min(shares) if shares else None, wait_policy())


def of(environment: dict) -> dict | None:
    """The contention a results file's environment records (None for files written before it was)."""
    found = environment.get("contention")
    return found if isinstance(found, dict) else None


def oversubscribed(environment: dict) -> str:
    """Why the run recorded in `environment` is untrustworthy as a timing ('' when it is not, or unknown)."""
    found = of(environment)
    return "; ".join(found.get("reasons") or ["oversubscribed"]) if found and found.get("oversubscribed") else ""
