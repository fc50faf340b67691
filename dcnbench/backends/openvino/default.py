"""`openvino-default`: OpenVINO's DeformableConvolution with its default `bilinear_interpolation_pad=False`.

Measured: that default samples the border by rule C (DCN.md, the rule of MXNet's DCNv1), not the
paper's rule Z, for DCNv1 and DCNv2 alike, so the backend declares that dialect and `verify`
checks it against the oracle in both rules (status `dialect`). It runs only when named
(`--backend openvino-default`): `openvino` is the same kernel under the paper's rule.
"""

from __future__ import annotations

from dcnbench.backends import Backend
from dcnbench.backends.openvino import call, make

RULE = "C"


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    return call(input, offset, weight, bias, stride, padding, dilation, mask, pad=False)


def backend() -> Backend:
    return make("openvino-default", "opset8 DeformableConvolution with its default bilinear_interpolation_pad=False "
                f"(rule {RULE})", deform_conv2d, dialects={"v1": RULE, "v2": RULE}, kind="variant")
