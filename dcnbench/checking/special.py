"""The checks beyond one comparison: `gradcheck` (finite differences), `torch.compile`, and knob
invariance (the same case under each of a backend's knobs: threads, budgets, orders)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch.autograd.gradcheck import GradcheckError

from dcnbench.backends import Backend
from dcnbench.ops.case import Case, cotangent
from dcnbench.checking.compare import QuantityError, compare
from dcnbench.checking.runs import Run, leaves, run_call
from dcnbench.errors import one_line


def gradcheck_errors(fn: Callable, case: Case, device: str) -> list[QuantityError]:
    inputs = case.inputs(device)
    fixed = {k: v for k, v in inputs.items() if k not in case.differentiable}
    names = [k for k in inputs if k in case.differentiable]

    def f(*tensors):
        return case.call(fn, fixed | dict(zip(names, tensors)))

    fresh = tuple(inputs[k].detach().clone().requires_grad_(True) for k in names)
    try:
        # Fast mode compares the Jacobians through random projections (and still runs the backward
        # twice for reentrancy): 4.6 s instead of 70 s for the default run's gradcheck rows, and the
        # same verdict on the five gradient bugs of tests/plugins/planted_bugs.py (docs/checks.md).
        torch.autograd.gradcheck(f, fresh, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
        return [QuantityError("gradcheck", None, None, 1e-4, True)]
    except GradcheckError as exc:
        return [QuantityError("gradcheck", None, None, 1e-4, False, str(exc).strip().splitlines()[0])]


def compiled_errors(fn: Callable, case: Case, device: str, backward: bool) -> list[QuantityError]:
    """The backend under torch.compile(fullgraph=True) against itself eager, output and gradients.

    Dynamo traces the call and AOTAutograd traces its backward through the ops' fake kernels
    (backend "aot_eager": what `torch.compile` and `torch.export` need from a kernel, without
    inductor's code generation for the ops around it, which a kernel does not own). Raises
    CannotCompile when the call cannot be traced whole.
    """
    import torch._dynamo

    inputs = case.inputs(device)
    cot = cotangent(case, device)
    eager = run_call(fn, case, inputs, {"random": cot}, backward=backward)
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


def _knob_errors(case: Case, default: Run, again: Run, label: str, bitwise: bool) -> list[QuantityError]:
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


def knob_runs(backend: Backend, fn: Callable, case: Case, inputs: dict, cot: torch.Tensor, first: Run, device: str,
               backward: bool) -> list[QuantityError]:
    from dcnbench.checking.knobs import threads_knob

    bitwise_threads = bool(backend.thread_invariant and backend.thread_invariant(device))
    knobs = ([] if backend.in_worker else [threads_knob(bitwise_threads)]) + list(backend.knobs(device) if backend.knobs else ())
    found = []
    for knob in knobs:
        for value in knob.values:
            with knob.apply(value):
                again = run_call(fn, case, inputs, {"random": cot}, backward=backward)
            found += _knob_errors(case, first, again, f"{knob.name}={value}", knob.bitwise)
    return found
