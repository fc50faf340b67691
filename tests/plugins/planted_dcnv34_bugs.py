"""Planted-bug DCNv3/DCNv4 kernels: dcnbench's oracle with one classic mistake each, behind the
official signatures (`dcnbench_op` says which).

`dcnbench verify --impl tests/plugins/planted_dcnv34_bugs.py:NAME` must fail on every one of them
and name the quantity that gives it away. BUGS maps each kernel to its op and the quantities that
must fail.
"""

from dataclasses import replace

import torch

from dcnbench.ops.dcnv3.contract import check_call as check_v3
from dcnbench.ops.dcnv3.oracle import aggregate, positions
from dcnbench.ops.dcnv3.oracle import dcnv3 as oracle_v3
from dcnbench.ops.dcnv4.contract import check_call as check_v4
from dcnbench.ops.dcnv4.oracle import dcnv4 as oracle_v4


def _grouped(t: torch.Tensor, geo, last: int) -> torch.Tensor:
    return t.reshape(geo.n, geo.ho, geo.wo, geo.group, geo.points, *((last,) if last else ()))


def _sample(input, offset, mask, geo, shift_y=0.0, shift_x=0.0):
    """The oracle's sampling with the positions moved by (shift_y, shift_x) pixels."""
    off, m = _grouped(offset.double(), geo, 2), _grouped(mask.double(), geo, 0)
    y, x = positions(off, geo)
    out = aggregate(input.double().reshape(geo.n, geo.h, geo.w, geo.group, geo.group_channels), y + shift_y, x + shift_x, m)
    return out.reshape(geo.output_shape).to(input.dtype)


def xy_swapped(input, offset, mask, *args):
    """Reads each offset pair as (dy, dx), torchvision's order, where DCNv3 stores (dx, dy)."""
    geo = check_v3(input, offset, mask, *args)
    return oracle_v3(input, _grouped(offset, geo, 2).flip(-1).reshape(offset.shape), mask, *args)


def padding_axes_swapped(input, offset, mask, *args):
    """Pads H by pad_w and W by pad_h (what dcnv3_core_pytorch's NHWC F.pad does), keeping the
    output size of the right padding."""
    geo = check_v3(input, offset, mask, *args)
    ph, pw = geo.padding
    return _sample(input, offset, mask, geo, shift_y=ph - pw, shift_x=pw - ph)


def offset_scale_on_offset_only(input, offset, mask, *args):
    """Multiplies the learned offset by offset_scale but leaves the kernel grid unscaled."""
    geo = check_v3(input, offset, mask, *args)
    return _sample(input, offset * geo.offset_scale, mask, replace(geo, offset_scale=1.0))


def softmax_twice(input, offset, mask, *args):
    """Softmaxes the mask inside the op, which the DCNv3 module has already softmaxed."""
    geo = check_v3(input, offset, mask, *args)
    return oracle_v3(input, offset, torch.softmax(_grouped(mask, geo, 0), dim=-1).reshape(mask.shape), *args)


def group_channels_interleaved(input, offset, mask, *args):
    """Puts channel c in group c % G instead of c // group_channels."""
    geo = check_v3(input, offset, mask, *args)
    c = torch.arange(geo.c, device=input.device)
    perm = torch.argsort((c % geo.group) * geo.c + c)  # channels of "group" c % G, side by side
    out = oracle_v3(input[..., perm], offset, mask, *args)
    return out[..., torch.argsort(perm)]


def xy_swapped_v4(input, offset_mask, *args, softmax=False):
    """DCNv4 reading each packed pair as (dy, dx)."""
    geo = check_v4(input, offset_mask, *args, softmax=softmax)
    g, p = geo.group, geo.points
    lanes = torch.arange(geo.cpad, device=input.device)
    block, lane = lanes // (3 * p), lanes % (3 * p)
    swap = (block < g) & (lane < 2 * p)
    lanes = torch.where(swap, lanes + 1 - 2 * (lane % 2), lanes)
    return oracle_v4(input, offset_mask[..., lanes], *args, softmax=softmax)


def padding_lanes_read(input, offset_mask, *args, softmax=False):
    """Loads whole padded rows (8-lane vectors) and zeroes the padding lanes' share by multiplying
    by 0: right for finite lanes, NaN for the suite's NaN-filled ones."""
    geo = check_v4(input, offset_mask, *args, softmax=softmax)
    pad = offset_mask[..., geo.group * geo.points * 3:].sum(-1, keepdim=True)
    return oracle_v4(input, offset_mask, *args, softmax=softmax) + 0 * pad


def softmax_applied_twice(input, offset_mask, *args, softmax=False):
    """Softmaxes the mask lanes itself and then honours the flag: once where none is due (DCNv4
    dropped DCNv3's softmax), twice where the flag asks for one."""
    geo = check_v4(input, offset_mask, *args, softmax=softmax)
    g, p = geo.group, geo.points
    blocks = offset_mask[..., : g * p * 3].reshape(geo.n, geo.ho, geo.wo, g, 3 * p)
    blocks = torch.cat([blocks[..., : 2 * p], torch.softmax(blocks[..., 2 * p:], dim=-1)], -1)
    packed = torch.cat([blocks.reshape(geo.n, geo.ho, geo.wo, g * p * 3), offset_mask[..., g * p * 3:]], -1)
    return oracle_v4(input, packed, *args, softmax=softmax)


def group_blocks_spread(input, offset_mask, *args, softmax=False):
    """Finds group g's block at lane g·(Cpad/G) (the padding spread over the groups) instead of g·3P."""
    geo = check_v4(input, offset_mask, *args, softmax=softmax)
    g, p = geo.group, geo.points
    start = torch.arange(g, device=input.device) * (geo.cpad // g)
    lanes = (start[:, None] + torch.arange(3 * p, device=input.device)).reshape(-1).clamp(max=geo.cpad - 1)
    packed = torch.cat([offset_mask[..., lanes], offset_mask[..., g * p * 3:]], -1)
    return oracle_v4(input, packed, *args, softmax=softmax)


def clears_padding_lanes_in_place(input, offset_mask, *args, softmax=False):
    """Sanitises the caller's packed padding lanes (NaN -> 0) in place, behind autograd's back."""
    geo = check_v4(input, offset_mask, *args, softmax=softmax)
    offset_mask.data[..., geo.group * geo.points * 3:] = 0
    return oracle_v4(input, offset_mask, *args, softmax=softmax)


for _f in (xy_swapped, padding_axes_swapped, offset_scale_on_offset_only, softmax_twice, group_channels_interleaved):
    _f.dcnbench_op = "dcnv3"
for _f in (xy_swapped_v4, padding_lanes_read, softmax_applied_twice, group_blocks_spread, clears_padding_lanes_in_place):
    _f.dcnbench_op = "dcnv4"

# kernel -> (op, quantities of which at least one must fail).
BUGS = {
    "xy_swapped": ("dcnv3", {"output"}),
    "padding_axes_swapped": ("dcnv3", {"output"}),
    "offset_scale_on_offset_only": ("dcnv3", {"output"}),
    "softmax_twice": ("dcnv3", {"output"}),
    "group_channels_interleaved": ("dcnv3", {"output"}),
    "xy_swapped_v4": ("dcnv4", {"output"}),
    "padding_lanes_read": ("dcnv4", {"output"}),
    "softmax_applied_twice": ("dcnv4", {"output"}),
    "group_blocks_spread": ("dcnv4", {"output"}),
    "clears_padding_lanes_in_place": ("dcnv4", {"unchanged:offset_mask"}),
}
