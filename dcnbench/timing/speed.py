"""Speed: time every backend on the same workloads, interleaved round-robin, with memory and FLOPs.

Backends take turns sample by sample, so a slow drift of the machine (another job, thermal
throttling) spreads over all of them instead of biasing whichever ran last. Ratios to a baseline
measured in the same run are the figures to quote; absolute times are for context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from dcnbench import ops

from dcnbench.timing import memory
from dcnbench.backends import Backend
from dcnbench.ops.case import Case, cotangent, digest_of
from dcnbench.status import Status
from dcnbench.timing.measure import DIRECTIONS, Measurement, Timer  # noqa: F401 - DIRECTIONS is part of this module's interface
from dcnbench.checking.runs import leaves

# FLOPs per direction in units of the forward convolution: the backward computes the input and
from dcnbench.errors import one_line
from dcnbench.checking.verify import why_unsupported
# weight gradients, each as costly as the forward.
_FLOP_FACTOR = {"fwd": 1, "bwd": 2, "fwdbwd": 3}


@dataclass(frozen=True)
class SpeedCase:
    """One timed workload: an operator's geometry and how it is timed. `mask` picks DCNv2/DCNv1
    for deform_conv2d; the files replace drawn tensors for operators that take them (RoI pooling)."""

    geometry: object  # the op's geometry; its `op` names the operator
    dtype: str = "float32"
    device: str = "cpu"
    direction: str = "fwdbwd"
    mask: bool = True
    offset_scale: float = 2.0
    seed: int = 0
    rois_file: str | None = None  # the user's RoIs and offsets instead of drawn ones (spec.file_inputs)
    offset_file: str | None = None

    @property
    def op(self) -> str:
        return self.geometry.op

    @property
    def case_id(self) -> str:
        bench = self.bench_case()
        return f"{bench.shape_text}/{bench.variant}/{self.dtype}/{self.device}/{self.direction}"

    def bench_case(self) -> Case:
        """The seeded inputs every backend is timed on."""
        return ops.of(self).speed_case(self)

    def flops(self) -> int | None:
        """The equivalent plain layer's FLOPs (the op's spec says; None for RoI pooling, whose work
        depends on the RoIs)."""
        flops = ops.of(self).flops(self.geometry)
        return None if flops is None else flops * _FLOP_FACTOR[self.direction]

    @classmethod
    def from_dict(cls, d: dict, op: str) -> "SpeedCase":
        """The case a results record describes (its `case` field, and its `op`)."""
        return cls(**{**d, "geometry": ops.get(op).geometry_type.from_dict(d["geometry"])})

    def digest(self, threads: int) -> str:
        """The workload's identity for comparing runs: shape, dtype, seed, offsets and timing mode.

        Optional fields left at None are not part of it, so digests of older records still match.
        """
        return digest_of({k: v for k, v in asdict(self).items() if v is not None} | {"threads": threads})


@dataclass(frozen=True)
class SpeedResult:
    case: SpeedCase
    backend: str
    status: Status  # ok | unsupported | error
    measurement: Measurement | None = None
    ratio_to_baseline: float | None = None
    peak_bytes: int | None = None
    memory_method: str | None = None
    message: str = ""
    baseline: str | None = None  # the backend ratio_to_baseline divides by

    @property
    def gflops(self) -> float | None:
        flops = self.case.flops()
        if self.measurement is None or self.measurement.median_ms <= 0 or not flops:
            return None
        return flops / (self.measurement.median_ms * 1e6)

    def warnings(self) -> list[str]:
        return self.measurement.warnings() if self.measurement else []


def make_call(backend: Backend, case: Case, direction: str, device: str) -> tuple[Callable, Callable]:
    """(setup, timed) closures for one sample: setup is untimed (a fresh forward for `bwd`)."""
    fn = backend.ops[case.op]
    inputs = case.inputs(device)
    cot = cotangent(case, device)
    if direction == "fwd":
        def fwd():
            with torch.no_grad():
                case.call(fn, inputs)
        return (lambda: None), fwd

    fresh = leaves(case, inputs)
    state = {}

    def forward():
        for t in fresh.values():
            t.grad = None
        state["out"] = case.call(fn, fresh)

    def backward():
        state.pop("out").backward(cot)

    if direction == "bwd":
        return forward, backward

    def both():
        forward()
        backward()

    return (lambda: None), both


class _InProcess:
    """A backend called here, timed by the Timer (events on CUDA, the clock on the CPU)."""

    def __init__(self, backend: Backend, conv: Case, case: SpeedCase, timer: Timer, threads, plugin_specs):
        self.backend, self.conv, self.case, self.timer = backend, conv, case, timer
        self.threads, self.plugin_specs = threads, plugin_specs
        self.setup, self.call = make_call(backend, conv, case.direction, case.device)

    def warmup(self, seconds: float) -> int:
        return self.timer.warmup(self.call, seconds, self.setup)

    def sample(self) -> float:
        return self.timer.once(self.call, self.setup)

    def memory(self) -> tuple[int | None, str | None, str]:
        if self.case.device == "cuda":
            self.setup()
            return memory.measure_cuda(self.call), memory.CUDA_METHOD, ""
        spec = memory.worker_spec(backend=None if self.backend.origin == "plugin" else self.backend.name,
                                  impl=self.plugin_specs.get(self.backend.name), case=self.conv,
                                  direction=self.case.direction, threads=self.threads or torch.get_num_threads())
        peak, note = memory.measure_cpu(spec)
        return peak, memory.CPU_METHOD if peak is not None else None, note


class _SelfTimed:
    """An out-of-process backend that times each sample itself, so transport is not in the figure."""

    def __init__(self, backend: Backend, conv: Case, case: SpeedCase, clock):
        self.inner = backend.self_timed(conv, case.direction, case.device)
        self.clock = clock

    def warmup(self, seconds: float) -> int:
        runs, t0 = 0, self.clock()
        while True:
            self.inner.sample()
            runs += 1
            if self.clock() - t0 >= seconds:
                return runs

    def sample(self) -> float:
        return self.inner.sample()

    def memory(self) -> tuple[int | None, str | None, str]:
        peak, note = self.inner.peak_bytes()
        return peak, memory.CPU_METHOD if peak is not None else None, note


def run_speed(*, backends: list[Backend], cases: list[SpeedCase], repeat: int = 10, warmup_s: float = 0.5,
              baseline: str | None = None, measure_memory: bool = True, threads: int | None = None,
              plugin_specs: dict[str, str] | None = None, timer: Timer | None = None,
              on_progress: Callable[[str], None] | None = None,
              on_result: Callable[[SpeedResult], None] | None = None) -> list[SpeedResult]:
    """Time each backend on each case; returns one result per case x backend.

    Ratios divide by `baseline`, or when None by the case's reference row (the first backend of
    kind "reference" that runs its op: conv2d for convolution, roi_align for RoI pooling).
    """
    results = []
    for case in cases:
        tm = timer or Timer(case.device)
        conv = case.bench_case()
        runners, warm, done = {}, {}, {}
        # A reference row for another op (conv2d on a pooling workload) is left out, not listed as unsupported.
        here = [b for b in backends if b.kind != "reference" or case.op in b.ops]
        base_name = baseline or next((b.name for b in here if b.kind == "reference"
                                      and not b.support(case.op, case.device, case.dtype)), None)
        for b in here:
            reason = why_unsupported(b, conv, case.device)
            if not reason and case.direction != "fwd" and b.backward_unsupported:
                reason = b.backward_unsupported(conv, case.device)
            if reason:
                done[b.name] = SpeedResult(case, b.name, Status.UNSUPPORTED, message=reason)
                continue
            try:
                runner = _SelfTimed(b, conv, case, tm.clock) if b.self_timed else \
                    _InProcess(b, conv, case, tm, threads, plugin_specs or {})
                warm[b.name] = runner.warmup(warmup_s)
                runners[b.name] = runner
            except Exception as exc:  # a backend that fails becomes an error row
                done[b.name] = SpeedResult(case, b.name, Status.ERROR, message=one_line(exc))
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for i in range(repeat):
            for name in list(runners):
                try:
                    samples[name].append(runners[name].sample())
                except Exception as exc:
                    done[name] = SpeedResult(case, name, Status.ERROR, message=one_line(exc))
                    del runners[name]
            if on_progress:
                on_progress(f"{case.case_id} round {i + 1}/{repeat}")
        measured = {name: Measurement(tuple(samples[name]), warm[name]) for name in runners}
        base = measured.get(base_name) if base_name else None
        found = []
        for b in here:
            if b.name in done:
                found.append(done[b.name])
                continue
            m = measured[b.name]
            peak, method, note = None, None, ""
            if measure_memory:
                if on_progress:
                    on_progress(f"{case.case_id} memory {b.name}")
                peak, method, note = runners[b.name].memory()
            ratio = m.median_ms / base.median_ms if base and base.median_ms > 0 else None
            found.append(SpeedResult(case, b.name, Status.OK, m, ratio, peak, method, note, base_name if base else None))
        del runners
        for r in found:
            results.append(r)
            if on_result:
                on_result(r)
    return results
