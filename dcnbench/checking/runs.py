"""One call of a backend on a case, as verify makes it: fresh leaves holding the case's values, a
backward under the random cotangent and under every other cotangent layout the output shape
allows, snapshots that catch in-place writes; and the reference run, the operator's float64
oracle (or an identity) at the values the backend saw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from dcnbench import ops
from dcnbench.ops.case import Case, cotangent, noncontiguous


@dataclass
class Run:
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
    if base.dim() < 2 or not base.numel() or case.cotangent_layouts is False:
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


def run_call(fn: Callable, case: Case, inputs: dict[str, torch.Tensor], cots: dict[str, torch.Tensor],
         backward: bool = True, layouts: bool = False) -> Run:
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
    return Run(out.detach(), {f"grad_{a}": fresh[a].grad for a in case.differentiable if a in fresh}, mutated, layout_grads)


def reference(case: Case, rule: str = "Z") -> tuple[Run, tuple[str, ...]]:
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
    return run_call(fn, case, inputs, cots, layouts=True), quantities


def bitwise_equal(a: Run, b: Run) -> bool:
    if not same_bits(a.output, b.output):
        return False
    for q, g in a.grads.items():
        h = b.grads.get(q)
        if (g is None) != (h is None) or (g is not None and not same_bits(g, h)):
            return False
    return True
