"""Planted-bug DCNv3/DCNv4 kernels: dcnbench's oracle with one classic mistake each, behind the
official signatures (`dcnbench_op` says which).

`dcnbench verify --impl tests/plugins/planted_dcnv34_bugs.py:NAME` must fail on every one of them
and name the quantity that gives it away. BUGS maps each kernel to its op and the quantities that
must fail.
"""

from dataclasses import replace
from unittest import mock

import torch

from dcnbench.ops.dcnv3 import oracle as v3_oracle
from dcnbench.ops.dcnv3.contract import check_call as check_v3
from dcnbench.ops.dcnv3.contract import float32
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


# ---- the issue's bugs that one geometry alone caught (or none), rebuilt (issue 21) ------------------


def _centre_swapped_points(kh, kw, remove_center):
    """kernel_points with the centre tap looked up on the wrong axes, (i, j) = (kh // 2, kw // 2), where
    such a tap exists: the same tap for square kernels and single rows or columns."""
    ci, cj = (kh // 2, kw // 2) if kh // 2 < kw and kw // 2 < kh else (kw // 2, kh // 2)
    return [(i, j) for i in range(kw) for j in range(kh) if not (remove_center and i == ci and j == cj)]


def remove_center_axes_swapped(input, offset, mask, *args):
    """remove_center drops the tap at (kh // 2, kw // 2) in (x, y) order: wrong only where remove_center
    meets a kernel that is neither square nor one row or column (3x5, 5x3)."""
    with mock.patch.object(v3_oracle, "kernel_points", _centre_swapped_points):
        return oracle_v3(input, offset, mask, *args)


def _positions_centre_unfloored(offset, geo):
    """positions() with the centre dil·(k−1)/2 not rounded down (a float division)."""
    dt, dev = offset.dtype, offset.device
    os_ = float32(geo.offset_scale)
    cy, cx = geo.dilation[0] * (geo.kh - 1) / 2, geo.dilation[1] * (geo.kw - 1) / 2
    pts = v3_oracle.kernel_points(geo.kh, geo.kw, geo.remove_center)
    ki = torch.tensor([i * geo.dilation[1] for i, _ in pts], dtype=dt, device=dev)
    kj = torch.tensor([j * geo.dilation[0] for _, j in pts], dtype=dt, device=dev)
    p0x = torch.arange(geo.wo, dtype=dt, device=dev) * geo.stride[1] + (cx - geo.padding[1]) - cx * os_
    p0y = torch.arange(geo.ho, dtype=dt, device=dev) * geo.stride[0] + (cy - geo.padding[0]) - cy * os_
    return (p0y.view(1, -1, 1, 1, 1) + (kj + offset[..., 1]) * os_), (p0x.view(1, 1, -1, 1, 1) + (ki + offset[..., 0]) * os_)


def centre_not_floored(input, offset, mask, *args):
    """Takes the kernel centre dil·(k−1)/2 as a real number: wrong only where dil·(k−1) is odd (an even
    kernel, an odd dilation) and offset_scale != 1 (otherwise the centre cancels)."""
    with mock.patch.object(v3_oracle, "positions", _positions_centre_unfloored):
        return oracle_v3(input, offset, mask, *args)


def chunks_reuse_first_offsets(input, offset, mask, *args):
    """Runs the batch in chunks of im2col_step images, every chunk reading the first chunk's offsets:
    wrong only where the batch is larger than im2col_step."""
    geo = check_v3(input, offset, mask, *args)
    step = max(1, min(geo.n, geo.im2col_step))
    outs = [oracle_v3(input[b:b + step], offset[:min(step, geo.n - b)], mask[b:b + step], *args)
            for b in range(0, geo.n, step)]
    return torch.cat(outs) if outs else oracle_v3(input, offset, mask, *args)


def softmax_over_all_groups(input, offset_mask, *args, softmax=False):
    """The softmax flag normalises the mask over every group's points together instead of per group:
    wrong only with the flag and more than one group."""
    geo = check_v4(input, offset_mask, *args, softmax=softmax)
    if not softmax:
        return oracle_v4(input, offset_mask, *args, softmax=softmax)
    g, p = geo.group, geo.points
    blocks = offset_mask[..., : g * p * 3].reshape(geo.n, geo.ho, geo.wo, g, 3 * p)
    joint = torch.softmax(blocks[..., 2 * p:].reshape(geo.n, geo.ho, geo.wo, g * p), -1).reshape(blocks[..., 2 * p:].shape)
    packed = torch.cat([torch.cat([blocks[..., : 2 * p], joint], -1).reshape(geo.n, geo.ho, geo.wo, g * p * 3),
                        offset_mask[..., g * p * 3:]], -1)
    return oracle_v4(input, packed, *args, softmax=False)


# ---- failure class: im2col_step that does not divide the batch (issue 21) ----------------------------


def _remainder_zeroed(out: torch.Tensor, n: int, step: int) -> torch.Tensor:
    step = max(1, min(n, step))
    full = n - n % step
    return torch.cat([out[:full], torch.zeros_like(out[full:])]) if full < n else out


def im2col_remainder_dropped(input, offset, mask, *args):
    """Loops over n // im2col_step whole chunks and forgets the last, partial one (its outputs stay 0):
    right whenever the step divides the batch."""
    geo = check_v3(input, offset, mask, *args)
    return _remainder_zeroed(oracle_v3(input, offset, mask, *args), geo.n, geo.im2col_step)


def im2col_remainder_dropped_v4(input, offset_mask, *args, softmax=False):
    geo = check_v4(input, offset_mask, *args, softmax=softmax)
    return _remainder_zeroed(oracle_v4(input, offset_mask, *args, softmax=softmax), geo.n, geo.im2col_step)


# ---- failure class: float16/bfloat16 overflow (issue 21) -------------------------------------------


def _point_sums_in_float16(value, y, x, weight):
    """aggregate() one point at a time, the running sum over the points kept in float16: past 65504
    it is infinite."""
    total = None
    for p in range(y.shape[-1]):
        term = aggregate(value, y[..., p:p + 1], x[..., p:p + 1], weight[..., p:p + 1]).to(torch.float16)
        total = term if total is None else total + term
    return total.to(value.dtype)


def _half(input) -> bool:
    return input.dtype in (torch.float16, torch.bfloat16)


def point_sums_in_float16(input, offset, mask, *args):
    """Accumulates the sum over the kernel's points in float16 for float16 and bfloat16 inputs (a kernel
    whose accumulator is `half`): float16's partial sums pass 65504, bfloat16's values do already."""
    with mock.patch.object(v3_oracle, "aggregate", _point_sums_in_float16 if _half(input) else aggregate):
        return oracle_v3(input, offset, mask, *args)


def point_sums_in_float16_v4(input, offset_mask, *args, softmax=False):
    with mock.patch.object(v3_oracle, "aggregate", _point_sums_in_float16 if _half(input) else aggregate):
        return oracle_v4(input, offset_mask, *args, softmax=softmax)


for _f in (xy_swapped, padding_axes_swapped, offset_scale_on_offset_only, softmax_twice, group_channels_interleaved,
           remove_center_axes_swapped, centre_not_floored, chunks_reuse_first_offsets, im2col_remainder_dropped,
           point_sums_in_float16):
    _f.dcnbench_op = "dcnv3"
for _f in (xy_swapped_v4, padding_lanes_read, softmax_applied_twice, group_blocks_spread, clears_padding_lanes_in_place,
           softmax_over_all_groups, im2col_remainder_dropped_v4, point_sums_in_float16_v4):
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

# The issue's bugs that the hand-written cases catch with one case or none (the first misses it): the
# covering array must catch each with two cases or more (tests/test_covering_power.py).
ISSUE_BUGS = {
    "remove_center_axes_swapped": ("dcnv3", {"output"}),
    "centre_not_floored": ("dcnv3", {"output"}),
    "chunks_reuse_first_offsets": ("dcnv3", {"output"}),
    "softmax_over_all_groups": ("dcnv4", {"output"}),
}

# Failure class "im2col_step does not divide the batch", one planted bug per op that has the argument.
IM2COL_BUGS = {
    "im2col_remainder_dropped": ("dcnv3", {"output"}),
    "im2col_remainder_dropped_v4": ("dcnv4", {"output"}),
}

# Failure class "float16/bfloat16 overflow", one planted bug per op: caught by the op's two large-values
# cases in both half types, named `overflow:output`, and by nothing else.
OVERFLOW_BUGS = {
    "point_sums_in_float16": ("dcnv3", {"overflow:output"}),
    "point_sums_in_float16_v4": ("dcnv4", {"overflow:output"}),
}
