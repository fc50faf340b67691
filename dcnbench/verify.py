"""Verification: run a backend on a case and compare output and every gradient with a reference.

References are the float64 oracle (the `pytorch` backend on the CPU) or, for the identity checks,
a plain convolution. Each run is repeated on identical inputs to measure determinism bitwise,
and the caller's tensors (and the cotangent) are compared with snapshots to catch in-place writes.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

from functools import partial

from dcnbench.backends.pytorch import deform_conv2d as oracle_deform_conv2d
from dcnbench.backends.pytorch import deform_psroi_pool as oracle_deform_psroi_pool
from dcnbench.backends.pytorch import deform_roi_pool as oracle_deform_roi_pool
from dcnbench.backends.pytorch import sampling_points
from dcnbench.ops import OP_DEFORM_CONV2D
from dcnbench.registry import Backend
from dcnbench.roi_ops import OP_DEFORM_PSROI_POOL, OP_DEFORM_ROI_POOL, psroi_rois_for_roi_align
from dcnbench.roi_workloads import PoolCase
from dcnbench.workloads import DTYPES, ConvCase, noncontiguous

Case = ConvCase | PoolCase

# Normwise relative error allowed, ||got - ref|| / ||ref||, per dtype: (values, grad_offset).
# float64 backends must agree with the float64 oracle almost to the last bit; float32 allows a few
# hundred units of roundoff for reductions over C*kh*kw terms, so a float32 kernel accumulating in
# half precision (~1e-3) fails by two orders of magnitude. The offset gradient sums differences of
# neighbouring pixels, which cancel: a kernel that computes it in half precision loses more
# (torchvision's CPU float16 kernel reaches 4.7e-2 on the default suite), hence its own column.
TOLERANCES = {
    "float64": (1e-10, 1e-10),
    "float32": (1e-5, 1e-5),
    "float16": (1e-2, 1e-1),
    "bfloat16": (4e-2, 2e-1),
}


def tolerance(dtype: str, quantity: str) -> float:
    values, offset = TOLERANCES[dtype]
    return offset if quantity == "grad_offset" else values

# `dialect`: agrees with the oracle in the boundary rule the backend declares and with the paper's
# rule Z at every output whose samples avoid the border bands; differs from rule Z only there.
STATUSES = ("pass", "dialect", "fail", "nondeterministic", "unsupported", "error")
QUANTITIES = ("output", "grad_input", "grad_offset", "grad_mask", "grad_weight", "grad_bias")
ARG_OF = {"grad_input": "input", "grad_offset": "offset", "grad_mask": "mask", "grad_weight": "weight", "grad_bias": "bias"}


@dataclass(frozen=True)
class QuantityError:
    quantity: str
    rel_err: float | None
    max_abs_err: float | None
    tolerance: float
    ok: bool
    note: str = ""  # why it failed when not by size: missing, zero, shape, dtype, mutated, ...
    reference: str = "Z"  # what it was compared with: the oracle's rule (Z, C) or an identity
    unsupported: str = ""  # why it was not checked (e.g. a backward the backend lacks); ok stays True


@dataclass(frozen=True)
class DialectReport:
    """How a backend that declares a non-paper boundary rule relates to the paper's rule Z."""

    rule: str
    matches_rule: bool  # every quantity within tolerance of the oracle in `rule`
    interior_outputs: int  # outputs whose samples all avoid the border bands
    band_outputs: int
    interior_max_abs_vs_z: float | None  # divergence from rule Z there (~0 when the dialect holds)
    band_max_abs_vs_z: float | None
    interior_ok: bool


@dataclass(frozen=True)
class VerifyResult:
    case: Case
    backend: str
    status: str
    quantities: tuple[QuantityError, ...] = ()
    message: str = ""
    elapsed_s: float = 0.0
    dialect: DialectReport | None = None

    @property
    def failing(self) -> tuple[QuantityError, ...]:
        """Quantities that decide a failure (for a dialect result: those against its own rule)."""
        if self.dialect is not None and self.status == "dialect":
            return ()
        if self.dialect is not None and self.dialect.matches_rule is False:
            return tuple(q for q in self.quantities if not q.ok and q.reference == self.dialect.rule)
        return tuple(q for q in self.quantities if not q.ok)


