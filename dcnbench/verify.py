"""Verification: run a backend on a case and compare output and every gradient with a reference.

References come from the case's operator (`ops.get(case.op)`): its float64 oracle, or an identity
its spec names. Each run is repeated on identical inputs to measure determinism bitwise, and the
caller's tensors (and the cotangent) are compared with snapshots to catch in-place writes. Nothing
here names an operator.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch.autograd.gradcheck import GradcheckError

from dcnbench import ops
from dcnbench.backends import Backend
from dcnbench.ops.case import DTYPES, Case, cotangent, noncontiguous
from dcnbench.status import Status

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


def default_suite(seed: int = 0, op_names: list[str] | None = None, thorough: bool = False,
                  built: list | None = None) -> list[Case]:
    """Every registered operator's default cases (of `op_names` only, when given), in registry order,
    each op's hand-written cases followed by its covering array (pairs; triples when `thorough`).
    `built` collects each covering array's record (covering.Generated: count and build time)."""
    from dcnbench import covering

    found = []
    for spec in ops.all_ops():
        if op_names and spec.name not in op_names:
            continue
        found += spec.suite(seed)
        if spec.options:
            generated = covering.generate(spec.options(), seed, covering.level_strength(thorough), spec.name)
            found += generated.cases
            if built is not None:
                built.append(generated)
    return found


def select_cases(cases: list[Case], patterns: list[str] | None, dtypes: list[str] | None,
                 op_names: list[str] | None = None) -> list[Case]:
    """Keep cases of the listed ops (all when none) whose id contains any pattern and whose dtype is listed."""
    kept = [c for c in cases if (not dtypes or c.dtype in dtypes) and (not op_names or c.op in op_names)]
    if patterns:
        kept = [c for c in kept if any(p in c.case_id for p in patterns)]
    return kept


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
    status: Status
    quantities: tuple[QuantityError, ...] = ()
    message: str = ""
    elapsed_s: float = 0.0
    dialect: DialectReport | None = None

    @property
    def failing(self) -> tuple[QuantityError, ...]:
        """Quantities that decide a failure (for a dialect result: those against its own rule)."""
        if self.dialect is not None and self.status == Status.DIALECT:
            return ()
        if self.dialect is not None and self.dialect.matches_rule is False:
            return tuple(q for q in self.quantities if not q.ok and q.reference == self.dialect.rule)
        return tuple(q for q in self.quantities if not q.ok)


@dataclass
class _Run:
    output: torch.Tensor
    grads: dict[str, torch.Tensor | None]
    mutated: list[str] = field(default_factory=list)
    # Gradients under each other cotangent layout (COTANGENT_LAYOUTS), when they were asked for.
    layout_grads: dict[str, dict[str, torch.Tensor | None]] = field(default_factory=dict)


# Cotangents as training hands them to a backward, besides the fresh contiguous random one:
#   expanded:      stride 0 along the batch axis (a loss broadcast over the batch; out.sum() is stride 0
#                  everywhere). Random along the other axes, so the gradient's conditioning, and so the
#                  half-precision tolerances, stay those of a random cotangent.
#   transposed:    the random values, stored transposed (a permute or transpose after the layer)
#   channels_last: the random values in channels-last memory (a channels-last network)
# A backward that reads its incoming gradient as if it were contiguous fails these and only these.
COTANGENT_LAYOUTS = ("expanded", "transposed", "channels_last")


