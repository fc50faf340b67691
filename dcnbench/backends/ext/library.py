"""The Python side of an ext op library (`dcnbench_ext`, or the emulated `dcnbench_ext_emu`): load it,
register each op's autograd formula and fake kernel (once per namespace), and wrap the ops in
torchvision's signatures, checking arguments ("got X, expected Y") before any kernel runs.

The autograd formulas are registered on the ops themselves (torch.library.register_autograd)
rather than kept in an autograd.Function around them: then the ops are complete torch operators,
which `torch.library.opcheck` checks, and torch.compile and torch.export trace them as single nodes
(through the fake kernels in fake.py) with their backward. float64 and float32 run natively;
bfloat16 and float16 are computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from dcnbench.backends.ext import build, fake
from dcnbench.errors import UsageError
from dcnbench.ops.contract import ContractError
from dcnbench.ops.dcnv3.contract import check_call as check_dcnv3_call
from dcnbench.ops.deform_conv2d.contract import check_call
from dcnbench.ops.deform_psroi_pool.contract import check_call as check_psroi_pool_call
from dcnbench.ops.deform_roi_pool.contract import check_call as check_roi_pool_call
from dcnbench.ops.dcnv4.contract import check_call as check_dcnv4_call
from dcnbench.ops.ms_deform_attn.contract import geometry_of as msda_geometry_of

_NATIVE = (torch.float64, torch.float32)
DETERMINISTIC_ENV = "DCNBENCH_EXT_DETERMINISTIC"


def deterministic() -> bool:
    """Deterministic input-gradient accumulation: DCNBENCH_EXT_DETERMINISTIC=1 or torch's global flag."""
    return os.environ.get(DETERMINISTIC_ENV) == "1" or torch.are_deterministic_algorithms_enabled()


COLUMN_BUDGET_ENV = "DCNBENCH_EXT_COLUMN_BUDGET"


def check_environment() -> None:
    """A bad DCNBENCH_EXT_DETERMINISTIC or DCNBENCH_EXT_COLUMN_BUDGET is a usage error (exit 2), not
    a silent default (the C++ kernel would ignore a budget it cannot use)."""
    value = os.environ.get(DETERMINISTIC_ENV)
    if value not in (None, "", "0", "1"):
        raise UsageError(f"{DETERMINISTIC_ENV}={value!r} is neither 0 nor 1",
                         hint="set it to 1 for deterministic CUDA input gradients, or unset it")
    budget = os.environ.get(COLUMN_BUDGET_ENV, "").strip()
    if budget and not (budget.isdigit() and 0 < int(budget) < 2**62):
        raise UsageError(f"{COLUMN_BUDGET_ENV}={budget!r} is not a positive number of column elements",
                         hint=f"set {COLUMN_BUDGET_ENV} to an integer >= 1 (e.g. 4096), or unset it for the default")


# torch.use_deterministic_algorithms(True) made every cuBLAS GEMM raise unless CUBLAS_WORKSPACE_CONFIG
# was :4096:8 or :16:8, until pytorch PR #161749 removed that check (torch 2.15 has neither the check
# nor the message) and, in the same change, the docstring's mention of the variable: so the
# docstring tells whether the installed torch still checks. ext's CUDA kernels run at::matmul.
CUBLAS_CHECKED = "CUBLAS_WORKSPACE_CONFIG" in (torch.use_deterministic_algorithms.__doc__ or "")
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def cublas_problem(device_type: str, torch_deterministic: bool, workspace: str | None,
                   checked: bool = CUBLAS_CHECKED) -> str | None:
    """Why the CUDA GEMMs would die under torch's deterministic mode here (None when they would not)."""
    if device_type != "cuda" or not torch_deterministic or not checked or workspace in CUBLAS_DETERMINISTIC:
        return None
    return (f"torch.use_deterministic_algorithms(True) is on and torch {torch.__version__} then refuses cuBLAS GEMMs "
            f"unless CUBLAS_WORKSPACE_CONFIG is {' or '.join(CUBLAS_DETERMINISTIC)}; fix: export "
            "CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting Python (or use DCNBENCH_EXT_DETERMINISTIC=1 instead)")


