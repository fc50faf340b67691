"""deform_conv2d in pure PyTorch: the float64 oracle (and, as the `pytorch` backend, a usable kernel).

Vectorised over batch, channels and positions; the only Python loop is over the four bilinear
corners. Autograd provides every gradient. `rule="C"` samples the border as MXNet's DCNv1 does
(DCN.md), so a backend that declares that dialect can be checked against its own rule too.
"""

from __future__ import annotations

import torch

from dcnbench.ops.deform_conv2d.contract import check_call
from dcnbench.ops.sampling import bilinear_sample, compute_dtype


def sampling_points(offset: torch.Tensor, geo) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sampling coordinates (N, G, K, Ho, Wo) for py and px."""
    g, k, ho, wo = geo.offset_groups, geo.taps, geo.ho, geo.wo
    off = offset.reshape(geo.n, g, k, 2, ho, wo)
    dev, dt = offset.device, offset.dtype
    tap_i = torch.arange(geo.kh, device=dev, dtype=dt).repeat_interleave(geo.kw)  # taps row-major
    tap_j = torch.arange(geo.kw, device=dev, dtype=dt).repeat(geo.kh)
    out_y = torch.arange(ho, device=dev, dtype=dt)
    out_x = torch.arange(wo, device=dev, dtype=dt)
    base_y = out_y[None, :] * geo.stride[0] - geo.padding[0] + tap_i[:, None] * geo.dilation[0]  # (K, Ho)
    base_x = out_x[None, :] * geo.stride[1] - geo.padding[1] + tap_j[:, None] * geo.dilation[1]  # (K, Wo)
    py = base_y[None, None, :, :, None] + off[:, :, :, 0]
    px = base_x[None, None, :, None, :] + off[:, :, :, 1]
    return py, px


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None,
                  *, rule: str = "Z"):
    geo = check_call(input, offset, weight, bias, stride, padding, dilation, mask)
    out_dtype = input.dtype
    compute = compute_dtype(out_dtype)
    x, offset, weight = input.to(compute), offset.to(compute), weight.to(compute)
    n, c, g, k, l = geo.n, geo.c, geo.offset_groups, geo.taps, geo.ho * geo.wo

    py, px = sampling_points(offset, geo)
    scale = None if mask is None else mask.to(compute).reshape(n * g, k * l)
    # Each offset group samples its own C/G channels at its own points: (N*G, C/G, K*L).
    cols = bilinear_sample(x.reshape(n * g, c // g, geo.h, geo.w), py.reshape(n * g, k * l), px.reshape(n * g, k * l), scale, rule)
    # Column c*K + k matches weight (O, C/groups, kh, kw) flattened, so each group is one matmul.
    cols = cols.reshape(n, geo.groups, (c // geo.groups) * k, l)
    wmat = weight.reshape(geo.groups, geo.o // geo.groups, (c // geo.groups) * k)
    out = torch.matmul(wmat.unsqueeze(0), cols).reshape(n, geo.o, geo.ho, geo.wo)
    if bias is not None:
        out = out + bias.to(compute).reshape(1, -1, 1, 1)
    return out.to(out_dtype)


def band_outputs(case, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 1, Ho, Wo) bool: outputs with a sample in a border band, -1 < p < 0 or size-1 < p < size.

    Rules Z and C agree everywhere else: at p <= -1 or p >= size both give 0.
    """
    geo = case.geometry
    py, px = sampling_points(inputs["offset"].double().cpu(), geo)
    band = ((py > -1) & (py < 0)) | ((py > geo.h - 1) & (py < geo.h)) | ((px > -1) & (px < 0)) | ((px > geo.w - 1) & (px < geo.w))
    return band.flatten(1, 2).any(dim=1, keepdim=True)
