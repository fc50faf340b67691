"""DCNv4 in pure PyTorch: unpack the offset_mask and run DCNv3's oracle core (ops/dcnv3/oracle.py).

The padding lanes are sliced away before any arithmetic, so whatever they hold (NaN included)
never reaches a value, and their gradient is exactly 0.
"""

from __future__ import annotations

import torch

from dcnbench.ops.dcnv3.oracle import core
from dcnbench.ops.dcnv4.contract import Dcnv4Geometry, check_call, packed_width
from dcnbench.ops.sampling import compute_dtype


def unpack(offset_mask: torch.Tensor, geo: Dcnv4Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """offset_mask (N, Ho, Wo, Cpad) -> offsets (N, Ho, Wo, G, P, 2) as (dx, dy), mask (N, Ho, Wo, G, P)
    (softmax-normalised per group when the geometry says so)."""
    g, p = geo.group, geo.points
    blocks = offset_mask[..., : g * p * 3].reshape(geo.n, geo.ho, geo.wo, g, 3 * p)
    offset = blocks[..., : 2 * p].reshape(geo.n, geo.ho, geo.wo, g, p, 2)
    mask = blocks[..., 2 * p:]
    return offset, (torch.softmax(mask, dim=-1) if geo.softmax else mask)


def pack(offset: torch.Tensor, mask: torch.Tensor, group: int, width: int | None = None, fill: float = 0.0) -> torch.Tensor:
    """DCNv3's offset (N, Ho, Wo, G·P·2) and mask (N, Ho, Wo, G·P) as DCNv4's offset_mask, padded with
    `fill` to `width` lanes (default: the module's multiple of 8)."""
    n, ho, wo, gp2 = offset.shape
    p = gp2 // (2 * group)
    om = torch.cat([offset.reshape(n, ho, wo, group, 2 * p), mask.reshape(n, ho, wo, group, p)], -1)
    om = om.reshape(n, ho, wo, group * 3 * p)
    width = packed_width(group, p) if width is None else width
    return torch.cat([om, om.new_full((n, ho, wo, width - om.shape[-1]), fill)], -1)


def dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
          group, group_channels, offset_scale, im2col_step, remove_center, softmax=False):
    geo = check_call(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                     group, group_channels, offset_scale, im2col_step, remove_center, softmax=softmax)
    offset, mask = unpack(offset_mask.to(compute_dtype(input.dtype)), geo)
    return core(input, offset, mask, geo).to(input.dtype)
