"""Planted-bug kernels: torchvision's deform_conv2d with one classic mistake each.

`dcnbench verify --impl tests/plugins/planted_bugs.py:NAME` must fail on every one of them and
name the quantity that gives it away. BUGS maps each kernel to the quantities that must fail.
"""

import torch
from torchvision.ops import deform_conv2d as tv

from dcnbench.ops.contract import pair
from dcnbench.ops.deform_conv2d.contract import geometry_of


def _taps(geo, offset):
    """Offset as (N, G, kh, kw, 2, Ho, Wo)."""
    return offset.reshape(geo.n, geo.offset_groups, geo.kh, geo.kw, 2, geo.ho, geo.wo)


def _base(geo, dtype, device):
    """Integer sampling grid before offsets: (kh, kw, 2, Ho, Wo)."""
    i = torch.arange(geo.kh, dtype=dtype, device=device)[:, None, None, None]
    j = torch.arange(geo.kw, dtype=dtype, device=device)[None, :, None, None]
    y = torch.arange(geo.ho, dtype=dtype, device=device)[None, None, :, None]
    x = torch.arange(geo.wo, dtype=dtype, device=device)[None, None, None, :]
    by = (y * geo.stride[0] - geo.padding[0] + i * geo.dilation[0]).expand(geo.kh, geo.kw, geo.ho, geo.wo)
    bx = (x * geo.stride[1] - geo.padding[1] + j * geo.dilation[1]).expand(geo.kh, geo.kw, geo.ho, geo.wo)
    return torch.stack([by, bx], dim=2)


