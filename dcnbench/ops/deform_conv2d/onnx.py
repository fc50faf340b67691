"""deform_conv2d in ONNX: the `DeformConv` node (opset 19) built directly, and what the export
check needs (a small module around any backend's callable, its inputs, and the translation of a
custom op with deform_conv2d's parameters to `DeformConv`).

ONNX's DeformConv takes torchvision's offset and mask layout (channel 2·(g·K + k) is Δy, the next
Δx), pads as [top, left, bottom, right], `B` and `mask` optional: an inner missing input is the
empty name, trailing ones are dropped. Without a mask it is DCNv1 (a mask of ones).
"""

from __future__ import annotations

import torch

OPSET = 19
# onnx >= 1.23 stamps IR version 14 by default; onnxruntime 1.31 reads at most 13, and opset 19
# needs only IR 9.
IR_VERSION = 9
_RANK = {"X": 4, "W": 4, "offset": 4, "B": 1, "mask": 4, "Y": 4}


def attributes(kh, kw, stride, padding, dilation, groups, offset_groups) -> dict:
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    return {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw], "dilations": [dh, dw],
            "group": groups, "offset_group": offset_groups}


def model(geo, dtype: str, has_bias: bool, has_mask: bool):
    """A one-node ONNX model computing deform_conv2d for `geo`'s parameters (any batch and map size)."""
    from onnx import TensorProto, helper

    elem = {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]

    def value(name):  # symbolic dims: the full checker wants a shape on every input
        return helper.make_tensor_value_info(name, elem, [f"{name}_{i}" for i in range(_RANK[name])])

    names = ["X", "W", "offset", "B" if has_bias else "", "mask" if has_mask else ""]
    while names[-1] == "":
        names.pop()
    node = helper.make_node("DeformConv", names, ["Y"], **attributes(geo.kh, geo.kw, geo.stride, geo.padding,
                                                                    geo.dilation, geo.groups, geo.offset_groups))
    graph = helper.make_graph([node], "deform_conv2d", [value(n) for n in names if n], [value("Y")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def feeds(input, offset, weight, bias, mask) -> dict:
    found = {"X": input, "W": weight, "offset": offset}
    if bias is not None:
        found["B"] = bias
    if mask is not None:
        found["mask"] = mask
    return {k: v.detach().cpu().contiguous().numpy() for k, v in found.items()}


class Layer(torch.nn.Module):
    """One deformable layer around a backend's callable, the case's geometry fixed: what the export check exports."""

    def __init__(self, fn, case):
        super().__init__()
        self.fn, self.case = fn, case

    def forward(self, input, offset, weight, bias=None, mask=None):
        tensors = {"input": input, "offset": offset, "weight": weight, "bias": bias, "mask": mask}
        return self.case.call(self.fn, {k: v for k, v in tensors.items() if v is not None})


def export_layer(case, fn) -> tuple[torch.nn.Module, tuple]:
    """(module, inputs) for the export check: the layer and the case's tensors in the module's argument order."""
    t = case.inputs("cpu")
    return Layer(fn, case), (t["input"], t["offset"], t["weight"], t.get("bias"), t.get("mask"))


def oracle_for(case):
    """What an export case's output is compared with: the float64 oracle (rule Z)."""
    from dcnbench.ops.deform_conv2d.oracle import deform_conv2d

    return deform_conv2d


def translation(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                dil_h: int, dil_w: int, groups: int, offset_groups: int):
    """An onnxscript function for a custom op with ext's deform_conv2d_forward schema: one DeformConv node."""
    from onnxscript import opset19 as op

    # kernel_shape is optional: DeformConv reads it from W.
    return op.DeformConv(input, weight, offset, bias, mask, strides=[stride_h, stride_w],
                         pads=[pad_h, pad_w, pad_h, pad_w], dilations=[dil_h, dil_w], group=groups,
                         offset_group=offset_groups)
