"""Training parity: the same net, weights and batches trained through each backend, against float64.

The reference trajectory is the net trained with the float64 oracle (the `pytorch` backend in
float64). A backend trains in float32 and may drift from it as far as the float32 PyTorch run
(the oracle in float32, the "yardstick") drifts, not more. At step s:

    loss bound(s)    = BOUND_FACTOR * max( max over t <= s of |loss_yardstick(t) - loss_ref(t)|,  EPS32 * |loss_ref(s)| )
    weights bound(s) = BOUND_FACTOR * max( max over t <= s of |w_yardstick(t) - w_ref(t)| / |w_ref(t)|,  EPS32 )

(w: every parameter after the step's update, one vector; |.| the 2-norm). The running maximum
keeps a step where the yardstick happens to land close to float64 from tightening the bound below
what float32 arithmetic does on its own; the floor, one float32 epsilon, is what rounding the
float64 numbers to float32 costs before any arithmetic. A backend fails at the first step where
its loss or its weights leave the bound (or its loss is not finite); that step is named.
BOUND_FACTOR is set from measurement (README, "Training parity"): correct backends drift at most
about as far as the yardstick (ratio <= 1.x), planted stateful bugs by 10^4 and more.

A backend that samples the border by another rule (MXNet's DCNv1: rule C, DCN.md) is judged
against the oracle run by that rule, at both precisions, as `verify` judges its dialect.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from dcnbench import ops
from dcnbench.ops.case import DTYPES
from dcnbench.status import Status
from dcnbench.train import data, model, trainer

OP = "deform_conv2d"  # the op the net's deformable layers call
EPS32 = 2.0 ** -23
BOUND_FACTOR = 4.0
YARDSTICK = "pytorch"  # the backend whose float32 run sets the bound (the oracle in float32)


@dataclass(frozen=True)
class TrainSettings:
    dcn: str = "v1"
    steps: int = 30
    batch: int = 16
    lr: float = 0.1
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    c1: int = 8
    c2: int = 16

    def net(self) -> model.NetConfig:
        return model.NetConfig(deformable=True, dcn=self.dcn, c1=self.c1, c2=self.c2)

    def cases(self):
        """The net's deform_conv2d calls as verify cases: what a backend's declarations are asked about."""
        from dcnbench.ops.deform_conv2d.contract import ConvGeometry
        from dcnbench.ops.deform_conv2d.workloads import ConvCase

        return [ConvCase(name="train", geometry=ConvGeometry(n=n, c=c, h=h, w=h, o=o, kh=3, kw=3, padding=(1, 1)),
                         mask=self.dcn == "v2", dtype=self.dtype, seed=self.seed)
                for n, c, h, o in self.net().deform_geometries(self.batch)]


@dataclass(frozen=True)
class Trajectory:
    """A training run's losses and weights per step (what ran before an error, if one stopped it)."""

    losses: tuple[float, ...]
    weights: tuple[torch.Tensor, ...]
    forward_ms: tuple[float, ...] = ()
    backward_ms: tuple[float, ...] = ()
    optimizer_ms: tuple[float, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Drift:
    """How far one trajectory is from the reference at each step."""

    loss: tuple[float, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class TrainResult:
    backend: str
    status: Status
    message: str
    rule: str
    dtype: str
    role: str = "backend"  # "backend", or "reference" (float64) and "yardstick" (float32): the oracle's runs
    losses: tuple[float, ...] = ()
    reference_losses: tuple[float, ...] = ()
    loss_diff: tuple[float, ...] = ()
    loss_bound: tuple[float, ...] = ()
    weight_diff: tuple[float, ...] = ()
    weight_bound: tuple[float, ...] = ()
    first_failing_step: int | None = None
    # Median milliseconds per step (steps after the first: it pays start-up and warm-up).
    forward_ms: float | None = None
    backward_ms: float | None = None
    optimizer_ms: float | None = None
    settings: dict = field(default_factory=dict)

    @property
    def step_ms(self) -> float | None:
        parts = (self.forward_ms, self.backward_ms, self.optimizer_ms)
        return None if any(p is None for p in parts) else sum(parts)

    @property
    def worst_ratio(self) -> float | None:
        """The largest difference over its bound, loss or weights, over the steps that ran."""
        ratios = [d / b for d, b in zip(self.loss_diff + self.weight_diff, self.loss_bound + self.weight_bound)]
        return max(ratios, default=None)


def train_with(op: Callable, settings: TrainSettings, dtype: str, on_step: Callable[[], None] | None = None) -> Trajectory:
    """Train the net with `op` in its deformable layers; an exception ends the run, its trajectory kept."""
    losses, weights, fwd, bwd, opt = [], [], [], [], []
    error = None
    try:
        net = model.build(settings.net(), op=op, seed=settings.seed, dtype=DTYPES[dtype], device=settings.device)
        digits = data.split(data.load(), settings.seed).train
        batches = data.batches(digits, batch=settings.batch, steps=settings.steps, seed=settings.seed)
        for step in trainer.steps(net, batches, lr=settings.lr, dtype=DTYPES[dtype], device=settings.device):
            losses.append(step.loss)
            weights.append(step.weights)
            fwd.append(step.forward_ms)
            bwd.append(step.backward_ms)
            opt.append(step.optimizer_ms)
            if on_step:
                on_step()
    except Exception as exc:  # the backend failed: an error row that says at which step, and the run goes on
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"step {len(losses) + 1}: {type(exc).__name__}: {detail}"
    return Trajectory(tuple(losses), tuple(weights), tuple(fwd), tuple(bwd), tuple(opt), error)


def drift(run: Trajectory, reference: Trajectory) -> Drift:
    loss = tuple(abs(a - b) if math.isfinite(a) else math.inf for a, b in zip(run.losses, reference.losses))
    weights = tuple(float((w - r).norm() / r.norm()) if bool(torch.isfinite(w).all()) else math.inf
                    for w, r in zip(run.weights, reference.weights))
    return Drift(loss, weights)


def bounds(yardstick: Drift, reference: Trajectory, factor: float = BOUND_FACTOR) -> Drift:
    """The bound at each step (module docstring)."""
    loss, weights = [], []
    worst_loss = worst_weights = 0.0
    for d_loss, d_weights, ref_loss in zip(yardstick.loss, yardstick.weights, reference.losses):
        worst_loss, worst_weights = max(worst_loss, d_loss), max(worst_weights, d_weights)
        loss.append(factor * max(worst_loss, EPS32 * abs(ref_loss)))
        weights.append(factor * max(worst_weights, EPS32))
    return Drift(tuple(loss), tuple(weights))


def first_divergence(found: Drift, bound: Drift) -> tuple[int, str] | None:
    """The first (1-based) step outside the bound and what left it, or None."""
    for i, (dl, bl, dw, bw) in enumerate(zip(found.loss, bound.loss, found.weights, bound.weights), start=1):
        if not dl <= bl:  # NaN too
            return i, f"loss differs by {dl:.1e} (bound {bl:.1e})"
        if not dw <= bw:
            return i, f"weights differ normwise by {dw:.1e} (bound {bw:.1e})"
    return None


def _median(values: tuple[float, ...]) -> float | None:
    rest = values[1:] or values
    return statistics.median(rest) if rest else None


def judge(name: str, run: Trajectory, reference: Trajectory, yardstick: Drift, *, rule: str, dtype: str,
          settings: TrainSettings) -> TrainResult:
    """A backend's run against the reference and the bound the yardstick sets."""
    found, bound = drift(run, reference), bounds(yardstick, reference)
    n = len(run.losses)
    diverged = first_divergence(found, bound)
    if diverged:
        status, step = Status.FAIL, diverged[0]
        message = f"diverged from the float64 reference at step {step}: {diverged[1]}"
    elif run.error:
        status, step, message = Status.ERROR, None, run.error
    elif n < settings.steps:
        status, step, message = Status.ERROR, None, f"stopped after {n} of {settings.steps} steps"
    else:
        status, step, message = Status.PASS, None, ""
    return TrainResult(backend=name, status=status, message=message, rule=rule, dtype=dtype, losses=run.losses,
                       reference_losses=reference.losses[:n], loss_diff=found.loss, loss_bound=bound.loss[:n],
                       weight_diff=found.weights, weight_bound=bound.weights[:n], first_failing_step=step,
                       forward_ms=_median(run.forward_ms), backward_ms=_median(run.backward_ms),
                       optimizer_ms=_median(run.optimizer_ms), settings=settings_record(settings))


def settings_record(settings: TrainSettings) -> dict:
    return asdict(settings) | {"bound_factor": BOUND_FACTOR, "eps32": EPS32, "yardstick": YARDSTICK}


def unsupported(backend, settings: TrainSettings) -> str | None:
    """Why `backend` cannot train this net (its own declarations), or None."""
    for case in settings.cases():
        reason = backend.support(OP, settings.device, settings.dtype, case.geometry)
        if not reason and backend.backward_unsupported:
            reason = backend.backward_unsupported(case, settings.device)
        if reason:
            return reason
    return None


def rule_of(backend, settings: TrainSettings) -> str:
    return backend.dialect(settings.cases()[0])


@dataclass
class Oracle:
    """The oracle's float64 reference and float32 yardstick runs, per boundary rule, made on first use."""

    settings: TrainSettings
    on_step: Callable[[], None] | None = None
    runs: dict = field(default_factory=dict)

    def op(self, rule: str) -> Callable:
        oracle = ops.get(OP).oracle
        return oracle if rule == "Z" else functools.partial(oracle, rule=rule)

    def pair(self, rule: str) -> tuple[Trajectory, Trajectory]:
        if rule not in self.runs:
            reference = train_with(self.op(rule), self.settings, "float64", self.on_step)
            yardstick = train_with(self.op(rule), self.settings, self.settings.dtype, self.on_step)
            for what, run in (("float64 reference", reference), ("float32 yardstick", yardstick)):
                if run.error:  # our own oracle failed: a bug of ours, not a backend's row
                    raise RuntimeError(f"the oracle's {what} run (rule {rule}) failed at {run.error}")
            self.runs[rule] = (reference, yardstick)
        return self.runs[rule]

    def rows(self) -> list[TrainResult]:
        """The oracle's own runs as rows: the reference (float64) and the yardstick (float32) per rule."""
        found = []
        for rule, (reference, yardstick) in self.runs.items():
            d = drift(yardstick, reference)
            for role, run, dtype, diff in (("reference", reference, "float64", Drift((0.0,) * len(reference.losses),
                                                                                      (0.0,) * len(reference.losses))),
                                           ("yardstick", yardstick, self.settings.dtype, d)):
                found.append(TrainResult(
                    backend=YARDSTICK, status=Status.OK, message="", rule=rule, dtype=dtype, role=role,
                    losses=run.losses, reference_losses=reference.losses, loss_diff=diff.loss, weight_diff=diff.weights,
                    forward_ms=_median(run.forward_ms), backward_ms=_median(run.backward_ms),
                    optimizer_ms=_median(run.optimizer_ms), settings=settings_record(self.settings)))
        return found


def run_parity(*, backends: list, settings: TrainSettings, on_step: Callable[[], None] | None = None,
               on_result: Callable[[TrainResult], None] | None = None) -> list[TrainResult]:
    """Every backend's row (pass, fail, error or unsupported), then the oracle's own runs."""
    oracle = Oracle(settings, on_step)
    found = []
    for backend in backends:
        reason = unsupported(backend, settings)
        rule = rule_of(backend, settings)
        if reason:
            result = TrainResult(backend=backend.name, status=Status.UNSUPPORTED, message=reason, rule=rule,
                                 dtype=settings.dtype, settings=settings_record(settings))
        else:
            reference, yardstick = oracle.pair(rule)
            run = train_with(backend.ops[OP], settings, settings.dtype, on_step)
            result = judge(backend.name, run, reference, drift(yardstick, reference), rule=rule,
                           dtype=settings.dtype, settings=settings)
        found.append(result)
        if on_result:
            on_result(result)
    for row in oracle.rows():
        found.append(row)
        if on_result:
            on_result(row)
    return found


def failed(results: list[TrainResult]) -> bool:
    return any(r.status in (Status.FAIL, Status.ERROR) for r in results)

