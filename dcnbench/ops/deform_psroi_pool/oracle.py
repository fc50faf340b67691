"""deform_psroi_pool in pure PyTorch: the float64 oracle (and part of the `pytorch` backend).

Against MXNet 1.9.1 in float64 it agrees to ~1e-15 in output and both gradients.
"""

from __future__ import annotations

import torch

from dcnbench.ops.deform_psroi_pool.contract import check_call
from dcnbench.ops.deform_psroi_pool.points import psroi_bins, psroi_pool_samples
from dcnbench.ops.sampling import compute_dtype, nan_if_not_finite, pool_rows


def _clamp(p: torch.Tensor, last: int) -> torch.Tensor:
    """p clamped to [0, last], a clamped value written p * 0 + edge: its derivative is 0 times what it
    multiplies, so (as in the kernels' arithmetic) a non-finite pixel it reads makes it NaN."""
    return torch.where(p < 0, p * 0, torch.where(p > last, p * 0 + last, p))


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                      sample_per_part=1, trans_std=0.0, no_trans=False):
    geo = check_call(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                     sample_per_part, trans_std, no_trans)
    out_dtype = input.dtype
    compute = compute_dtype(out_dtype)
    g, p, d, h, w, k = geo.group_size, geo.pooled_size, geo.output_dim, geo.h, geo.w, geo.rois
    if k == 0:  # no RoI: an empty output, still connected to the input for autograd
        return (input.sum() * 0).expand(0, d, p, p)
    classes = 1 if no_trans else geo.classes
    # Input channel (c * g + gh) * g + gw: a (N, g*g, HW, output_dim) table per channel group.
    table = input.to(compute).reshape(geo.n, d, g * g, h * w).permute(0, 2, 3, 1)
    rois = rois.detach().to(compute)
    trans = None if no_trans else trans.to(compute)
    index, weight, reads, count = [], [], [], None
    for pt in psroi_pool_samples(rois, trans, geo, no_trans):
        # MXNet skips a point outside [-0.5, size-0.5]; one that is not finite is kept, reads nothing
        # and makes its bin NaN (as the ext kernels do).
        finite = torch.isfinite(pt.x) & torch.isfinite(pt.y)
        kept = ~((pt.x < -0.5) | (pt.x > w - 0.5) | (pt.y < -0.5) | (pt.y > h - 0.5))
        keep = (kept | ~finite).to(compute)
        x, y = _clamp(torch.nan_to_num(pt.x), w - 1), _clamp(torch.nan_to_num(pt.y), h - 1)
        x0, y0 = torch.floor(x), torch.floor(y)
        dx, dy = x - x0, y - y0
        for yi, wy in ((y0, 1 - dy), (torch.ceil(y), dy)):  # MXNet's corners: floor and ceil
            for xi, wx in ((x0, 1 - dx), (torch.ceil(x), dx)):
                index.append(yi.long() * w + xi.long())
                wt, bad = nan_if_not_finite(wy * wx * keep, pt.y, pt.x)
                weight.append(wt)
                reads.append(kept & ~bad)
        count = keep if count is None else count + keep
    index = torch.stack(index, dim=-1).reshape(k, classes, p * p, -1)
    weight = (torch.stack(weight, dim=-1) / count.clamp(min=1).unsqueeze(-1)).reshape(k, classes, p * p, -1)
    reads = torch.stack(reads, dim=-1).reshape(k, classes, p * p, -1)
    _, gp = psroi_bins(geo, input.device)
    group = (gp[:, None] * g + gp[None, :]).reshape(1, p * p).expand(k, p * p).reshape(-1)
    image = rois[:, 0].long().reshape(-1, 1).expand(k, p * p).reshape(-1)
    per_class = d // classes
    out = []
    for cls in range(classes):  # each class's bins read only its own output channels' maps
        columns = table[..., cls * per_class:(cls + 1) * per_class]
        rows = pool_rows(index[:, cls].flatten(0, 1), weight[:, cls].flatten(0, 1), reads[:, cls].flatten(0, 1), image,
                         group, columns)  # (K * p * p, d / classes)
        out.append(rows.reshape(k, p, p, per_class).permute(0, 3, 1, 2))
    return torch.cat(out, dim=1).contiguous().to(out_dtype)
