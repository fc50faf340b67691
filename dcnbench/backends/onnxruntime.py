"""`onnxruntime`: deform_conv2d as one ONNX `DeformConv` node (opset 19) run by ONNX Runtime's CPU provider,
and ms_deform_attn as the GridSample graph torch.onnx.export makes of transformers' eager module
(ops/ms_deform_attn/onnx.py).

The deployment runtime's own kernels, forward only (ONNX Runtime has no gradient for DeformConv).
It runs in dcnbench's process: onnxruntime, onnx and onnxscript resolve next to torch and numpy 2
in uv.lock, and the export check needs them here anyway (torch.onnx.export runs beside torch).
`--isolate` moves it into a worker like any in-process backend. Sessions are cached per geometry,
dtype and optional inputs; onnxruntime uses torch's thread count, and its idle threads sleep.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from dcnbench.backends import Backend
from dcnbench.ops.deform_conv2d import onnx as dconv_onnx
from dcnbench.ops.deform_conv2d.contract import check_call
from dcnbench.ops.ms_deform_attn import onnx as msda_onnx

NAME = "onnxruntime"
OP = "deform_conv2d"
DTYPES = ("float64", "float32", "float16")
NO_BACKWARD = "onnxruntime runs ONNX DeformConv for inference only: it has no gradient kernel for it"
MSDA_NO_BACKWARD = "onnxruntime runs the exported GridSample graph for inference only: it has no gradient kernels"
_SESSIONS: OrderedDict = OrderedDict()
_KEEP = 32


def _options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep
    options.log_severity_level = 4  # errors come back as exceptions; its own log would repeat them on stderr
    return options


def _session(geo, dtype: str, has_bias: bool, has_mask: bool):
    import onnxruntime as ort

    threads = torch.get_num_threads()
    key = (geo.kh, geo.kw, geo.stride, geo.padding, geo.dilation, geo.groups, geo.offset_groups, dtype, has_bias,
           has_mask, threads)
    if key not in _SESSIONS:
        options = _options()
        model = dconv_onnx.model(geo, dtype, has_bias, has_mask)
        _SESSIONS[key] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        while len(_SESSIONS) > _KEEP:
            _SESSIONS.popitem(last=False)
    _SESSIONS.move_to_end(key)
    return _SESSIONS[key]


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    if input.device.type != "cpu":
        raise RuntimeError("dcnbench runs onnxruntime with its CPU provider only")
    dtype = str(input.dtype).removeprefix("torch.")
    session = _session(geo, dtype, bias is not None, mask is not None)
    (out,) = session.run(None, dconv_onnx.feeds(input, offset, weight, bias, mask))
    return torch.from_numpy(out)


def ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                   im2col_step):
    """The exported grid_sample graph of transformers' module, one session per level layout and dtype."""
    import onnxruntime as ort

    from dcnbench.ops.ms_deform_attn.contract import check_call as check_msda_call

    geo = check_msda_call(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                          im2col_step)
    if value.device.type != "cpu":
        raise RuntimeError("dcnbench runs onnxruntime with its CPU provider only")
    dtype = str(value.dtype).removeprefix("torch.")
    if dtype not in msda_onnx.DTYPES:
        raise RuntimeError(MSDA_DTYPES.format(version=ort.__version__, dtype=dtype))
    if geo.n == 0 or geo.queries == 0:  # nothing to compute (the runtime's reshapes refuse empty axes)
        return value.new_zeros(geo.output_shape)
    key = ("ms_deform_attn", geo.levels, geo.heads, geo.channels, geo.points, geo.im2col_step, dtype,
           torch.get_num_threads())
    if key not in _SESSIONS:
        _SESSIONS[key] = ort.InferenceSession(msda_onnx.exported(geo, dtype), _options(),
                                              providers=["CPUExecutionProvider"])
        while len(_SESSIONS) > _KEEP:
            _SESSIONS.popitem(last=False)
    _SESSIONS.move_to_end(key)
    feeds = dict(zip(msda_onnx.INPUTS, (t.detach().contiguous().numpy() for t in
                                         (value, sampling_locations, attention_weights))))
    (out,) = _SESSIONS[key].run(None, feeds)
    return torch.from_numpy(out)


# Measured (tests/test_onnxruntime.py re-measures it): ONNX Runtime's GridSample turns a NaN or infinite
# sampling location into a finite sample (it reads some pixel), where the operator's output is NaN.
MSDA_NONFINITE = ("onnxruntime {version}'s GridSample turns a NaN or infinite sampling location into a finite sample "
                  "(it reads a pixel; the operator's output is NaN there): measured, see the README")
MSDA_DTYPES = ("onnxruntime {version}'s CPU GridSample has no {dtype} kernel (float32 and float16 only: "
               "NOT_IMPLEMENTED for float64, bfloat16 is not a GridSample type)")


def backward_unsupported(case, device: str) -> str | None:
    return MSDA_NO_BACKWARD if getattr(case, "op", None) == "ms_deform_attn" else NO_BACKWARD


# Measured (tests/test_onnxruntime.py proves it still holds): ONNX Runtime's CPU DeformConv multiplies
# a bilinear corner outside the map by its zero weight, so a NaN/Inf pixel reaches samples that do
# not read it (0 x Inf = NaN), the leak dcnbench's ext had before it isolated non-finite values.
LEAKS = (f"onnxruntime {{version}}'s DeformConv reads the corners outside the map (with weight 0), so a NaN or Inf "
         "pixel reaches outputs that do not read it (0 x Inf = NaN): measured, see the README")


def case_unsupported(case, device: str) -> str | None:
    if case.op == "ms_deform_attn":
        import onnxruntime as ort

        if case.dtype not in msda_onnx.DTYPES:
            return MSDA_DTYPES.format(version=ort.__version__, dtype=case.dtype)
        return MSDA_NONFINITE.format(version=ort.__version__) if case.poison == "read" else None
    if getattr(case, "poison", None):
        import onnxruntime as ort

        return LEAKS.format(version=ort.__version__)
    return None


def backend() -> Backend:
    import onnxruntime as ort

    return Backend(
        name=NAME,
        description=f"onnxruntime {ort.__version__} CPU provider running one ONNX DeformConv node (opset {dconv_onnx.OPSET}); "
                    "ms_deform_attn as the GridSample graph exported from transformers' eager module",
        ops={OP: deform_conv2d, "ms_deform_attn": ms_deform_attn},
        dtypes={"cpu": DTYPES},
        unsupported_reasons={"cuda": "dcnbench runs onnxruntime with its CPU provider (this build has no CUDA provider)",
                             "bfloat16": "ONNX DeformConv-19 has no bfloat16 (opset 22 names it; onnxruntime has no kernel), "
                                         "and bfloat16 is not a GridSample type",
                             "deform_roi_pool": "ONNX has no deformable RoI pooling operator",
                             "deform_psroi_pool": "ONNX has no deformable RoI pooling operator",
                             "export": "onnxruntime runs ONNX models already (one DeformConv node; ms_deform_attn's "
                                       "exported GridSample graph): it is what the export check of the other backends "
                                       "exports to"},
        version=ort.__version__,
        backward_unsupported=backward_unsupported,
        case_unsupported=case_unsupported,
    )