def cotangents(case: Case, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The cotangent of every layout this case's output shape allows, "random" (contiguous) first."""
    base = cotangent(case, device)
    found = {"random": base}
    if base.dim() < 2 or not base.numel():
        return found
    gen = torch.Generator().manual_seed(case.seed + 7919)
    small = torch.randn((1, *base.shape[1:]), generator=gen, dtype=torch.float64).to(base.dtype).to(device)
    layouts = {"expanded": small.expand(base.shape),
               "transposed": base.transpose(-1, -2).contiguous().transpose(-1, -2)}
    if base.dim() == 4:
        layouts["channels_last"] = base.contiguous(memory_format=torch.channels_last)
    # A layout the shape makes contiguous anyway (size-1 axes) tests nothing new: leave it out.
    return found | {k: v for k, v in layouts.items() if not v.is_contiguous()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN matching NaN (inputs may hold NaN on purpose: lanes an op must not read)."""
    if torch.equal(a, b):
        return True
    if a.shape != b.shape or a.dtype != b.dtype or not a.is_floating_point():
        return False
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def leaves(case: Case, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh buffers laid out like the inputs (channels-last and non-contiguous stay so); gradients
    where the op has them."""

    def like(v: torch.Tensor) -> torch.Tensor:
        v = v.detach()
        if v.is_contiguous() or v.is_contiguous(memory_format=torch.channels_last):
            return v.clone(memory_format=torch.preserve_format)
        return noncontiguous(v)

    return {k: like(v).requires_grad_(k in case.differentiable) for k, v in inputs.items()}


def _run(fn: Callable, case: Case, inputs: dict[str, torch.Tensor], cots: dict[str, torch.Tensor],
         backward: bool = True, layouts: bool = False) -> _Run:
    """One forward (+backward under the random cotangent, and with `layouts` under every other
    layout in `cots`) on fresh leaves holding the inputs' values, with mutation checks."""
    fresh = leaves(case, inputs)
    cots = {k: v.clone(memory_format=torch.preserve_format) if k != "expanded" else v for k, v in cots.items()}
    snapshots = {k: v.detach().clone() for k, v in fresh.items()} | {f"cotangent:{k}": v.clone() for k, v in cots.items()}
    out = case.call(fn, fresh)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}, expected a torch.Tensor")
    cot = cots["random"]
    layout_grads = {}
    if backward and out.requires_grad and out.shape == cot.shape:
        wrt = [a for a in case.differentiable if a in fresh]
        for name in (n for n in COTANGENT_LAYOUTS if layouts and n in cots):
            grads = torch.autograd.grad(out, [fresh[a] for a in wrt], cots[name].to(out.dtype), retain_graph=True,
                                        allow_unused=True)
            layout_grads[name] = {f"grad_{a}": g for a, g in zip(wrt, grads)}
        out.backward(cot.to(out.dtype))
    current = {k: v.detach() for k, v in fresh.items()} | {f"cotangent:{k}": v for k, v in cots.items()}
    mutated = [k.replace("cotangent:random", "cotangent") for k, v in snapshots.items() if not same_bits(v, current[k])]
    return _Run(out.detach(), {f"grad_{a}": fresh[a].grad for a in case.differentiable if a in fresh}, mutated, layout_grads)


# ---- references ------------------------------------------------------------------------------


def reference(case: Case, rule: str = "Z") -> tuple[_Run, tuple[str, ...]]:
    """The expected output and gradients, in float64 on the CPU, at the exact values a backend sees.

    `rule` picks the oracle's boundary rule for the "oracle" check (identities have no rule).
    """
    spec = ops.of(case)
    inputs = case.reference_inputs({k: (v.double() if v.is_floating_point() else v).cpu()
                                    for k, v in case.inputs("cpu").items()})
    # The same values the backend's cotangents hold, contiguous and in float64 (only "expanded"
    # holds other values than "random"; the other layouts compare with the random gradients).
    cots = {k: v.double().contiguous() for k, v in cotangents(case).items() if k in ("random", "expanded")}
    if case.check == "oracle":
        fn, quantities = (spec.oracle if rule == "Z" else partial(spec.oracle, rule=rule)), spec.quantities
    else:
        ref = spec.references[case.check]
        fn, quantities = ref.make(case), ref.quantities
    return _run(fn, case, inputs, cots, layouts=True), quantities


# ---- comparison ------------------------------------------------------------------------------


def compare(name: str, got: torch.Tensor | None, ref: torch.Tensor, dtype: str, nonfinite: bool = False) -> QuantityError:
    """Normwise relative error of `got` against the float64 `ref`, and whether it is within tolerance.

    Where the reference is exactly zero there is no relative error: the error reported is the max
    abs error, and only an exact zero passes. A failure says how when it is not by size alone:
    NaN or Inf where the reference is finite, or all zeros where it is not. Where the reference is
    not finite everywhere, or with `nonfinite` (a case that plants NaN/Inf), the non-finite entries
    must match the reference's exactly (else the quantity is `nonfinite:<name>`).
    """
    tol = tolerance(dtype, name)
    if got is None:
        return QuantityError(name, None, None, tol, False, "missing (None)")
    if tuple(got.shape) != tuple(ref.shape):
        return QuantityError(name, None, None, tol, False, f"shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    got = got.detach().double().cpu()
    if nonfinite or not bool(ref.isfinite().all()):
        return _compare_nonfinite(name, got, ref, dtype)
    diff = got - ref
    ref_norm = float(torch.linalg.vector_norm(ref)) if ref.numel() else 0.0
    diff_norm = float(torch.linalg.vector_norm(diff)) if diff.numel() else 0.0
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    if ref_norm == 0.0:
        rel, ok = max_abs, diff_norm == 0.0
    else:
        rel = diff_norm / ref_norm
        ok = rel <= tol  # NaN compares False, so NaN fails
    note = ""
    finite_ref = ref.isfinite()
    overflowed = got.isinf() & finite_ref
    if not ok and bool(overflowed.any()):
        return _overflow(name, rel, max_abs, tol, ref[overflowed], dtype)
    if not ok and bool((got.isnan() & finite_ref).any()):
        note = "nan: NaN where the reference is finite"
    elif not ok and ref_norm > 0 and got.numel() and not bool(got.ne(0).any()):
        note = "zero: all zero where the reference is not"
    elif not ok and ref_norm == 0.0:
        note = "the reference is exactly zero: the error shown is the max abs error"
    return QuantityError(name, rel, max_abs, tol, ok, note)


def _overflow(name: str, rel: float, max_abs: float, tol: float, where: torch.Tensor, dtype: str) -> QuantityError:
    """Infinite where the float64 reference is finite: an overflow (quantity `overflow:<name>`) when the
    reference there is within the dtype's range, so a correctly rounded result would be finite (a
    float16 kernel whose partial sums pass 65504, a bfloat16 one computing through float16)."""
    largest, top = float(where.abs().max()), torch.finfo(DTYPES[dtype]).max
    if largest > top:
        return QuantityError(name, rel, max_abs, tol, False, f"inf: the reference reaches {largest:.4g}, past {dtype}'s "
                                                             f"largest {top:.4g} (the case, not the kernel, is wrong)")
    return QuantityError(f"overflow:{name}", rel, max_abs, tol, False,
                         f"overflow: infinite where the float64 reference is finite and within {dtype}'s range "
                         f"(|reference| up to {largest:.4g} there; {dtype} holds {top:.4g})")


def dtype_checked(err: QuantityError, got: torch.Tensor, dtype: str) -> QuantityError:
    """`err`, failed and saying so when `got` is not of the case's dtype: a float32 result in a
    float64 case otherwise reads as a mere large error (its rounding), which names nothing."""
    if got is None or got.dtype == DTYPES[dtype]:
        return err
    return replace(err, ok=False, note=f"dtype {str(got.dtype).removeprefix('torch.')}, expected {dtype}")


def _compare_nonfinite(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: str) -> QuantityError:
    """A reference holding NaN/Inf (a non-finite input read by some outputs): the non-finite entries
    must be exactly the reference's (a bad value reaches exactly what reads it, never others,
    quantity `nonfinite:<name>`), and the finite ones must agree as usual."""
    bad_ref, bad_got = ~ref.isfinite(), ~got.isfinite()
    leaked, lost = int((bad_got & ~bad_ref).sum()), int((bad_ref & ~bad_got).sum())
    finite = compare(name, got[~bad_ref], ref[~bad_ref], dtype)
    if leaked or lost:
        what = "; ".join(filter(None, [f"{leaked} non-finite where the reference is finite (a leak)" if leaked else "",
                                       f"{lost} finite where the reference is not" if lost else ""]))
        return QuantityError(f"nonfinite:{name}", None, None, finite.tolerance, False, what)
    return finite


def _compare_runs(case: Case, run: _Run, ref: _Run, quantities: Iterable[str], label: str,
                  no_backward: str | None = None) -> list[QuantityError]:
    tol = tolerance(case.dtype, "output")
    # A case that plants NaN/Inf holds every quantity to the reference's non-finite entries.
    against = partial(compare, nonfinite=case.poison is not None)
    found = []
    for q in quantities:
        if q == "output":
            found.append(replace(dtype_checked(against(q, run.output, ref.output, case.dtype), run.output, case.dtype),
                                 reference=label))
        elif q in ref.grads and ref.grads[q] is not None:
            if no_backward:
                found.append(QuantityError(q, None, None, tolerance(case.dtype, q), True, reference=label, unsupported=no_backward))
            else:
                found.append(replace(against(q, run.grads.get(q), ref.grads[q], case.dtype), reference=label))
    for layout, grads in run.layout_grads.items():
        expected = ref.layout_grads["expanded"] if layout == "expanded" else ref.grads
        for q, got in grads.items():
            if q in quantities and expected.get(q) is not None:
                err = against(q, got, expected[q], case.dtype)
                found.append(replace(err, quantity=f"{q}@{layout}", reference=label))
    for name in run.mutated:
        found.append(QuantityError(f"unchanged:{name}", None, None, tol, False, f"the backend modified the caller's {name}", label))
    return found


def _dialect_report(case: Case, rule: str, run: _Run, ref_z: _Run, vs_rule: list[QuantityError]) -> DialectReport:
    band = ops.of(case).band_outputs(case, case.inputs("cpu")).expand_as(ref_z.output)
    diff = (run.output.double().cpu() - ref_z.output).abs()
    interior, in_band = diff[~band], diff[band]
    inner = compare("output", run.output.double().cpu()[~band], ref_z.output[~band], case.dtype)
    channels = max(1, ref_z.output.shape[1]) if ref_z.output.dim() > 1 else 1
    return DialectReport(
        rule=rule,
        matches_rule=all(q.ok for q in vs_rule),
        interior_outputs=int((~band).sum()) // channels,
        band_outputs=int(band.sum()) // channels,
        interior_max_abs_vs_z=float(interior.max()) if interior.numel() else None,
        band_max_abs_vs_z=float(in_band.max()) if in_band.numel() else None,
        interior_ok=inner.ok,
    )


def _bitwise_equal(a: _Run, b: _Run) -> bool:
    if not same_bits(a.output, b.output):
        return False
    for q, g in a.grads.items():
        h = b.grads.get(q)
        if (g is None) != (h is None) or (g is not None and not same_bits(g, h)):
            return False
    return True


def _gradcheck(fn: Callable, case: Case, device: str) -> list[QuantityError]:
    inputs = case.inputs(device)
    fixed = {k: v for k, v in inputs.items() if k not in case.differentiable}
    names = [k for k in inputs if k in case.differentiable]

    def f(*tensors):
        return case.call(fn, fixed | dict(zip(names, tensors)))

    fresh = tuple(inputs[k].detach().clone().requires_grad_(True) for k in names)
    try:
        torch.autograd.gradcheck(f, fresh, eps=1e-6, atol=1e-6, rtol=1e-4)
        return [QuantityError("gradcheck", None, None, 1e-4, True)]
    except GradcheckError as exc:
        return [QuantityError("gradcheck", None, None, 1e-4, False, str(exc).strip().splitlines()[0])]


def _compiled_check(fn: Callable, case: Case, device: str, backward: bool) -> list[QuantityError]:
    """The backend under torch.compile(fullgraph=True) against itself eager, output and gradients.

    Dynamo traces the call and AOTAutograd traces its backward through the ops' fake kernels
    (backend "aot_eager": what `torch.compile` and `torch.export` need from a kernel, without
    inductor's code generation for the ops around it, which a kernel does not own). Raises
    CannotCompile when the call cannot be traced whole.
    """
    import torch._dynamo

    inputs = case.inputs(device)
    cot = cotangent(case, device)
    eager = _run(fn, case, inputs, {"random": cot}, backward=backward)
    fresh = leaves(case, inputs)
    names = list(fresh)

    def call(*tensors):
        return case.call(fn, dict(zip(names, tensors)))

    torch._dynamo.reset()
    try:
        compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
        out = compiled(*fresh.values())
        if backward and out.requires_grad:
            out.backward(cot.to(out.dtype))
    except Exception as exc:
        if not _untraceable(exc):
            raise
        raise CannotCompile(f"torch.compile(fullgraph=True) cannot trace it: {one_line(exc)}") from None
    finally:
        torch._dynamo.reset()
    found = [replace(compare("output", out, eager.output.double().cpu(), case.dtype), reference="eager")]
    for q, ref in eager.grads.items():
        if ref is not None:
            got = fresh[q.removeprefix("grad_")].grad
            found.append(replace(compare(q, got, ref.double().cpu(), case.dtype), reference="eager"))
    return found


def _untraceable(exc: BaseException) -> bool:
    """A graph break or a data-dependent shape (the call cannot be traced whole), as opposed to a
    kernel that traces and then fails."""
    import torch._dynamo
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    kinds = (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError, GuardOnDataDependentSymNode)
    return any(isinstance(e, kinds) for e in (exc, exc.__cause__, exc.__context__))


class CannotCompile(Exception):
    """torch.compile cannot trace the backend's call whole (a graph break under fullgraph=True)."""


# ---- driver ----------------------------------------------------------------------------------


def _knob_errors(case: Case, default: _Run, again: _Run, label: str, bitwise: bool) -> list[QuantityError]:
    """The run under a knob setting against the default run: within tolerance, or bitwise equal."""
    found = []
    for q, got in [("output", again.output)] + list(again.grads.items()):
        ref = default.output if q == "output" else default.grads.get(q)
        if ref is None:
            continue
        err = replace(compare(q, got, ref.double().cpu(), case.dtype), quantity=f"{q}~{label}", reference="knob")
        if bitwise and err.ok and not torch.equal(got, ref):
            err = replace(err, ok=False, note="not bitwise equal to the default run (the backend claims it is)")
        found.append(err)
    return found


def _knob_runs(backend: Backend, fn: Callable, case: Case, inputs: dict, cot: torch.Tensor, first: _Run, device: str,
               backward: bool) -> list[QuantityError]:
    from dcnbench.knobs import threads_knob

    bitwise_threads = bool(backend.thread_invariant and backend.thread_invariant(device))
    knobs = ([] if backend.self_timed else [threads_knob(bitwise_threads)]) + list(backend.knobs(device) if backend.knobs else ())
    found = []
    for knob in knobs:
        for value in knob.values:
            with knob.apply(value):
                again = _run(fn, case, inputs, {"random": cot}, backward=backward)
            found += _knob_errors(case, first, again, f"{knob.name}={value}", knob.bitwise)
    return found


def why_unsupported(backend: Backend, case: Case, device: str) -> str | None:
    """Why the backend declares that it does not run this case on `device` (verify, speed and fuzz
    ask alike), or None."""
    return (backend.support(case.op, device, case.dtype, case.geometry) or case.unsupported_by(backend.ops[case.op])
            or (backend.case_unsupported(case, device) if backend.case_unsupported else None)
            or (backend.unsupported_reasons.get("export") if case.check == "export" else None))


def verify_case(backend: Backend, case: Case, device: str, ref_cache: dict, knobs: bool = False) -> VerifyResult:
    start = time.perf_counter()
    reason = why_unsupported(backend, case, device)
    if reason:
        return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=reason)
    if case.check == "export":  # the ONNX export check (onnx_export.py)
        return verify_export(backend, case, device, ref_cache)
    no_backward = backend.backward_unsupported(case, device) if backend.backward_unsupported else None
    fn = backend.ops[case.op]
    rule = backend.dialect(case) if case.check == "oracle" else "Z"
    try:
        if case.check == "compile":
            try:
                quantities = _compiled_check(fn, case, device, not no_backward)
            except CannotCompile as exc:
                return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=str(exc),
                                    elapsed_s=time.perf_counter() - start)
            status = Status.PASS if all(q.ok for q in quantities) else Status.FAIL
            return VerifyResult(case, backend.name, status, tuple(quantities), _mode_note(backend, device),
                                time.perf_counter() - start)
        if case.check == "gradcheck":
            if no_backward:
                return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=no_backward)
            quantities = _gradcheck(fn, case, device)
            status = Status.PASS if all(q.ok for q in quantities) else Status.FAIL
            return VerifyResult(case, backend.name, status, tuple(quantities), _mode_note(backend, device),
                                time.perf_counter() - start)
        for r in {"Z", rule}:
            if (case, r) not in ref_cache:
                ref_cache[(case, r)] = reference(case, r)
        inputs = case.inputs(device)
        cots = cotangents(case, next(iter(inputs.values())).device.type)
        first = _run(fn, case, inputs, cots, backward=not no_backward, layouts=True)
        second = _run(fn, case, inputs, {"random": cots["random"]}, backward=not no_backward)
        by_knob = _knob_runs(backend, fn, case, inputs, cots["random"], first, device, not no_backward) if knobs else []
    except Exception as exc:  # a backend that raises becomes an error row; the run goes on
        return VerifyResult(case, backend.name, Status.ERROR, message=one_line(exc), elapsed_s=time.perf_counter() - start)
    except SystemExit as exc:  # a kernel run here (--in-process) that exits must not end the run with its code
        return VerifyResult(case, backend.name, Status.ERROR, message=f"the kernel called sys.exit({exc.code!r})",
                            elapsed_s=time.perf_counter() - start)
    ref_z, covered = ref_cache[(case, "Z")]
    label = "Z" if case.check == "oracle" else case.check
    vs_paper = _compare_runs(case, first, ref_z, covered, label, no_backward) + by_knob
    vs_rule, report = [], None
    if rule != "Z":
        vs_rule = _compare_runs(case, first, ref_cache[(case, rule)][0], covered, rule, no_backward)
        report = _dialect_report(case, rule, first, ref_z, vs_rule)
    quantities = vs_paper + vs_rule
    if all(q.ok for q in vs_paper):
        status = Status.PASS
    elif report and report.matches_rule and report.interior_ok:
        status = Status.DIALECT
    else:
        status = Status.FAIL
    if status in (Status.PASS, Status.DIALECT) and not _bitwise_equal(first, second):
        status = Status.NONDETERMINISTIC
    message = {
        Status.NONDETERMINISTIC: "results differ bitwise between two runs on identical inputs",
        Status.DIALECT: f"matches rule {rule}; differs from the paper's rule Z only at outputs with a sample in a border band",
    }.get(status, "")
    if no_backward and status != Status.FAIL:
        message = "; ".join(filter(None, [message, f"gradients unsupported: {no_backward}"]))
    message = "; ".join(filter(None, [message, _mode_note(backend, device)]))
    return VerifyResult(case, backend.name, status, tuple(quantities), message, time.perf_counter() - start, report)


