"""deform_psroi_pool in pure PyTorch: the float64 oracle (and part of the `pytorch` backend).

Against MXNet 1.9.1 in float64 it agrees to ~1e-15 in output and both gradients.
"""

from __future__ import annotations

import torch

from dcnbench.ops.deform_psroi_pool.contract import check_call
from dcnbench.ops.deform_psroi_pool.points import psroi_bins, psroi_pool_samples
from dcnbench.ops.sampling import compute_dtype, pool_rows


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
    index, weight, count = [], [], None
    for pt in psroi_pool_samples(rois, trans, geo, no_trans):
        keep = (~((pt.x < -0.5) | (pt.x > w - 0.5) | (pt.y < -0.5) | (pt.y > h - 0.5))).to(compute)
        x, y = pt.x.clamp(0, w - 1), pt.y.clamp(0, h - 1)
        x0, y0 = torch.floor(x), torch.floor(y)
        dx, dy = x - x0, y - y0
        for yi, wy in ((y0, 1 - dy), (torch.ceil(y), dy)):  # MXNet's corners: floor and ceil
            for xi, wx in ((x0, 1 - dx), (torch.ceil(x), dx)):
                index.append(yi.long() * w + xi.long())
                weight.append(wy * wx * keep)
        count = keep if count is None else count + keep
    rows = k * classes * p * p
    index = torch.stack(index, dim=-1).reshape(rows, -1)
    weight = (torch.stack(weight, dim=-1) / count.clamp(min=1).unsqueeze(-1)).reshape(rows, -1)
    _, gp = psroi_bins(geo, input.device)
    group = (gp[:, None] * g + gp[None, :]).expand(k, classes, p, p).reshape(-1)
    image = rois[:, 0].long().reshape(-1, 1, 1, 1).expand(k, classes, p, p).reshape(-1)
    out = pool_rows(index, weight, image, group, table)  # (rows, d)
    # Bin rows are per offset class; output channel c belongs to class c // (d / classes).
    out = out.reshape(k, classes, p, p, classes, d // classes).diagonal(dim1=1, dim2=4)  # (K, p, p, d/cls, cls)
    return out.permute(0, 4, 3, 1, 2).reshape(k, d, p, p).contiguous().to(out_dtype)
