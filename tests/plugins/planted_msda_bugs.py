"""Planted-bug multi-scale deformable attention kernels: the mistakes its users report, one each,
behind the CUDA function's signature (`dcnbench_op = "ms_deform_attn"`).

Most are the oracle's sampling computed in float64 (half types in float32, rounded once) with one
thing changed; the two gradient bugs wrap the oracle so that its backward gets one thing wrong. `dcnbench verify --impl
tests/plugins/planted_msda_bugs.py:NAME` must fail on every one; BUGS names the quantities that
must fail and tests/test_msda_verify.py measures which cases catch each.
"""

import torch

from dcnbench.ops.ms_deform_attn.contract import check_call
from dcnbench.ops.ms_deform_attn.oracle import ms_deform_attn as oracle
from dcnbench.ops.ms_deform_attn.oracle import sample_level

OP = "ms_deform_attn"


def _formulation(value, shapes, starts, loc, attn, step, *, align_corners=False, clamp=False, swap_hw=False,
                 start_shift=0, drop_partial_chunk=False, accumulate=None):
    """The oracle's sampling (ops/ms_deform_attn/oracle.py) with the planted changes, one point at a
    time; `accumulate` is the dtype the running sum over levels and points is kept in (None: the
    compute dtype, float64, or float32 for half inputs)."""
    geo = check_call(value, shapes, starts, loc, attn, step)
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    v, lc, at = value.to(compute), loc.to(compute), attn.to(compute)
    n, s, m, d = value.shape
    rows = v.reshape(n * s * m, d)
    first = torch.arange(n).view(n, 1, 1, 1) * s * m + torch.arange(m).view(1, 1, m, 1)
    total = None
    for level, ((h, w), start) in enumerate(zip(geo.levels, geo.start_index)):
        where = lc[:, :, :, level]
        size = torch.tensor([w, h], dtype=compute)
        if align_corners:  # pixel = loc·(size − 1), written as the location that samples it
            where = (where * (size - 1) + 0.5) / size
        if clamp:  # a coordinate outside [0, size − 1] reads the border pixel at full weight
            where = ((where * size - 0.5).clamp(min=0).minimum(size - 1) + 0.5) / size
        if swap_hw:
            h, w = w, h
        start = max(start + (start_shift if level else 0), 0)
        for p in range(geo.points):
            term = sample_level(rows, first, start, h, w, m, where[:, :, :, p:p + 1], at[:, :, :, level, p:p + 1])
            term = term.to(accumulate or compute)
            total = term if total is None else total + term
    out = total.to(compute).reshape(geo.output_shape)
    if drop_partial_chunk and n % step and n > step:
        out = torch.cat([out[:n - n % step], torch.zeros_like(out[n - n % step:])])
    return out.to(value.dtype)


def align_corners_true(value, shapes, starts, loc, attn, step):
    """grid_sample with align_corners=True: pixel x·(W − 1) instead of x·W − 0.5 (the map's corners
    are its outer pixels' centres)."""
    return _formulation(value, shapes, starts, loc, attn, step, align_corners=True)


def level_hw_swapped(value, shapes, starts, loc, attn, step):
    """Reads each level's (H, W) row as (W, H): square levels are unaffected."""
    return _formulation(value, shapes, starts, loc, attn, step, swap_hw=True)


def level_start_off_by_one(value, shapes, starts, loc, attn, step):
    """Starts every level after the first one position early (the previous level's last pixel)."""
    return _formulation(value, shapes, starts, loc, attn, step, start_shift=-1)


def border_clamped(value, shapes, starts, loc, attn, step):
    """Clamps a corner outside the map to the border pixel (grid_sample's padding_mode="border")
    instead of reading zero."""
    return _formulation(value, shapes, starts, loc, attn, step, clamp=True)


def last_partial_chunk_dropped(value, shapes, starts, loc, attn, step):
    """Runs the batch in chunks of im2col_step and drops the last, partial one (N % step images)."""
    return _formulation(value, shapes, starts, loc, attn, step, drop_partial_chunk=True)


