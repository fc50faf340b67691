"""Exact statements about deform_conv2d that need no oracle (identities), and the plain `conv2d`
it is measured against in `speed`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as oracle


def conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """The same layer without deformation (offset and mask ignored): the `conv2d` reference row."""
    groups = input.shape[1] // weight.shape[1]
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """xs[h, w] = x[h + dy, w + dx], zero outside the map."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[..., yd, xd] = x[..., ys, xs]
    return out


def shifted_conv2d(case):
    """deform_conv2d with integer offsets (dy, dx) everywhere == conv2d of the shifted input (zero
    offsets and a unit mask: plain conv2d).

    The shift applies to the zero-padded input: a tap in the padding can land inside the map.
    """

    def fn(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        dy, dx = (int(round(offset[:, 0].flatten()[0].item())), int(round(offset[:, 1].flatten()[0].item()))) \
            if offset.numel() else (0, 0)
        ph, pw = padding
        x = _shift(F.pad(input, (pw, pw, ph, ph)), dy, dx)
        return F.conv2d(x, weight, bias, stride, 0, dilation, input.shape[1] // weight.shape[1])

    return fn


def bias_only(case):
    """A zero mask leaves only the bias."""

    def fn(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        # The oracle's graph supplies exact zero gradients for input, offset and weight; the
        # identity itself is the value: bias only.
        out = 0 * oracle(input, offset, weight, None, stride, padding, dilation, mask)
        return out + bias.reshape(1, -1, 1, 1) if bias is not None else out

    return fn
