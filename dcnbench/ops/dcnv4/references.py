"""DCNv4 through DCNv3: the identity (DCNv4 on a packed offset_mask == DCNv3 on the offsets and mask
it packs, with the softmax flag == DCNv3 fed each group's softmax), DCNv4 through torchvision's
deform_conv2d (DCNv3's identity after unpacking), and the depthwise conv2d reference row."""

from __future__ import annotations

import torch

from dcnbench.ops.dcnv3.oracle import dcnv3
from dcnbench.ops.dcnv3.references import depthwise_conv2d, via_deform_conv2d
from dcnbench.ops.dcnv4.contract import check_call
from dcnbench.ops.dcnv4.oracle import unpack


def lanes(geo) -> tuple[list[int], list[int]]:
    """The lanes of offset_mask holding DCNv3's offset (in its (g, p, dx/dy) order) and mask (g, p):
    group g's block starts at lane g·3P, its offsets first, then its P mask values."""
    g, p = geo.group, geo.points
    offset = [b * 3 * p + 2 * k + e for b in range(g) for k in range(p) for e in (0, 1)]
    mask = [b * 3 * p + 2 * p + k for b in range(g) for k in range(p)]
    return offset, mask


def as_dcnv3(input, offset_mask, *args, softmax=False):
    """DCNv4 evaluated by DCNv3's oracle on the lanes picked one by one (a second formulation of the
    packing: index lists, where the DCNv4 oracle reshapes)."""
    geo = check_call(input, offset_mask, *args, softmax=softmax)
    off_lanes, mask_lanes = lanes(geo)
    offset = offset_mask.index_select(-1, torch.tensor(off_lanes, device=offset_mask.device))
    mask = offset_mask.index_select(-1, torch.tensor(mask_lanes, device=offset_mask.device))
    if softmax:
        shape = (geo.n, geo.ho, geo.wo, geo.group, geo.points)
        mask = torch.softmax(mask.reshape(shape), dim=-1).reshape(mask.shape)
    return dcnv3(input, offset, mask, *args)


def dcnv3_identity(case):
    """The reference of the `dcnv3` identity cases."""
    return as_dcnv3


def via_deform_conv2d_v4(input, offset_mask, *args, softmax=False):
    """DCNv4 computed by torchvision.ops.deform_conv2d: unpack, then DCNv3's identity."""
    geo = check_call(input, offset_mask, *args, softmax=softmax)
    offset, mask = unpack(offset_mask, geo)
    n, ho, wo, gp = geo.n, geo.ho, geo.wo, geo.group * geo.points
    return via_deform_conv2d(input, offset.reshape(n, ho, wo, gp * 2), mask.reshape(n, ho, wo, gp), *args)


def depthwise_conv2d_v4(input, offset_mask, *args, softmax=False):
    """The depthwise conv2d of the same shape (offset_mask ignored): the `conv2d` reference row."""
    return depthwise_conv2d(input, None, None, *args)
