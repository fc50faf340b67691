"""ms_deform_attn in ONNX: the graph torch.onnx.export makes of transformers' eager
`MultiScaleDeformableAttention` (one GridSample per level, then the weighted sum), which is what a
Deformable DETR exported for deployment carries. The `onnxruntime` backend runs it.

Exported once per level layout, heads, channels, points and dtype, with the batch and the query
count as dynamic axes, by the TorchScript exporter (`dynamo=False`): 0.4-1.7 s per export here
against 8-13 s for `dynamo=True`, whose graph for the same module holds the same GridSample nodes
and matched it to 5e-7 in float32 (measured on this machine). ONNX Runtime 1.31's CPU GridSample
runs float32 and float16 only (float64: NOT_IMPLEMENTED; bfloat16 is not a GridSample type).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

OPSET = 19
DTYPES = ("float32", "float16")
INPUTS = ("value", "sampling_locations", "attention_weights")


class EagerAttention(torch.nn.Module):
    """transformers' module with the levels fixed, as a Deformable DETR layer calls it."""

    def __init__(self, levels: list[list[int]], im2col_step: int):
        super().__init__()
        from dcnbench.backends.transformers import eager_module

        self.attention, self.levels, self.im2col_step = eager_module(), levels, im2col_step

    def forward(self, value, sampling_locations, attention_weights):
        # The module reads only the Python list of shapes (the tensors it also takes go unused).
        return self.attention(value, None, self.levels, None, sampling_locations, attention_weights, self.im2col_step)


def exported(geo, dtype: str) -> bytes:
    """The serialized ONNX model of the eager module for `geo`'s levels, heads, channels and points."""
    module = EagerAttention([list(hw) for hw in geo.levels], geo.im2col_step)
    t = getattr(torch, dtype)
    n, q = max(geo.n, 2), max(geo.queries, 2)  # a sample of each dynamic axis above 1 (0 and 1 are specialised)
    args = (torch.zeros(n, geo.s, geo.heads, geo.channels, dtype=t),
            torch.full((n, q, geo.heads, geo.num_levels, geo.points, 2), 0.5, dtype=t),
            torch.zeros(n, q, geo.heads, geo.num_levels, geo.points, dtype=t))
    axes = {"value": {0: "n"}, "sampling_locations": {0: "n", 1: "q"}, "attention_weights": {0: "n", 1: "q"},
            "output": {0: "n", 1: "q"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                          output_names=["output"], dynamic_axes=axes)
    return buffer.getvalue()