def swapped_offsets(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Reads (dx, dy) where the layout holds (dy, dx)."""
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    swapped = _taps(geo, offset).flip(4).reshape(offset.shape)
    return tv(input, swapped, weight, bias, stride, padding, dilation, mask)


def missing_offset_grad(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Forgets the offset gradient (treats offsets as constants)."""
    return tv(input, offset.detach(), weight, bias, stride, padding, dilation, mask)


def missing_mask_grad(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    return tv(input, offset, weight, bias, stride, padding, dilation, None if mask is None else mask.detach())


def _scaled_grad(t, factor):
    t = t * 1
    if t.requires_grad:
        t.register_hook(lambda g: g * factor)
    return t


def weight_grad_off_by_0_1_percent(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    return tv(input, offset, _scaled_grad(weight, 1.001), bias, stride, padding, dilation, mask)


def mask_grad_doubled(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    return tv(input, offset, weight, bias, stride, padding, dilation, None if mask is None else _scaled_grad(mask, 2.0))


def half_pixel_shift(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Samples pixel centres at +0.5 (an align_corners-style mix-up)."""
    return tv(input, offset + 0.5, weight, bias, stride, padding, dilation, mask)


def taps_column_major(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Walks the taps' offsets and masks column-major while the layout is row-major."""
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    n, g, kh, kw, ho, wo = geo.n, geo.offset_groups, geo.kh, geo.kw, geo.ho, geo.wo
    off = offset.reshape(n, g, kw, kh, 2, ho, wo).transpose(2, 3).reshape(offset.shape)
    m = None if mask is None else mask.reshape(n, g, kw, kh, ho, wo).transpose(2, 3).reshape(mask.shape)
    return tv(input, off, weight, bias, stride, padding, dilation, m)


def offset_groups_interleaved(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Puts channel c in offset group c % G instead of c // (C/G) (when groups == 1)."""
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    if geo.groups != 1 or geo.offset_groups == 1:
        return tv(input, offset, weight, bias, stride, padding, dilation, mask)
    c = torch.arange(geo.c)
    perm = torch.argsort((c % geo.offset_groups) * geo.c + c)
    return tv(input[:, perm], offset, weight[:, perm], bias, stride, padding, dilation, mask)


def dilation_ignored(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Keeps the dilated output size but samples the undilated grid."""
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    dil = pair(dilation)
    i = torch.arange(geo.kh, dtype=offset.dtype, device=offset.device)[:, None] * (dil[0] - 1)
    j = torch.arange(geo.kw, dtype=offset.dtype, device=offset.device)[None, :] * (dil[1] - 1)
    corr = torch.stack([i.expand(geo.kh, geo.kw), j.expand(geo.kh, geo.kw)], dim=2)[None, None, :, :, :, None, None]
    off = (_taps(geo, offset) - corr).reshape(offset.shape)
    return tv(input, off, weight, bias, stride, padding, dilation, mask)


def border_clamped(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Clamps sampling points into the map (replicate padding) instead of fading to zero."""
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    base = _base(geo, offset.dtype, offset.device)[None, None]
    p = base + _taps(geo, offset)
    hi = torch.tensor([geo.h - 1, geo.w - 1], dtype=offset.dtype, device=offset.device)[:, None, None]
    p = torch.minimum(torch.clamp(p, min=0), hi)
    return tv(input, (p - base).reshape(offset.shape), weight, bias, stride, padding, dilation, mask)


def half_precision_accumulation(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Computes in float16 whatever it was given."""
    h = torch.float16
    out = tv(input.to(h), offset.to(h), weight.to(h), None if bias is None else bias.to(h), stride, padding, dilation,
             None if mask is None else mask.to(h))
    return out.to(input.dtype)


def nondeterministic_backward(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Perturbs the input gradient by a few ulps at random, as unordered atomic adds do."""
    x = input * 1
    if x.requires_grad:
        x.register_hook(lambda g: g * (1 + 4 * torch.finfo(g.dtype).eps * torch.randn_like(g)))
    return tv(x, offset, weight, bias, stride, padding, dilation, mask)


def mutates_offset(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Sanitises the caller's offsets in place (behind autograd's back)."""
    offset.data.clamp_(-1.0, 1.0)
    return tv(input, offset, weight, bias, stride, padding, dilation, mask)


# kernel -> quantities of which at least one must fail (any of them is acceptable proof).
def _as_if_contiguous(t: torch.Tensor) -> torch.Tensor:
    """What a kernel sees when it takes t's storage as a contiguous array of t's shape: the first
    t.numel() elements of memory (zeros past the end of the storage, where C would read garbage)."""
    raw = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage())
    flat = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    have = max(0, min(t.numel(), raw.numel() - t.storage_offset()))
    flat[:have] = raw[t.storage_offset():t.storage_offset() + have]
    return flat.view(t.shape)


class _ReadsGradAsContiguous(torch.autograd.Function):
    """Identity forward; the backward reads its incoming gradient's memory as if contiguous
    (vision#2560's bug class: right for a fresh gradient, wrong for expanded or permuted ones)."""

    @staticmethod
    def forward(ctx, out):
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return _as_if_contiguous(grad)


def grad_output_read_as_contiguous(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                                   mask=None):
    return _ReadsGradAsContiguous.apply(tv(input, offset, weight, bias, stride, padding, dilation, mask))


def last_column_chunk_off_by_one(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                                 mask=None):
    """Runs the batch in column chunks of 2^23 elements, like ext's CPU kernel, but the last partial
    chunk reads its offsets one image early: right for every batch that fits one chunk."""
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    chunk = max(1, (1 << 23) // max(1, geo.c * geo.taps * geo.ho * geo.wo))
    outs = []
    for n0 in range(0, geo.n, chunk):
        b = min(chunk, geo.n - n0)
        at = n0 - 1 if n0 and b < chunk else n0
        outs.append(tv(input[n0:n0 + b], offset[at:at + b], weight, bias, stride, padding, dilation,
                       None if mask is None else mask[n0:n0 + b]))
    return torch.cat(outs) if outs else tv(input, offset, weight, bias, stride, padding, dilation, mask)


def serial_path_drops_bias(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """A separate single-thread code path that forgets the bias: right under the default thread
    count, wrong on a one-core machine (found only by `verify --knobs`)."""
    drop = torch.get_num_threads() == 1 and bias is not None
    return tv(input, offset, weight, None if drop else bias, stride, padding, dilation, mask)


def corner_stride_w3_dilation_h2(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                                 mask=None):
    """Right everywhere except one corner of the parameter space no suite case sits in (a
    specialised path for horizontal stride 3 with vertical dilation 2 that shifts x by half a pixel);
    only `verify --fuzz` finds it."""
    if pair(stride)[1] == 3 and pair(dilation)[0] == 2:
        geo = geometry_of(input, offset, weight, stride, padding, dilation)
        shift = torch.zeros_like(_taps(geo, offset))
        shift[:, :, :, :, 1] = 0.5
        offset = offset + shift.reshape(offset.shape)
    return tv(input, offset, weight, bias, stride, padding, dilation, mask)


def out_of_map_corner_reads_pixel_zero(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                                       mask=None):
    """ext's leak before the GPU issue: a bilinear corner outside the map reads pixel (0, 0) with
    weight 0, so a NaN or Inf there turns every output with such a corner into NaN (0 x Inf). Right
    on every finite input."""
    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    out = tv(input, offset, weight, bias, stride, padding, dilation, mask)
    p = _base(geo, offset.dtype, offset.device) + _taps(geo, offset)  # (N, G, kh, kw, 2, Ho, Wo)
    y, x = p[:, :, :, :, 0], p[:, :, :, :, 1]
    corner_off_map = ((y < 0) | (y >= geo.h - 1) | (x < 0) | (x >= geo.w - 1)).flatten(1, 3).any(1)  # (N, Ho, Wo)
    read = 0 * input[:, :, :1, :1].sum(1, keepdim=True)  # weight 0 times pixel (0, 0)
    return out + torch.where(corner_off_map[:, None], read, torch.zeros_like(read))


def channel_sums_in_float16(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """A float16 kernel keeping its running sum over the input channels in float16 (each channel's
    share computed right, by the oracle): right until a partial sum passes 65504 (failure class:
    float16 overflow; the large-values cases)."""
    from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as oracle

    geo = geometry_of(input, offset, weight, stride, padding, dilation)
    if input.dtype != torch.float16 or geo.groups != 1 or geo.offset_groups != 1:
        return oracle(input, offset, weight, bias, stride, padding, dilation, mask)
    acc = None
    for c in range(geo.c):
        part = oracle(input[:, c:c + 1], offset, weight[:, c:c + 1], None, stride, padding, dilation, mask)
        acc = part if acc is None else acc + part
    return acc if bias is None else acc + bias.view(1, -1, 1, 1)


def bfloat16_through_float16(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Runs bfloat16 through a (correct) float16 kernel: right for values float16 holds, Inf past 65504."""
    from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as oracle

    if input.dtype != torch.bfloat16:
        return oracle(input, offset, weight, bias, stride, padding, dilation, mask)
    h = torch.float16
    out = oracle(input.to(h), offset.to(h), weight.to(h), None if bias is None else bias.to(h), stride, padding, dilation,
                 None if mask is None else mask.to(h))
    return out.to(input.dtype)


# Failure class "float16/bfloat16 overflow" (issue 21): caught by the large-values cases only, as
# `overflow:output` (Inf where the float64 reference is finite and within the dtype's range).
OVERFLOW_BUGS = {"channel_sums_in_float16": {"overflow:output"}, "bfloat16_through_float16": {"overflow:output"}}
channel_sums_in_float16.dcnbench_dtypes = ("float64", "float32", "float16")
bfloat16_through_float16.dcnbench_dtypes = ("float64", "float32", "float16", "bfloat16")

corner_stride_w3_dilation_h2.dcnbench_dtypes = ("float64", "float32", "float16")

# Bugs that only `verify --knobs` finds (the default suite passes them).
KNOB_BUGS = {"serial_path_drops_bias": {"output~threads=1", "grad_bias~threads=1"}}
serial_path_drops_bias.dcnbench_dtypes = ("float64", "float32", "float16")

BUGS = {
    "swapped_offsets": {"output"},
    "missing_offset_grad": {"grad_offset"},
    "missing_mask_grad": {"grad_mask"},
    "weight_grad_off_by_0_1_percent": {"grad_weight"},
    "mask_grad_doubled": {"grad_mask"},
    "half_pixel_shift": {"output"},
    "taps_column_major": {"output"},
    "offset_groups_interleaved": {"output"},
    "dilation_ignored": {"output"},
    "border_clamped": {"output"},
    "half_precision_accumulation": {"output"},
    "nondeterministic_backward": set(),  # caught as its own status, not a quantity
    "mutates_offset": {"unchanged:offset"},
    "last_column_chunk_off_by_one": {"output"},
    "grad_output_read_as_contiguous": {"grad_input@expanded", "grad_input@transposed", "grad_input@channels_last"},
    "out_of_map_corner_reads_pixel_zero": {"nonfinite:output"},
}

# torchvision has no bfloat16 kernel: declare what the wrapped kernels run, so bfloat16 cases are
# `unsupported` rather than errors.
for _name in BUGS:
    globals()[_name].dcnbench_dtypes = ("float64", "float32", "float16")
