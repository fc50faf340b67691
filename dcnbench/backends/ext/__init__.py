"""`ext`: dcnbench's own C++/CUDA kernels for all three ops, built on first use (build.py).

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
        ops={"deform_conv2d": deform_conv2d, "deform_roi_pool": deform_roi_pool, "deform_psroi_pool": deform_psroi_pool},
        dtypes=devices,
        unsupported_reasons={"float16": "ext runs float16 on CUDA only (the CPU has no fast float16 arithmetic)"},
        version=torch.__version__,
        check=check,
        environment=lambda: f"built in {build.build_dir()}",
        mode=mode,
        onnx_translations=_onnx_translations,
    )


def _onnx_translations() -> dict:
    """How torch.onnx.export writes ext's ops (onnx.py): deform_conv2d as one DeformConv node."""
    from dcnbench.backends.ext import onnx

    return onnx.translations()
