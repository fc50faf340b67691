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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

from dcnbench.backends.pytorch import deform_conv2d as oracle_deform_conv2d
from dcnbench.ops import OP_DEFORM_CONV2D
from dcnbench.registry import Backend
from dcnbench.workloads import DTYPES, ConvCase, make_inputs

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

STATUSES = ("pass", "fail", "nondeterministic", "unsupported", "error")
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


@dataclass(frozen=True)
class VerifyResult:
    case: ConvCase
    backend: str
    status: str
    quantities: tuple[QuantityError, ...] = ()
    message: str = ""
    elapsed_s: float = 0.0

    @property
    def failing(self) -> tuple[QuantityError, ...]:
        return tuple(q for q in self.quantities if not q.ok)


@dataclass
class _Run:
    output: torch.Tensor
    grads: dict[str, torch.Tensor | None]
    mutated: list[str] = field(default_factory=list)


def _call(fn: Callable, case: ConvCase, t: dict[str, torch.Tensor]):
    geo = case.geometry
    return fn(t["input"], t["offset"], t["weight"], t.get("bias"), stride=geo.stride,
              padding=geo.padding, dilation=geo.dilation, mask=t.get("mask"))


def _run(fn: Callable, case: ConvCase, inputs: dict[str, torch.Tensor], cotangent: torch.Tensor) -> _Run:
    """One forward+backward on fresh leaves holding the inputs' values, with mutation checks."""
    leaves = {k: v.detach().clone().requires_grad_(True) if v.is_contiguous() else _same_strides(v) for k, v in inputs.items()}
    cot = cotangent.clone()
    snapshots = {k: v.detach().clone() for k, v in leaves.items()} | {"cotangent": cot.clone()}
    out = _call(fn, case, leaves)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}, expected a torch.Tensor")
    if out.requires_grad and out.shape == cot.shape:
        out.backward(cot.to(out.dtype))
    current = {k: v.detach() for k, v in leaves.items()} | {"cotangent": cot}
    mutated = [k for k, v in snapshots.items() if not torch.equal(v, current[k])]
    return _Run(out.detach(), {q: leaves[a].grad for q, a in ARG_OF.items() if a in leaves}, mutated)


def _same_strides(v: torch.Tensor) -> torch.Tensor:
    """A fresh non-contiguous leaf laid out like v (so non-contiguous cases stay non-contiguous)."""
    fresh = torch.empty_strided(v.size(), v.stride(), dtype=v.dtype, device=v.device)
    if fresh.is_contiguous():  # empty_strided compacted it: fall back to a strided view
        fresh = torch.stack([v.detach(), torch.zeros_like(v)], dim=-1)[..., 0]
    else:
        fresh.copy_(v.detach())
    return fresh.requires_grad_(True)


def _cotangent(case: ConvCase, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """A random cotangent (never ones: sum() hides sign and permutation errors)."""
    gen = torch.Generator().manual_seed(case.seed + 104729)
    c = torch.randn(case.geometry.output_shape, generator=gen, dtype=torch.float64)
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


# Which reference each check uses and which quantities it defines.
_REFERENCES: dict[str, tuple[Callable[[ConvCase], Callable], tuple[str, ...]]] = {
    "oracle": (lambda case: oracle_deform_conv2d, QUANTITIES),
    "zero_offset": (_conv_identity, ("output", "grad_input", "grad_weight", "grad_bias")),
    "integer_offset": (_conv_identity, ("output", "grad_input", "grad_weight", "grad_bias")),
    "zero_mask": (lambda case: _bias_only, ("output", "grad_input", "grad_offset", "grad_weight", "grad_bias")),
}


def reference(case: ConvCase) -> tuple[_Run, tuple[str, ...]]:
    """The expected output and gradients, in float64 on the CPU, at the exact values a backend sees."""
    inputs = {k: v.double().cpu() for k, v in make_inputs(case, "cpu").items()}
    cot = _cotangent(case, inputs).double()
    make, quantities = _REFERENCES[case.check]
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


def _compare_runs(case: ConvCase, run: _Run, ref: _Run, quantities: Iterable[str]) -> list[QuantityError]:
    tol = tolerance(case.dtype, "output")
    found = []
    for q in quantities:
        if q == "output":
            err = compare(q, run.output, ref.output, case.dtype)
            if err.ok and run.output.dtype != DTYPES[case.dtype]:
                err = QuantityError(q, err.rel_err, err.max_abs_err, tol, False, f"dtype {run.output.dtype}, expected {case.dtype}")
            found.append(err)
        elif q in ref.grads and ref.grads[q] is not None:
            found.append(compare(q, run.grads.get(q), ref.grads[q], case.dtype))
    for name in run.mutated:
        found.append(QuantityError(f"unchanged:{name}", None, None, tol, False, f"the backend modified the caller's {name}"))
    return found


def _bitwise_equal(a: _Run, b: _Run) -> bool:
    if not torch.equal(a.output, b.output):
        return False
    for q, g in a.grads.items():
        h = b.grads.get(q)
        if (g is None) != (h is None) or (g is not None and not torch.equal(g, h)):
            return False
    return True


def _gradcheck(fn: Callable, case: ConvCase, device: str) -> list[QuantityError]:
    inputs = make_inputs(case, device)
    names = list(inputs)

    def f(*tensors):
        return _call(fn, case, dict(zip(names, tensors)))

    leaves = tuple(v.detach().clone().requires_grad_(True) for v in inputs.values())
    try:
        torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)
        return [QuantityError("gradcheck", None, None, 1e-4, True)]
    except GradcheckError as exc:
        return [QuantityError("gradcheck", None, None, 1e-4, False, str(exc).strip().splitlines()[0])]


# ---- driver ----------------------------------------------------------------------------------


def verify_case(backend: Backend, case: ConvCase, device: str, ref_cache: dict) -> VerifyResult:
    start = time.perf_counter()
    reason = backend.support(OP_DEFORM_CONV2D, device, case.dtype)
    if reason:
        return VerifyResult(case, backend.name, "unsupported", message=reason)
    fn = backend.ops[OP_DEFORM_CONV2D]
    try:
        if case.check == "gradcheck":
            quantities = _gradcheck(fn, case, device)
            status = "pass" if all(q.ok for q in quantities) else "fail"
            return VerifyResult(case, backend.name, status, tuple(quantities), elapsed_s=time.perf_counter() - start)
        if case not in ref_cache:
            ref_cache[case] = reference(case)
        ref, covered = ref_cache[case]
        inputs = make_inputs(case, device)
        cot = _cotangent(case, inputs)
        first = _run(fn, case, inputs, cot)
        second = _run(fn, case, inputs, cot)
    except Exception as exc:  # a backend that raises becomes an error row; the run goes on
        return VerifyResult(case, backend.name, "error", message=_one_line(exc), elapsed_s=time.perf_counter() - start)
    quantities = _compare_runs(case, first, ref, covered)
    if any(not q.ok for q in quantities):
        status = "fail"
    elif not _bitwise_equal(first, second):
        status = "nondeterministic"
    else:
        status = "pass"
    message = "backward differs bitwise between two runs on identical inputs" if status == "nondeterministic" else ""
    return VerifyResult(case, backend.name, status, tuple(quantities), message, time.perf_counter() - start)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    loc = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}{loc}"


def run_verify(*, backends: list[Backend], cases: list[ConvCase], device: str = "cpu",
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
    bad = {"fail", "error"} | (set() if allow_nondeterministic else {"nondeterministic"})
    return any(r.status in bad for r in results)