def _check_cublas(input: torch.Tensor) -> None:
    if input.is_cuda:
        problem = cublas_problem("cuda", torch.are_deterministic_algorithms_enabled(),
                                 os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        if problem:
            raise RuntimeError(problem)


# ---- autograd formulas, registered on the ops --------------------------------------------------


def _conv_setup(ctx, inputs, output):
    input, weight, offset, mask, bias, *params = inputs
    ctx.save_for_backward(input, weight, offset, mask)
    ctx.params, ctx.has_bias = params, bias is not None


def _pool_setup(ctx, inputs, output):
    input, rois, offset, *params = inputs
    ctx.save_for_backward(input, rois, offset)
    ctx.params = params


def _register_autograd(namespace: str) -> None:
    ops = getattr(torch.ops, namespace)

    def conv_backward(ctx, grad):
        input, weight, offset, mask = ctx.saved_tensors
        gi, gw, go, gm = ops.deform_conv2d_backward(grad, input, weight, offset, mask, *ctx.params, deterministic())
        gb = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return gi, gw, go, (gm if mask is not None else None), gb, *([None] * len(ctx.params))

    def pool_backward(name: str):
        def backward(ctx, grad):
            input, rois, offset = ctx.saved_tensors
            gi, go = getattr(ops, f"{name}_backward")(grad, input, rois, offset, *ctx.params, deterministic())
            return gi, None, (go if offset is not None else None), *([None] * len(ctx.params))

        return backward

    def group_backward(name: str, tensors: int):
        def backward(ctx, grad):
            grads = getattr(ops, f"{name}_backward")(grad, *ctx.saved_tensors, *ctx.params)
            return *grads, *([None] * len(ctx.params))

        def setup(ctx, inputs, output):
            ctx.save_for_backward(*inputs[:tensors])
            ctx.params = inputs[tensors:]

        return backward, setup

    torch.library.register_autograd(f"{namespace}::deform_conv2d_forward", conv_backward, setup_context=_conv_setup)
    for name in ("roi_pool", "psroi_pool"):
        torch.library.register_autograd(f"{namespace}::{name}_forward", pool_backward(name), setup_context=_pool_setup)
    def msda_backward(ctx, grad):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        gv, gl, ga = ops.ms_deform_attn_backward(grad, value, shapes, starts, loc, attn, ctx.im2col_step,
                                                 deterministic())
        return gv, None, None, gl, ga, None

    def msda_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:5])
        ctx.im2col_step = inputs[5]

    torch.library.register_autograd(f"{namespace}::ms_deform_attn_forward", msda_backward, setup_context=msda_setup)
    # DCNv3 takes (input, offset, mask), DCNv4 (input, offset_mask); only the CPU library has them.
    for name, tensors in (("dcnv3", 3), ("dcnv4", 2)):
        if f"{name}_forward" in fake.defined(namespace):
            backward, setup = group_backward(name, tensors)
            torch.library.register_autograd(f"{namespace}::{name}_forward", backward, setup_context=setup)


_registered: set[str] = set()


def register(namespace: str) -> None:
    """Fake kernels and autograd formulas for the ops of a loaded library (once per namespace)."""
    if namespace not in _registered:
        fake.register(namespace)
        _register_autograd(namespace)
        _registered.add(namespace)


# ---- the wrappers -----------------------------------------------------------------------------


def _same(name: str, t: torch.Tensor | None, ref: torch.Tensor) -> None:
    if t is not None and (t.dtype != ref.dtype or t.device != ref.device):
        raise ContractError(f"{name} is {t.dtype} on {t.device}, expected {ref.dtype} on {ref.device} like input")


def _compute(*tensors):
    """Contiguous, float64/float32 as they are, half types in float32 (the result is rounded back once)."""
    return tuple(None if t is None else (t if t.dtype in _NATIVE else t.float()).contiguous() for t in tensors)


def _group_params(geo) -> tuple:
    return (geo.kh, geo.kw, *geo.stride, *geo.padding, *geo.dilation, geo.group, geo.group_channels, geo.offset_scale,
            geo.remove_center)


def _cpu_only(op: str, input: torch.Tensor) -> None:
    if input.device.type != "cpu":
        raise ValueError(f"ext has {op} kernels for the CPU only, got input on {input.device}")


