"""Multi-scale deformable attention in pure PyTorch: the float64 oracle (and, as the `pytorch`
backend, a usable kernel).

Written from the semantics in contract.py as the direct bilinear formula, not through grid_sample
(references.py holds that second formulation; the `ms-grid-sample-identity*` cases check the two
agree). Vectorised over batch, queries, heads, points and channels; the Python loops are over the
levels and the four bilinear corners (and over batch chunks of im2col_step images, which bound
memory and change no value). Autograd gives every gradient.

Non-finite values: a corner outside the level's map is never read (an exact 0 stands in for it,
whatever the clamped pixel holds), an in-map corner of the point's cell is read even at weight 0;
a point whose location is not finite reads nothing, makes its head's output NaN, and its location
and weight gradients NaN (ops/sampling.py: nan_if_not_finite).
"""

from __future__ import annotations

import torch

from dcnbench.ops.ms_deform_attn.contract import MsdaGeometry, check_call
from dcnbench.ops.sampling import compute_dtype, nan_if_not_finite


def pixel_coordinates(loc: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) pixel coordinates of normalised (x, y) locations (..., 2) on an H x W map:
    grid_sample's align_corners=False, so 0 and 1 are the outer edges and pixel centres sit at
    (i + 0.5) / size."""
    return loc[..., 1] * height - 0.5, loc[..., 0] * width - 0.5


def sample_level(rows: torch.Tensor, first: torch.Tensor, start: int, height: int, width: int, heads: int,
                 loc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_p weight · bilinear(value) over one level's points.

    rows (N·S·M, D): value as rows of D channels, row (n·S + s)·M + m; first (n, 1, M, 1): the row of
    position 0 of each (image, head); loc (n, Lq, M, P, 2); weight (n, Lq, M, P) -> (n, Lq, M, D).
    """
    y, x = pixel_coordinates(loc, height, width)
    finite = torch.isfinite(y) & torch.isfinite(x)
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    ys, xs = torch.where(finite, y, zero), torch.where(finite, x, zero)  # no gradient reaches a bad point here
    y0, x0 = torch.floor(ys).detach(), torch.floor(xs).detach()
    ly, lx = ys - y0, xs - x0
    out = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yi, xi = y0 + dy, x0 + dx
            read = finite & (yi >= 0) & (yi <= height - 1) & (xi >= 0) & (xi <= width - 1)
            pixel = start + (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long()
            # index_select's backward (index_add) is deterministic on the CPU, advanced indexing's is not.
            index = first + pixel * heads
            picked = rows.index_select(0, index.reshape(-1)).reshape(*index.shape, rows.shape[1])
            v = torch.where(read.unsqueeze(-1), picked, zero.to(rows.dtype))  # an unread corner is an exact 0
            corner_weight, _ = nan_if_not_finite(wy * wx, y, x)
            term = torch.einsum("nqmp,nqmpd->nqmd", corner_weight * weight, v)
            out = term if out is None else out + term
    return out


def core(value: torch.Tensor, loc: torch.Tensor, weights: torch.Tensor, geo: MsdaGeometry) -> torch.Tensor:
    """The op on validated tensors in the compute dtype -> (N, Lq, M·D)."""
    n, s, m, d = value.shape
    step = max(1, min(geo.n, geo.im2col_step))
    chunks = []
    for b0 in range(0, max(geo.n, 1), step):  # bounds memory only: no value depends on the chunking
        v, lc, wt = value[b0:b0 + step], loc[b0:b0 + step], weights[b0:b0 + step]
        b = v.shape[0]
        rows = v.reshape(b * s * m, d)
        first = (torch.arange(b, device=v.device).view(b, 1, 1, 1) * s * m
                 + torch.arange(m, device=v.device).view(1, 1, m, 1))
        out = torch.zeros(b, geo.queries, m, d, dtype=v.dtype, device=v.device)
        for level, ((h, w), start) in enumerate(zip(geo.levels, geo.start_index)):
            out = out + sample_level(rows, first, start, h, w, m, lc[:, :, :, level], wt[:, :, :, level])
        chunks.append(out)
    return torch.cat(chunks).reshape(geo.output_shape)


def ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                   im2col_step):
    geo = check_call(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                     im2col_step)
    compute = compute_dtype(value.dtype)
    out = core(value.to(compute), sampling_locations.to(compute), attention_weights.to(compute), geo)
    return out.to(value.dtype)
