"""Judging one quantity: a result against its float64 reference under the per-dtype tolerance
(normwise relative error), with the failure classes named: missing, shape, dtype, NaN, zero,
overflow, and non-finite values that reach other entries than the reference's."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from dcnbench.ops.case import DTYPES


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
