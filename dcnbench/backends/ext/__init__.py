"""`ext`: dcnbench's own C++/CUDA kernels, built on first use (build.py): deform_conv2d and both RoI
pooling ops on the CPU and CUDA, DCNv3 and DCNv4 on the CPU.

Laid out like torchvision's csrc/ops: one schema file (csrc/ext.cpp), one kernel file per device
and op family (csrc/cpu/, csrc/cuda/), the per-sample math in one header of inline
__host__ __device__ helpers (csrc/sampling.h), and here the autograd wrappers and the argument
checks ("got X, expected Y") made before any kernel runs. float64 and float32 run natively;
bfloat16 (and float16 on CUDA) are computed in float32 and rounded once at the end.

The CPU backward is deterministic. On CUDA the input gradient is accumulated with atomicAdd unless
deterministic mode is on (DCNBENCH_EXT_DETERMINISTIC=1, or torch.use_deterministic_algorithms(True)),
which gives each thread whole channel planes instead; `verify` reports the mode that ran.
"""

from __future__ import annotations

import os

import torch

from dcnbench.backends import Backend, local_devices
from dcnbench.backends.ext import build
from dcnbench.ops.dcnv3.contract import check_call as check_dcnv3_call
from dcnbench.ops.dcnv4.contract import check_call as check_dcnv4_call
from dcnbench.ops.deform_conv2d.contract import check_call
from dcnbench.ops.deform_psroi_pool.contract import check_call as check_psroi_pool_call
from dcnbench.ops.deform_roi_pool.contract import check_call as check_roi_pool_call

NAME = "ext"
_NATIVE = (torch.float64, torch.float32)


def deterministic() -> bool:
    return os.environ.get("DCNBENCH_EXT_DETERMINISTIC") == "1" or torch.are_deterministic_algorithms_enabled()


def mode(device: str) -> str:
    if device == "cpu":
        return "deterministic (CPU kernels always are)"
    return "deterministic (per-channel accumulation)" if deterministic() else "atomicAdd accumulation (nondeterministic)"


def _ops():
    build.load()
    return torch.ops.dcnbench_ext


def _same(name: str, t: torch.Tensor | None, ref: torch.Tensor) -> None:
    if t is not None and (t.dtype != ref.dtype or t.device != ref.device):
        raise ValueError(f"{name} is {t.dtype} on {t.device}, expected {ref.dtype} on {ref.device} like input")


def _compute(*tensors):
    """float64/float32 as they are; half types in float32 (the result is rounded back once)."""
    return tuple(None if t is None else (t if t.dtype in _NATIVE else t.float()) for t in tensors)


class _DeformConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, weight, mask, bias, params):
        ctx.save_for_backward(input, offset, weight, mask)
        ctx.params, ctx.has_bias = params, bias is not None
        return _ops().deform_conv2d_forward(input, weight, offset, mask, bias, *params)

    @staticmethod
    def backward(ctx, grad):
        input, offset, weight, mask = ctx.saved_tensors
        gi, gw, go, gm = _ops().deform_conv2d_backward(grad, input, weight, offset, mask, *ctx.params, deterministic())
        gb = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return gi, go, gw, (gm if mask is not None else None), gb, None


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        _same(name, t, input)
    params = (*geo.stride, *geo.padding, *geo.dilation, geo.groups, geo.offset_groups)
    out = _DeformConv2d.apply(*_compute(input, offset, weight, mask, bias), params)
    return out.to(input.dtype)


class _Pool(torch.autograd.Function):
    """Either pooling op: `name` picks the `<name>_forward`/`<name>_backward` kernels."""

    @staticmethod
    def forward(ctx, name, input, rois, offset, params):
        ctx.save_for_backward(input, rois, offset)
        ctx.name, ctx.params = name, params
        return getattr(_ops(), f"{name}_forward")(input, rois, offset, *params)

    @staticmethod
    def backward(ctx, grad):
        input, rois, offset = ctx.saved_tensors
        gi, go = getattr(_ops(), f"{ctx.name}_backward")(grad, input, rois, offset, *ctx.params, deterministic())
        return None, gi, None, (go if offset is not None else None), None


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    geo = check_roi_pool_call(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    params = (*geo.output_size, geo.spatial_scale, geo.sampling_ratio, geo.gamma)
    x, r, o = _compute(input, rois.detach(), offset)
    return _Pool.apply("roi_pool", x, r, o, params).to(input.dtype)


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                      sample_per_part=1, trans_std=0.0, no_trans=False):
    geo = check_psroi_pool_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                                sample_per_part, trans_std, no_trans)
    params = (geo.spatial_scale, geo.output_dim, geo.group_size, geo.pooled_size, geo.part_size, geo.sample_per_part,
              geo.trans_std)
    x, r, t = _compute(input, rois.detach(), None if no_trans else trans)
    return _Pool.apply("psroi_pool", x, r, t, params).to(input.dtype)


