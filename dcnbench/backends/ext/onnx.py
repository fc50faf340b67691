"""ext's deform_conv2d through torch.onnx.export: a fake (meta) kernel, so torch.export can trace
the op without running it, and its translation to one ONNX DeformConv node (the export check's
`onnx_translations`). The pooling ops have no ONNX operator to become, so they are not translated.
"""

from __future__ import annotations

import torch

from dcnbench.ops.contract import out_size

OP = "dcnbench_ext::deform_conv2d_forward"


def _fake_deform_conv2d_forward(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                groups, offset_groups):
    """The output's shape and dtype, nothing computed: what torch.export traces with."""
    n, _, h, w = input.shape
    o, _, kh, kw = weight.shape
    return input.new_empty((n, o, out_size(h, kh, stride_h, pad_h, dil_h), out_size(w, kw, stride_w, pad_w, dil_w)))


_registered = False


def register_fake() -> None:
    """Give the forward op its fake kernel, once (another part of dcnbench may have given one already)."""
    global _registered
    if _registered:
        return
    op_overload()  # the op must exist before a kernel can be registered for it
    try:
        torch.library.register_fake(OP, _fake_deform_conv2d_forward)
    except RuntimeError as exc:  # a fake kernel registered elsewhere (ext's own op checks) serves as well
        if "already" not in str(exc):
            raise
    _registered = True


def op_overload():
    """The forward op as torch.onnx.export's translation table keys it (the library loaded first)."""
    from dcnbench.backends.ext import build

    build.load()
    return torch.ops.dcnbench_ext.deform_conv2d_forward.default


def translations() -> dict:
    """{ext's forward op: its onnxscript translation} for torch.onnx.export's custom_translation_table."""
    from dcnbench.ops.deform_conv2d.onnx import translation

    key = op_overload()
    register_fake()
    return {key: translation}