@dataclass
class _Run:
    output: torch.Tensor
    grads: dict[str, torch.Tensor | None]
    mutated: list[str] = field(default_factory=list)


def _leaves(case: Case, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh buffers laid out like the inputs (non-contiguous stays so); gradients where the op has them."""
    return {k: (v.detach().clone() if v.is_contiguous() else noncontiguous(v.detach())).requires_grad_(k in case.differentiable)
            for k, v in inputs.items()}


def _run(fn: Callable, case: Case, inputs: dict[str, torch.Tensor], cotangent: torch.Tensor,
         backward: bool = True) -> _Run:
    """One forward (+backward) on fresh leaves holding the inputs' values, with mutation checks."""
    leaves = _leaves(case, inputs)
    cot = cotangent.clone()
    snapshots = {k: v.detach().clone() for k, v in leaves.items()} | {"cotangent": cot.clone()}
    out = case.call(fn, leaves)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}, expected a torch.Tensor")
    if backward and out.requires_grad and out.shape == cot.shape:
        out.backward(cot.to(out.dtype))
    current = {k: v.detach() for k, v in leaves.items()} | {"cotangent": cot}
    mutated = [k for k, v in snapshots.items() if not torch.equal(v, current[k])]
    return _Run(out.detach(), {q: leaves[a].grad for q, a in ARG_OF.items() if a in leaves}, mutated)


