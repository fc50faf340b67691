"""DCNv3 as a depthwise `torchvision.ops.deform_conv2d` (the identity of InternImage#107), and the
depthwise `conv2d` of the same shape that `speed` measures it against.

The identity, exactly: torchvision's deform_conv2d with groups = C (weight ones (C, 1, kh, kw),
no bias), offset groups = G, the same stride, padding and dilation, on

- the input permuted NHWC -> NCHW and the output back;
- the offsets with each point moved from DCNv3's x-major index (i·kh + j) to torchvision's
  row-major tap (j·kw + i), each pair (dx, dy) turned into torchvision's (dy, dx), and
  offset_scale folded in per axis: off_tv = os·off + (1 − os)·(c − k·dil), which is exact because
  the position is affine in the offset (nothing to do for os = 1);
- the mask reordered the same way; with remove_center the dropped tap gets mask 0.

torchvision samples by the same rule Z with the same pre-test, so values and all three gradients
coincide for any mask, softmaxed or not. No depthwise weight other than ones can be expressed
(DCNv3's only per-tap weight is the mask, shared by a group's channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcnbench.ops.dcnv3.contract import check_call, float32, kernel_points
from dcnbench.ops.sampling import compute_dtype


def to_deform_conv2d(offset: torch.Tensor, mask: torch.Tensor, geo) -> tuple[torch.Tensor, torch.Tensor]:
    """DCNv3's offset (N, Ho, Wo, G·P·2) and mask (N, Ho, Wo, G·P) as torchvision's
    (N, 2·G·kh·kw, Ho, Wo) offset and (N, G·kh·kw, Ho, Wo) mask."""
    n, ho, wo, g, kh, kw = geo.n, geo.ho, geo.wo, geo.group, geo.kh, geo.kw
    os_ = float32(geo.offset_scale)
    cy, cx = geo.dilation[0] * (kh - 1) // 2, geo.dilation[1] * (kw - 1) // 2
    pts = kernel_points(kh, kw, geo.remove_center)
    taps = torch.tensor([j * kw + i for i, j in pts], device=offset.device)  # torchvision's tap of each point
    off = offset.reshape(n, ho, wo, g, len(pts), 2)
    # Fold offset_scale in: the same position from the unscaled grid (an affine map of the offset).
    ki = torch.tensor([i * geo.dilation[1] for i, _ in pts], dtype=offset.dtype, device=offset.device)
    kj = torch.tensor([j * geo.dilation[0] for _, j in pts], dtype=offset.dtype, device=offset.device)
    dx = off[..., 0] * os_ + (1 - os_) * (cx - ki)
    dy = off[..., 1] * os_ + (1 - os_) * (cy - kj)
    full_off = offset.new_zeros(n, ho, wo, g, kh * kw, 2)
    full_off[..., taps, :] = torch.stack([dy, dx], dim=-1)
    full_mask = mask.new_zeros(n, ho, wo, g, kh * kw)  # a removed centre tap reads with mask 0
    full_mask[..., taps] = mask.reshape(n, ho, wo, g, len(pts))
    return (full_off.reshape(n, ho, wo, g * kh * kw * 2).permute(0, 3, 1, 2).contiguous(),
            full_mask.reshape(n, ho, wo, g * kh * kw).permute(0, 3, 1, 2).contiguous())


def via_deform_conv2d(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                      group, group_channels, offset_scale, im2col_step, remove_center):
    """DCNv3 computed by torchvision.ops.deform_conv2d through the identity (the module docstring)."""
    from torchvision.ops import deform_conv2d

    geo = check_call(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                     group, group_channels, offset_scale, im2col_step, remove_center)
    compute = compute_dtype(input.dtype)  # the fold in float32 at least, then torchvision's dtype
    tv_offset, tv_mask = (t.to(input.dtype) for t in to_deform_conv2d(offset.to(compute), mask.to(compute), geo))
    weight = input.new_ones(geo.c, 1, geo.kh, geo.kw)
    out = deform_conv2d(input.permute(0, 3, 1, 2), tv_offset, weight, None, geo.stride, geo.padding, geo.dilation, tv_mask)
    return out.permute(0, 2, 3, 1)


def deform_conv2d_identity(case):
    """The reference of the `deform_conv2d` identity cases: the identity in float64."""
    return via_deform_conv2d


def depthwise_conv2d(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                     group, group_channels, offset_scale, im2col_step, remove_center):
    """The same layer without deformation: a depthwise kh x kw conv2d on the channels-last map (offsets,
    mask and offset_scale ignored); the `conv2d` reference row."""
    c = input.shape[-1]
    weight = input.new_ones(c, 1, kernel_h, kernel_w)
    out = F.conv2d(input.permute(0, 3, 1, 2), weight, None, (stride_h, stride_w), (pad_h, pad_w),
                   (dilation_h, dilation_w), c)
    return out.permute(0, 2, 3, 1)