def half_accumulation(value, shapes, starts, loc, attn, step):
    """Keeps the running sum over levels and points in float16 for float16 inputs (as a kernel that
    accumulates in scalar_t): partial sums past 65504 become infinite."""
    return _formulation(value, shapes, starts, loc, attn, step,
                        accumulate=torch.float16 if value.dtype == torch.float16 else None)


def last_point_weight_grad_dropped(value, shapes, starts, loc, attn, step):
    """The attention weight of each level's last point gets no gradient (a backward loop that stops
    one point short)."""
    held = torch.cat([attn[..., :-1], attn[..., -1:].detach()], dim=-1)
    return oracle(value, shapes, starts, loc, held, step)


class _OverwrittenValueGrad(torch.autograd.Function):
    """The oracle, whose backward writes each sample's value gradient with index_copy (the last write
    to a pixel wins) instead of adding it."""

    @staticmethod
    def forward(ctx, value, shapes, starts, loc, attn, step):
        ctx.save_for_backward(value, shapes, starts, loc, attn)
        ctx.step = step
        return oracle(value, shapes, starts, loc, attn, step)

    @staticmethod
    def backward(ctx, grad):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        with torch.enable_grad():
            lc, at = loc.detach().requires_grad_(), attn.detach().requires_grad_()
            out = oracle(value.detach(), shapes, starts, lc, at, ctx.step)
            g_loc, g_attn = torch.autograd.grad(out, (lc, at), grad)
        return _overwritten(value, shapes, starts, loc, attn, grad, ctx.step), None, None, g_loc, g_attn, None


def _overwritten(value, shapes, starts, loc, attn, grad, step):
    geo = check_call(value, shapes, starts, loc, attn, step)
    n, s, m, d = value.shape
    rows = torch.zeros(n * s * m, d, dtype=value.dtype)
    go = grad.reshape(n, geo.queries, m, 1, d)
    image = torch.arange(n).view(n, 1, 1, 1)
    head = torch.arange(m).view(1, 1, m, 1)
    for level, ((h, w), start) in enumerate(zip(geo.levels, geo.start_index)):
        x = loc[:, :, :, level, :, 0] * w - 0.5
        y = loc[:, :, :, level, :, 1] * h - 0.5
        x0, y0 = torch.floor(x), torch.floor(y)
        for dy in (0, 1):
            for dx in (0, 1):
                yi, xi = y0 + dy, x0 + dx
                wgt = (1 - (y - yi).abs()) * (1 - (x - xi).abs()) * attn[:, :, :, level]
                inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
                index = ((image * s + start + (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()) * m + head)
                contribution = torch.where(inside, wgt, 0).unsqueeze(-1) * go
                keep = inside.flatten()
                rows.index_copy_(0, index.flatten()[keep], contribution.reshape(-1, d)[keep])
    return rows.reshape(value.shape)


def value_grad_overwritten(value, shapes, starts, loc, attn, step):
    """A value gradient that overwrites instead of accumulating where two samples share a pixel."""
    return _OverwrittenValueGrad.apply(value, shapes, starts, loc, attn, step)


for _bug in (align_corners_true, level_hw_swapped, level_start_off_by_one, border_clamped, last_partial_chunk_dropped,
             half_accumulation, last_point_weight_grad_dropped, value_grad_overwritten):
    _bug.dcnbench_op = OP

# bug -> the quantities that must fail (on some case of the default suite).
BUGS = {
    "align_corners_true": {"output"},
    "level_hw_swapped": {"output"},
    "level_start_off_by_one": {"output"},
    "border_clamped": {"output"},
    "last_partial_chunk_dropped": {"output"},
    "half_accumulation": {"overflow:output"},  # infinite where the float64 reference is finite and in range
    "last_point_weight_grad_dropped": {"grad_attention_weights"},
    "value_grad_overwritten": {"grad_value"},
}