def _cotangent(case: Case, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """A random cotangent (never ones: sum() hides sign and permutation errors)."""
    gen = torch.Generator().manual_seed(case.seed + 104729)
    c = torch.randn(case.output_shape, generator=gen, dtype=torch.float64)
    return c.to(DTYPES[case.dtype]).to(inputs["input"].device)


# ---- references ------------------------------------------------------------------------------


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """xs[h, w] = x[h + dy, w + dx], zero outside the map."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[..., yd, xd] = x[..., ys, xs]
    return out


def _conv_identity(case: ConvCase):
    """deform_conv2d with integer offsets (dy, dx) everywhere == conv2d of the shifted input.

    The shift applies to the zero-padded input: a tap in the padding can land inside the map.
    """

    def fn(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        dy, dx = (int(round(offset[:, 0].flatten()[0].item())), int(round(offset[:, 1].flatten()[0].item()))) \
            if offset.numel() else (0, 0)
        ph, pw = padding
        x = _shift(F.pad(input, (pw, pw, ph, ph)), dy, dx)
        return F.conv2d(x, weight, bias, stride, 0, dilation, input.shape[1] // weight.shape[1])

    return fn


def _bias_only(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    geo_out = oracle_deform_conv2d(input, offset, weight, None, stride, padding, dilation, mask)
    # The oracle's graph supplies exact zero gradients for input, offset and weight; the identity
    # itself is the value: bias only.
    out = 0 * geo_out
    return out + bias.reshape(1, -1, 1, 1) if bias is not None else out


def _pool_zero_offset(case: PoolCase):
    """The same operator with zero offsets passed explicitly (what offset=None / no_trans must equal)."""
    oracle = _POOL_ORACLES[case.op]

    def fn(input, rois, offset, **kwargs):
        kwargs.pop("no_trans", None)
        return oracle(input, rois, torch.zeros(case.geometry.offset_shape, dtype=input.dtype), **kwargs)

    return fn


def _roi_align(case: PoolCase):
    """deform_roi_pool with zero offsets is torchvision's roi_align(aligned=True), in every setting."""
    import torchvision

    def fn(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
        return torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned=True)

    return fn


def _ps_roi_align(case: PoolCase):
    """deform_psroi_pool with zero offsets, group_size = pooled_size (or 1), every sample inside
    [-0.5, size-0.5], is ps_roi_align (or roi_align(aligned=True)) with sampling_ratio =
    sample_per_part on RoIs moved to MXNet's rounded box and back by half a sub-bin."""
    import torchvision

    def fn(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size, sample_per_part,
           trans_std, no_trans=False):
        moved = psroi_rois_for_roi_align(rois, spatial_scale, pooled_size, sample_per_part)
        if group_size == 1:
            return torchvision.ops.roi_align(input, moved, pooled_size, spatial_scale, sample_per_part, aligned=True)
        return torchvision.ops.ps_roi_align(input, moved, pooled_size, spatial_scale, sample_per_part)

    return fn


_POOL_ORACLES = {OP_DEFORM_ROI_POOL: oracle_deform_roi_pool, OP_DEFORM_PSROI_POOL: oracle_deform_psroi_pool}
_POOL_QUANTITIES = ("output", "grad_input", "grad_offset")

# Which reference each (op, check) uses and which quantities it defines.
_REFERENCES: dict[tuple[str, str], tuple[Callable[[Case], Callable], tuple[str, ...]]] = {
    (OP_DEFORM_CONV2D, "oracle"): (lambda case: oracle_deform_conv2d, QUANTITIES),
    (OP_DEFORM_CONV2D, "oracle_rule_c"): (lambda case: partial(oracle_deform_conv2d, rule="C"), QUANTITIES),
    (OP_DEFORM_CONV2D, "zero_offset"): (_conv_identity, ("output", "grad_input", "grad_weight", "grad_bias")),
    (OP_DEFORM_CONV2D, "integer_offset"): (_conv_identity, ("output", "grad_input", "grad_weight", "grad_bias")),
    (OP_DEFORM_CONV2D, "zero_mask"): (lambda case: _bias_only, ("output", "grad_input", "grad_offset", "grad_weight", "grad_bias")),
    (OP_DEFORM_ROI_POOL, "oracle"): (lambda case: oracle_deform_roi_pool, _POOL_QUANTITIES),
    (OP_DEFORM_ROI_POOL, "no_offset"): (_pool_zero_offset, ("output", "grad_input")),
    (OP_DEFORM_ROI_POOL, "roi_align"): (_roi_align, ("output", "grad_input")),
    (OP_DEFORM_PSROI_POOL, "oracle"): (lambda case: oracle_deform_psroi_pool, _POOL_QUANTITIES),
    (OP_DEFORM_PSROI_POOL, "no_offset"): (_pool_zero_offset, ("output", "grad_input")),
    (OP_DEFORM_PSROI_POOL, "ps_roi_align"): (_ps_roi_align, ("output", "grad_input")),
}


def reference(case: Case, rule: str = "Z") -> tuple[_Run, tuple[str, ...]]:
    """The expected output and gradients, in float64 on the CPU, at the exact values a backend sees.

    `rule` picks the oracle's boundary rule for the "oracle" check (identities have no rule).
    """
    inputs = {k: v.double().cpu() for k, v in case.inputs("cpu").items()}
    cot = _cotangent(case, inputs).double()
    check = "oracle_rule_c" if case.check == "oracle" and rule == "C" else case.check
    make, quantities = _REFERENCES[(case.op, check)]
    return _run(make(case), case, inputs, cot), quantities


# ---- comparison ------------------------------------------------------------------------------


def compare(name: str, got: torch.Tensor | None, ref: torch.Tensor, dtype: str) -> QuantityError:
    tol = tolerance(dtype, name)
    if got is None:
        return QuantityError(name, None, None, tol, False, "missing (None)")
    if tuple(got.shape) != tuple(ref.shape):
        return QuantityError(name, None, None, tol, False, f"shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    diff = got.detach().double().cpu() - ref
    ref_norm = float(torch.linalg.vector_norm(ref)) if ref.numel() else 0.0
    diff_norm = float(torch.linalg.vector_norm(diff)) if diff.numel() else 0.0
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    if ref_norm == 0.0:
        rel = 0.0 if diff_norm == 0.0 else math.inf  # nothing is allowed where the answer is exactly 0
    else:
        rel = diff_norm / ref_norm
    ok = rel <= tol  # NaN compares False, so NaN fails
    note = ""
    if not ok and ref_norm > 0 and got.numel() and not bool(got.detach().ne(0).any()):
        note = "zero where the reference is not"
    elif not ok and not math.isfinite(rel):
        note = "not finite"
    return QuantityError(name, rel, max_abs, tol, ok, note)


def _compare_runs(case: Case, run: _Run, ref: _Run, quantities: Iterable[str], label: str,
                  no_backward: str | None = None) -> list[QuantityError]:
    tol = tolerance(case.dtype, "output")
    found = []
    for q in quantities:
        if q == "output":
            err = compare(q, run.output, ref.output, case.dtype)
            if err.ok and run.output.dtype != DTYPES[case.dtype]:
                err = QuantityError(q, err.rel_err, err.max_abs_err, tol, False, f"dtype {run.output.dtype}, expected {case.dtype}")
            found.append(replace(err, reference=label))
        elif q in ref.grads and ref.grads[q] is not None:
            if no_backward:
                found.append(QuantityError(q, None, None, tolerance(case.dtype, q), True, reference=label, unsupported=no_backward))
            else:
                found.append(replace(compare(q, run.grads.get(q), ref.grads[q], case.dtype), reference=label))
    for name in run.mutated:
        found.append(QuantityError(f"unchanged:{name}", None, None, tol, False, f"the backend modified the caller's {name}", label))
    return found


def _band_outputs(case: ConvCase, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 1, Ho, Wo) bool: outputs with a sample in a border band, -1 < p < 0 or size-1 < p < size.

    The two rules agree everywhere else: at p <= -1 or p >= size both give 0.
    """
    geo = case.geometry
    py, px = sampling_points(inputs["offset"].double().cpu(), geo)
    band = ((py > -1) & (py < 0)) | ((py > geo.h - 1) & (py < geo.h)) | ((px > -1) & (px < 0)) | ((px > geo.w - 1) & (px < geo.w))
    return band.flatten(1, 2).any(dim=1, keepdim=True)


def _dialect_report(case: ConvCase, rule: str, run: _Run, ref_z: _Run, vs_rule: list[QuantityError]) -> DialectReport:
    band = _band_outputs(case, case.inputs("cpu")).expand_as(ref_z.output)
    diff = (run.output.double().cpu() - ref_z.output).abs()
    interior, in_band = diff[~band], diff[band]
    inner = compare("output", run.output.double().cpu()[~band], ref_z.output[~band], case.dtype)
    return DialectReport(
        rule=rule,
        matches_rule=all(q.ok for q in vs_rule),
        interior_outputs=int((~band).sum()) // max(1, case.geometry.o),
        band_outputs=int(band.sum()) // max(1, case.geometry.o),
        interior_max_abs_vs_z=float(interior.max()) if interior.numel() else None,
        band_max_abs_vs_z=float(in_band.max()) if in_band.numel() else None,
        interior_ok=inner.ok,
    )


def _bitwise_equal(a: _Run, b: _Run) -> bool:
    if not torch.equal(a.output, b.output):
        return False
    for q, g in a.grads.items():
        h = b.grads.get(q)
        if (g is None) != (h is None) or (g is not None and not torch.equal(g, h)):
            return False
    return True


def _gradcheck(fn: Callable, case: Case, device: str) -> list[QuantityError]:
    inputs = case.inputs(device)
    fixed = {k: v for k, v in inputs.items() if k not in case.differentiable}
    names = [k for k in inputs if k in case.differentiable]

    def f(*tensors):
        return case.call(fn, fixed | dict(zip(names, tensors)))

    leaves = tuple(inputs[k].detach().clone().requires_grad_(True) for k in names)
    try:
        torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)
        return [QuantityError("gradcheck", None, None, 1e-4, True)]
    except GradcheckError as exc:
        return [QuantityError("gradcheck", None, None, 1e-4, False, str(exc).strip().splitlines()[0])]


# ---- driver ----------------------------------------------------------------------------------


def verify_case(backend: Backend, case: Case, device: str, ref_cache: dict) -> VerifyResult:
    start = time.perf_counter()
    reason = backend.support(case.op, device, case.dtype, case.geometry)
    if reason:
        return VerifyResult(case, backend.name, "unsupported", message=reason)
    no_backward = backend.backward_unsupported(case, device) if backend.backward_unsupported else None
    fn = backend.ops[case.op]
    rule = backend.dialect(case) if case.check == "oracle" else "Z"
    try:
        if case.check == "gradcheck":
            if no_backward:
                return VerifyResult(case, backend.name, "unsupported", message=no_backward)
            quantities = _gradcheck(fn, case, device)
            status = "pass" if all(q.ok for q in quantities) else "fail"
            return VerifyResult(case, backend.name, status, tuple(quantities), _mode_note(backend, device),
                                time.perf_counter() - start)
        for r in {"Z", rule}:
            if (case, r) not in ref_cache:
                ref_cache[(case, r)] = reference(case, r)
        inputs = case.inputs(device)
        cot = _cotangent(case, inputs)
        first = _run(fn, case, inputs, cot, backward=not no_backward)
        second = _run(fn, case, inputs, cot, backward=not no_backward)
    except Exception as exc:  # a backend that raises becomes an error row; the run goes on
        return VerifyResult(case, backend.name, "error", message=_one_line(exc), elapsed_s=time.perf_counter() - start)
    ref_z, covered = ref_cache[(case, "Z")]
    label = "Z" if case.check == "oracle" else case.check
    vs_paper = _compare_runs(case, first, ref_z, covered, label, no_backward)
    vs_rule, report = [], None
    if rule != "Z":
        vs_rule = _compare_runs(case, first, ref_cache[(case, rule)][0], covered, rule, no_backward)
        report = _dialect_report(case, rule, first, ref_z, vs_rule)
    quantities = vs_paper + vs_rule
    if all(q.ok for q in vs_paper):
        status = "pass"
    elif report and report.matches_rule and report.interior_ok:
        status = "dialect"
    else:
        status = "fail"
    if status in ("pass", "dialect") and not _bitwise_equal(first, second):
        status = "nondeterministic"
    message = {
        "nondeterministic": "results differ bitwise between two runs on identical inputs",
        "dialect": f"matches rule {rule}; differs from the paper's rule Z only at outputs with a sample in a border band",
    }.get(status, "")
    if no_backward and status != "fail":
        message = "; ".join(filter(None, [message, f"gradients unsupported: {no_backward}"]))
    message = "; ".join(filter(None, [message, _mode_note(backend, device)]))
    return VerifyResult(case, backend.name, status, tuple(quantities), message, time.perf_counter() - start, report)


def _mode_note(backend: Backend, device: str) -> str:
    return f"mode: {backend.mode(device)}" if backend.mode else ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    loc = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}{loc}"


def run_verify(*, backends: list[Backend], cases: list[Case], device: str = "cpu",
               on_result: Callable[[VerifyResult], None] | None = None) -> list[VerifyResult]:
    """Every case on every backend, case-major so each reference is computed once and dropped."""
    results = []
    for case in cases:
        cache: dict = {}
        for backend in backends:
            result = verify_case(backend, case, device, cache)
            results.append(result)
            if on_result:
                on_result(result)
    return results


def failed(results: Iterable[VerifyResult], allow_nondeterministic: bool = False) -> bool:
    """Whether the run failed: `pass`, `dialect` and `unsupported` do not fail it."""
    bad = {"fail", "error"} | (set() if allow_nondeterministic else {"nondeterministic"})
    return any(r.status in bad for r in results)