def verify_export(backend, case, device: str, ref_cache: dict):
    """One export case on one backend, as a VerifyResult (compared with the float64 oracle's output)."""
    from dcnbench.onnx_export import NotExportable, RuntimeRejected, exporter

    start = time.perf_counter()
    if device != "cpu":
        return VerifyResult(case, backend.name, Status.UNSUPPORTED,
                            message="the export check runs the exported model with onnxruntime's CPU provider")
    if ops.of(case).export_layer is None:
        return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=f"{case.op} has no export check")
    try:
        output, note = exporter(backend)(case)
    except (NotExportable, RuntimeRejected) as exc:
        status = Status.UNSUPPORTED if isinstance(exc, NotExportable) else Status.ERROR
        return VerifyResult(case, backend.name, status, message=str(exc), elapsed_s=time.perf_counter() - start)
    except Exception as exc:  # the kernel or the worker failed: an error row, and the run goes on
        return VerifyResult(case, backend.name, Status.ERROR, message=one_line(exc), elapsed_s=time.perf_counter() - start)
    if (case, "Z") not in ref_cache:
        ref_cache[(case, "Z")] = reference(case, "Z")
    ref, _ = ref_cache[(case, "Z")]
    err = dtype_checked(compare("output", output, ref.output, case.dtype), output, case.dtype)
    status = Status.PASS if err.ok else Status.FAIL
    return VerifyResult(case, backend.name, status, (err,), note, time.perf_counter() - start)


def _mode_note(backend: Backend, device: str) -> str:
    return f"mode: {backend.mode(device)}" if backend.mode else ""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type, its first line and where it was raised."""
    if hasattr(exc, "one_line"):  # from a worker: its own line (the remote error, or how the worker died)
        return exc.one_line()
    text = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    loc = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}{loc}"


def run_verify(*, backends: list[Backend], cases: list[Case], device: str = "cpu", knobs: bool = False,
               on_result: Callable[[VerifyResult], None] | None = None) -> list[VerifyResult]:
    """Every case on every backend, case-major so each reference is computed once and dropped;
    with `knobs`, each also under every knob setting (dcnbench.knobs)."""
    results = []
    for case in cases:
        cache: dict = {}
        for backend in backends:
            result = verify_case(backend, case, device, cache, knobs)
            results.append(result)
            if on_result:
                on_result(result)
    return results


def failed(results: Iterable[VerifyResult], allow_nondeterministic: bool = False) -> bool:
    """Whether the run failed: `pass`, `dialect` and `unsupported` do not fail it."""
    bad = {Status.FAIL, Status.ERROR} | (set() if allow_nondeterministic else {Status.NONDETERMINISTIC})
    return any(r.status in bad for r in results)