# ---- DCNv3 and DCNv4 (csrc/cpu/dcnv34.cpp; CPU only) ---------------------------------------------


class _GroupDeform(torch.autograd.Function):
    """Either op: `name` picks the `<name>_forward`/`<name>_backward` kernels; `tensors` are
    (offset, mask) for DCNv3 and (offset_mask,) for DCNv4."""

    @staticmethod
    def forward(ctx, name, params, input, *tensors):
        ctx.save_for_backward(input, *tensors)
        ctx.name, ctx.params = name, params
        return getattr(_ops(), f"{name}_forward")(input, *tensors, *params)

    @staticmethod
    def backward(ctx, grad):
        grads = getattr(_ops(), f"{ctx.name}_backward")(grad, *ctx.saved_tensors, *ctx.params)
        return (None, None, *grads)


def _group_params(geo) -> tuple:
    return (geo.kh, geo.kw, *geo.stride, *geo.padding, *geo.dilation, geo.group, geo.group_channels, geo.offset_scale,
            geo.remove_center)


def dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
          group_channels, offset_scale, im2col_step, remove_center):
    """DCNv3 (DCNv3Function.apply's arguments). im2col_step is checked and otherwise unused: the
    kernel has no column buffer to bound."""
    geo = check_dcnv3_call(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                           dilation_w, group, group_channels, offset_scale, im2col_step, remove_center)
    for name, t in (("offset", offset), ("mask", mask)):
        _same(name, t, input)
    if input.device.type != "cpu":
        raise ValueError(f"ext has DCNv3 kernels for the CPU only, got input on {input.device}")
    out = _GroupDeform.apply("dcnv3", _group_params(geo), *_compute(input, offset, mask))
    return out.to(input.dtype)


def dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
          group_channels, offset_scale, im2col_step, remove_center, softmax=False):
    """DCNv4 (DCNv4Function.apply's arguments and the extension's softmax flag)."""
    geo = check_dcnv4_call(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                           dilation_w, group, group_channels, offset_scale, im2col_step, remove_center, softmax=softmax)
    _same("offset_mask", offset_mask, input)
    if input.device.type != "cpu":
        raise ValueError(f"ext has DCNv4 kernels for the CPU only, got input on {input.device}")
    out = _GroupDeform.apply("dcnv4", (*_group_params(geo), geo.softmax), *_compute(input, offset_mask))
    return out.to(input.dtype)


def _group_ops_unsupported(geometry, device: str) -> str | None:
    if getattr(geometry, "op", None) in ("dcnv3", "dcnv4") and device != "cpu":
        return "ext has DCNv3/DCNv4 kernels for the CPU only"
    return None


def check() -> str | None:
    """Build (or load the cached build); None when the library loads, else why not and how to fix it."""
    try:
        build.load()
    except build.BuildError as exc:
        return f"{exc} (fix: {exc.hint})"
    return None


def backend() -> Backend:
    devices = local_devices(("float64", "float32", "bfloat16"))
    if "cuda" in devices and build.with_cuda():
        devices = dict(devices, cuda=("float64", "float32", "float16", "bfloat16"))
    return Backend(
        name=NAME,
        description="dcnbench's C++/CUDA kernels (TORCH_LIBRARY dcnbench_ext), built on first use",
        ops={"deform_conv2d": deform_conv2d, "deform_roi_pool": deform_roi_pool, "deform_psroi_pool": deform_psroi_pool,
             "dcnv3": dcnv3, "dcnv4": dcnv4},
        dtypes=devices,
        unsupported_reasons={"float16": "ext runs float16 on CUDA only (the CPU has no fast float16 arithmetic)"},
        version=torch.__version__,
        check=check,
        environment=lambda: f"built in {build.build_dir()}",
        mode=mode,
        batch_chunk=batch_chunk,
        knobs=knobs,
        thread_invariant=lambda device: device == "cpu",
        workload_unsupported=_group_ops_unsupported,
    )


# The CPU deform_conv2d kernel's column buffer holds at most this many elements (csrc/cpu/deform_conv2d.cpp).
CPU_COLUMN_BUDGET = 1 << 23


def knobs(device: str) -> tuple:
    """The CPU column budget: chunking the batch differently must not change a bit of the result."""
    from dcnbench.knobs import env_knob

    if device != "cpu":
        return ()
    return (env_knob("column_budget", "DCNBENCH_EXT_COLUMN_BUDGET", (str(1 << 12),), bitwise=True),)


def batch_chunk(op: str, geometry) -> int | None:
    """Images per column chunk of the CPU deform_conv2d kernel (C*K*L column elements per image)."""
    if op != "deform_conv2d":
        return None
    per_image = max(1, geometry.c * geometry.taps * geometry.ho * geometry.wo)
    return max(1, CPU_COLUMN_BUDGET // per_image)