class OpLibrary:
    """An ext op library by its build target, its ops in their official signatures (torchvision's for deform_conv2d)."""

    def __init__(self, target: Callable[[], build.Target]):
        self._target = target
        self._ops = None

    def ops(self):
        """torch.ops.<namespace>, built and loaded on first use."""
        if self._ops is None:
            self._ops = self._load()
        return self._ops

    @torch.compiler.disable
    def _load(self):
        target = self._target()
        build.load_target(target)
        register(target.name)
        return getattr(torch.ops, target.name)

    def deform_conv2d(self, input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
        geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
        for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
            _same(name, t, input)
        _check_cublas(input)
        # The input keeps its layout: the CPU kernel reads it channels-last (no copy when it is so) and the
        # CUDA kernel makes it contiguous itself; made contiguous here, a channels-last input was copied twice.
        x = input if input.dtype in _NATIVE else input.float()
        o, w, m, b = _compute(offset, weight, mask, bias)
        out = self.ops().deform_conv2d_forward(x, w, o, m, b, *geo.stride, *geo.padding, *geo.dilation, geo.groups,
                                               geo.offset_groups)
        return out.to(input.dtype)

    def deform_roi_pool(self, input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        geo = check_roi_pool_call(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
        x, r, o = _compute(input, rois.detach(), offset)
        out = self.ops().roi_pool_forward(x, r, o, *geo.output_size, geo.spatial_scale, geo.sampling_ratio, geo.gamma)
        return out.to(input.dtype)

    def deform_psroi_pool(self, input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                          sample_per_part=1, trans_std=0.0, no_trans=False):
        geo = check_psroi_pool_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                                    sample_per_part, trans_std, no_trans)
        x, r, t = _compute(input, rois.detach(), None if no_trans else trans)
        out = self.ops().psroi_pool_forward(x, r, t, geo.spatial_scale, geo.output_dim, geo.group_size, geo.pooled_size,
                                            geo.part_size, geo.sample_per_part, geo.trans_std)
        return out.to(input.dtype)

    def ms_deform_attn(self, value, value_spatial_shapes, value_level_start_index, sampling_locations,
                       attention_weights, im2col_step):
        """The level table's values are checked here unless torch.compile traces the call (they are data
        then; the kernels check them again on the CPU)."""
        msda_geometry_of(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                         im2col_step, read_values=not torch.compiler.is_compiling())
        for name, t in (("value_spatial_shapes", value_spatial_shapes), ("value_level_start_index", value_level_start_index)):
            if t.device != value.device:
                raise ContractError(f"{name} is on {t.device}, expected {value.device} like value")
        v, loc, attn = _compute(value, sampling_locations, attention_weights)
        out = self.ops().ms_deform_attn_forward(v, value_spatial_shapes.contiguous(), value_level_start_index.contiguous(),
                                                loc, attn, im2col_step)
        return out.to(value.dtype)

    # DCNv3 and DCNv4 (csrc/cpu/dcnv34.cpp) have CPU kernels only: not in op_table, which the emulated
    # CUDA library shares; ext's backend adds them.
    def dcnv3(self, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
              group, group_channels, offset_scale, im2col_step, remove_center):
        """DCNv3 (DCNv3Function.apply's arguments). im2col_step is checked and otherwise unused: the
        kernel has no column buffer to bound."""
        geo = check_dcnv3_call(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                               dilation_w, group, group_channels, offset_scale, im2col_step, remove_center)
        for name, t in (("offset", offset), ("mask", mask)):
            _same(name, t, input)
        _cpu_only("DCNv3", input)
        out = self.ops().dcnv3_forward(*_compute(input, offset, mask), *_group_params(geo))
        return out.to(input.dtype)

    def dcnv4(self, input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
              group, group_channels, offset_scale, im2col_step, remove_center, softmax=False):
        """DCNv4 (DCNv4Function.apply's arguments and the extension's softmax flag)."""
        geo = check_dcnv4_call(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                               dilation_w, group, group_channels, offset_scale, im2col_step, remove_center,
                               softmax=softmax)
        _same("offset_mask", offset_mask, input)
        _cpu_only("DCNv4", input)
        out = self.ops().dcnv4_forward(*_compute(input, offset_mask), *_group_params(geo), geo.softmax)
        return out.to(input.dtype)

    def op_table(self) -> dict[str, Callable]:
        return {"deform_conv2d": self.deform_conv2d, "deform_roi_pool": self.deform_roi_pool,
                "deform_psroi_pool": self.deform_psroi_pool, "ms_deform_attn": self.ms_deform_attn}
