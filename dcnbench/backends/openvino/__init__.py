"""`openvino`: deform_conv2d on OpenVINO's CPU plugin, the paper's border rule (and `openvino-default`).

The graph is one `opset8.deformable_convolution` node (a bias is an `add` after it) built with
OpenVINO's opset API: OpenVINO does not read ONNX DeformConv. Its CPU plugin JIT-compiles a kernel
that gathers channel-vectorised samples into a small buffer and runs them through an FMA
microkernel blocked over output channels (no column buffer). Forward only: OpenVINO is an
inference runtime, it has no gradient.

Its `bilinear_interpolation_pad` flag picks the border rule. Measured (tests/test_openvino.py
re-measures it): with True it samples by the paper's rule Z, so `openvino` passes the suite; with
False, OpenVINO's default, it samples by **rule C** (DCN.md; MXNet's DCNv1 rule): a sample is 0
unless 0 <= p < size, and one with floor(p) >= size - 1 reads the last row/column at full weight.
`openvino-default` runs the default and declares that dialect; it runs only when named.

Compiled models are cached per geometry, dtype, optional inputs, flag and thread count, as the
onnxruntime backend caches sessions. The thread count is torch's (INFERENCE_NUM_THREADS), one
stream, latency hint, threads not pinned (the machine is shared), float32 inference precision
(else a CPU with AMX would run bfloat16). OpenVINO runs its threads with oneTBB, whose idle
workers sleep after a short spin; it has no setting for the spin.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from dcnbench.backends import Backend
from dcnbench.ops.deform_conv2d.contract import check_call

OP = "deform_conv2d"
DTYPES = ("float32", "float16")
NO_BACKWARD = "OpenVINO is an inference runtime: it has no gradient for DeformableConvolution"
_MODELS: OrderedDict = OrderedDict()
_KEEP = 32


def _element_type(dtype: torch.dtype):
    import openvino as ov

    return {torch.float32: ov.Type.f32, torch.float16: ov.Type.f16}[dtype]


def _request(input, offset, weight, bias, mask, geo, pad: bool):
    """A cached infer request for this call's shapes and settings (compiled on first use)."""
    import openvino as ov
    import openvino.opset8 as opset

    threads = torch.get_num_threads()
    key = (tuple(input.shape), tuple(offset.shape), tuple(weight.shape), None if mask is None else tuple(mask.shape),
           bias is not None, geo.stride, geo.padding, geo.dilation, geo.groups, geo.offset_groups, input.dtype, pad,
           threads)
    if key not in _MODELS:
        et = _element_type(input.dtype)
        params = [opset.parameter(list(t.shape), et) for t in (input, offset, weight)]
        if mask is not None:
            params.append(opset.parameter(list(mask.shape), et))
        node = opset.deformable_convolution(
            params[0], params[1], params[2], strides=list(geo.stride), pads_begin=list(geo.padding),
            pads_end=list(geo.padding), dilations=list(geo.dilation), mask=params[3] if mask is not None else None,
            group=geo.groups, deformable_group=geo.offset_groups, bilinear_interpolation_pad=pad)
        if bias is not None:
            b = opset.parameter([1, geo.o, 1, 1], et)
            params.append(b)
            node = opset.add(node, b)
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "f32"}
        compiled = ov.Core().compile_model(ov.Model([node], params), "CPU", config)
        _MODELS[key] = compiled.create_infer_request()
        while len(_MODELS) > _KEEP:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(key)
    return _MODELS[key]


def call(input, offset, weight, bias, stride, padding, dilation, mask, pad: bool) -> torch.Tensor:
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    if input.device.type != "cpu":
        raise RuntimeError("dcnbench runs OpenVINO with its CPU plugin only")
    if input.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"dcnbench runs OpenVINO in float32 and float16, got {input.dtype}")
    out_shape = (geo.n, geo.o, geo.ho, geo.wo)
    if 0 in out_shape or geo.c == 0:  # OpenVINO refuses empty tensors; the operator defines them
        out = torch.zeros(out_shape, dtype=input.dtype)
        return out + bias.detach().view(1, -1, 1, 1) if bias is not None and out.numel() else out
    tensors = [input, offset, weight] + ([mask] if mask is not None else []) + \
              ([bias.view(1, -1, 1, 1)] if bias is not None else [])
    arrays = [t.detach().contiguous().numpy() for t in tensors]
    request = _request(input, offset, weight, bias, mask, geo, pad)
    request.infer(arrays, share_inputs=True)
    return torch.from_numpy(request.get_output_tensor(0).data.copy())


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    return call(input, offset, weight, bias, stride, padding, dilation, mask, pad=True)


def backward_unsupported(case, device: str) -> str | None:
    return NO_BACKWARD


def reasons(version: str) -> dict[str, str]:
    return {"cuda": "dcnbench runs OpenVINO with its CPU plugin",
            "float64": f"OpenVINO {version}'s CPU plugin computes float64 models in float32 (its inference precision)",
            "bfloat16": "dcnbench runs OpenVINO in float32 and float16 (its CPU plugin runs bfloat16 only where the CPU has it)",
            "deform_roi_pool": "OpenVINO's DeformablePSROIPooling is the other operator; it has no mmcv-style deform_roi_pool",
            "deform_psroi_pool": "not wired: dcnbench's openvino backend runs deform_conv2d only",
            "dcnv3": "OpenVINO has no DCNv3 operator", "dcnv4": "OpenVINO has no DCNv4 operator",
            "export": "OpenVINO runs its own graph (built with its opset API): there is no torch graph to export"}


def make(name: str, description: str, fn, **extra) -> Backend:
    try:
        import openvino as ov
    except ImportError as exc:
        from dcnbench.backends import unavailable_backend

        return unavailable_backend(name, f"cannot import openvino ({exc}): run `make env` (it is a locked dependency)")
    version = ov.__version__.split("-")[0]
    return Backend(name=name, description=f"OpenVINO {version} CPU plugin, {description}", ops={OP: fn},
                   dtypes={"cpu": DTYPES}, unsupported_reasons=reasons(version), version=version,
                   backward_unsupported=backward_unsupported, **extra)


def backend() -> Backend:
    return make("openvino", "opset8 DeformableConvolution with bilinear_interpolation_pad=True (rule Z)", deform_conv2d)
