"""The roofline: how fast this machine could run a workload, and how close a timed row came.

A short probe measures two rates with torch on the CPU at the run's thread count: the memory
bandwidth (a streaming `add` over arrays ten times larger than any cache: two reads and one write
per element) and the float32 peak (a 2048 x 2048 GEMM, the faster of torch's two: MKL's and
oneDNN's; the CPU's vector units' paper peak is higher and no kernel reaches it). Each is the best of a few runs, as a
busy machine only ever slows a run down. The result is cached per machine (CPU model, core count,
thread count, torch version) in `.cache/roofline/` (or $DCNBENCH_ROOFLINE_DIR) with the load average
it was taken under; delete the file to probe again (on a quiet machine, for figures to quote).

A workload's bound is max(FLOPs / peak, bytes / bandwidth) for the least work one call must do
(its op's `work`: the op folders say what that is); a row's `% bound` is that bound over its median,
so 100 % is the roofline. A reference row (conv2d) does less work than the deformable op it stands
beside, so it may pass 100 %.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STREAM_BYTES = 256 << 20  # per array: far past any last-level cache
GEMM_N = 2048
PROBE_VERSION = 2  # in the cache key: probes of version 1 timed MKL's GEMM alone


@dataclass(frozen=True)
class Machine:
    """This machine's measured rates at one thread count."""

    cpu: str
    threads: int
    bandwidth_gb_s: float  # streaming memory bandwidth, GB/s (1e9 bytes)
    peak_gflop_s: float  # float32 GEMM rate, GFLOP/s
    load_average: float  # the 1-minute load average when probed (another job slows both rates)
    probed_at: str

    def bound_ms(self, flops: int, nbytes: int) -> float:
        """The least time for `flops` FLOPs and `nbytes` bytes of memory traffic, in ms."""
        return max(flops / (self.peak_gflop_s * 1e9), nbytes / (self.bandwidth_gb_s * 1e9)) * 1e3

    def bound_by(self, flops: int, nbytes: int) -> str:
        """Which roof bounds this work: "memory" or "compute"."""
        return "memory" if nbytes / self.bandwidth_gb_s > flops / self.peak_gflop_s else "compute"

    def line(self) -> str:
        return (f"roofline: {self.bandwidth_gb_s:.1f} GB/s memory, {self.peak_gflop_s:.0f} GFLOP/s float32 GEMM at "
                f"{self.threads} thread(s), probed {self.probed_at} (load {self.load_average:.2f})")


def cpu_model() -> str:
    from dcnbench.results.files import _cpu_model  # the CPU a results file records

    return _cpu_model()


def cache_dir() -> Path:
    return Path(os.environ.get("DCNBENCH_ROOFLINE_DIR", ROOT / ".cache" / "roofline"))


def cache_path(threads: int) -> Path:
    import torch

    key = f"{cpu_model()}|{os.cpu_count()}|{threads}|{torch.__version__}|{PROBE_VERSION}"
    return cache_dir() / f"machine-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def _best_seconds(fn, runs: int) -> float:
    fn()  # warm: page faults, thread start-up
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _gemm_seconds(n: int, runs: int) -> float:
    """The faster of torch's float32 GEMMs at n x n x n: MKL's (torch.mm) and oneDNN's (the packed-weight
    linear of torch's CPU compiler, which ext's deform_conv2d forward uses), where torch has it. On an AMD
    CPU with AVX-512, MKL runs its AVX2 code path: one thread, Zen 5, 112 against 249 GFLOP/s at 2048,
    and conv2d (oneDNN) reached 190 % of a bound probed with MKL alone."""
    import torch

    x, y = torch.rand(n, n), torch.rand(n, n)
    out = torch.empty(n, n)
    best = _best_seconds(lambda: torch.mm(x, y, out=out), runs)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(y.t().contiguous(), n)
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return best
    return min(best, _best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), runs))


def probe(threads: int, runs: int = 5) -> Machine:
    """Measure both rates now at `threads` threads (about a second on an idle machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = STREAM_BYTES // 4
        a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
        stream_s = _best_seconds(lambda: torch.add(a, b, out=c), runs)
        del a, b, c
        gemm_s = _gemm_seconds(GEMM_N, max(2, runs // 2))
    finally:
        torch.set_num_threads(before)
    return Machine(cpu=cpu_model(), threads=threads, bandwidth_gb_s=3 * STREAM_BYTES / stream_s / 1e9,
                   peak_gflop_s=2 * GEMM_N ** 3 / gemm_s / 1e9, load_average=os.getloadavg()[0],
                   probed_at=time.strftime("%Y-%m-%d %H:%M"))


def machine(threads: int) -> Machine:
    """This machine's rates at `threads` threads: the cached probe, else a probe now (then cached)."""
    path = cache_path(threads)
    try:
        return Machine(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = probe(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(found), indent=1))
    tmp.replace(path)
    return found


def cached() -> list[Machine]:
    """Every probe cached for this machine's CPU (any thread count), for `dcnbench backends`."""
    found = []
    for path in sorted(cache_dir().glob("machine-*.json")):
        try:
            m = Machine(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if m.cpu == cpu_model():
            found.append(m)
    return sorted(found, key=lambda m: m.threads)


def percent_of_bound(result, m: Machine) -> float | None:
    """A speed row's bound over its median time, in percent (None where the op defines no work)."""
    from dcnbench import ops

    spec = ops.of(result.case)
    if spec.work is None or result.measurement is None or result.measurement.median_ms <= 0:
        return None
    import torch

    itemsize = torch.empty(0, dtype=getattr(torch, result.case.dtype)).element_size()
    flops, nbytes = spec.work(result.case.geometry, result.case.direction, itemsize, result.case.mask)
    return 100 * m.bound_ms(flops, nbytes) / result.measurement.median_ms
