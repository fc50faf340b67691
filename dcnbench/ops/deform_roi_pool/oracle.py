"""deform_roi_pool in pure PyTorch: the float64 oracle (and part of the `pytorch` backend).

Each sampling point's corner indices and weights are computed once and shared by every channel
that reads the same point: per image, the bins' weights are scattered into a (bins x pixels)
matrix and multiplied with the map (`sampling.pool_rows`).
"""

from __future__ import annotations

import torch

from dcnbench.ops.deform_roi_pool.contract import check_call
from dcnbench.ops.deform_roi_pool.points import roi_pool_samples
from dcnbench.ops.sampling import compute_dtype, nan_if_not_finite, pool_rows


def roialign_corners(y, x, h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """mmcv's (RoIAlign's) bilinear read at (y, x): four (pixel index y*w+x, weight, read) triples.

    0 outside [-1, size]; a coordinate in [-1, 0] reads as 0 and one past size-1 as size-1
    (clamped coordinates are constants, so they carry no offset gradient). `read`: the point is
    inside (then all four corners, clamped into the map, are read); a point that is not finite reads
    nothing and has NaN weights.
    """
    inside = (y >= -1) & (y <= h) & (x >= -1) & (x <= w)
    valid = inside.to(y.dtype)
    axes = []
    for p, size in ((y, h), (x, w)):
        # A clamped coordinate is a constant, written p * 0 + edge: its derivative is 0 times what it
        # multiplies, so (as in the kernels' arithmetic) a non-finite pixel it reads makes it NaN.
        p = torch.where(p <= 0, p * 0, p)
        low = torch.floor(p)
        high_edge = low >= size - 1
        last = torch.full_like(p, size - 1)
        p, low = torch.where(high_edge, p * 0 + (size - 1), p), torch.where(high_edge, last, low)
        high = torch.where(high_edge, last, low + 1)
        frac = p - low
        axes.append(((torch.nan_to_num(low).long().clamp(0, size - 1), 1 - frac),
                     (torch.nan_to_num(high).long().clamp(0, size - 1), frac)))
    corners = []
    for yi, wy in axes[0]:
        for xi, wx in axes[1]:
            weight, bad = nan_if_not_finite(wy * wx * valid, y, x)
            corners.append((yi * w + xi, weight, inside & ~bad))
    return corners


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    geo = check_call(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    out_dtype = input.dtype
    compute = compute_dtype(out_dtype)
    k, c = geo.rois, geo.c
    bins = geo.output_size[0] * geo.output_size[1]
    table = input.to(compute).reshape(geo.n, 1, c, geo.h * geo.w).transpose(2, 3)
    rois = rois.detach().to(compute)
    offset = None if offset is None else offset.to(compute)
    points, count = roi_pool_samples(rois, offset, geo)
    index, weight, reads = [], [], []
    for pt in points:
        for pixel, wt, read in roialign_corners(pt.y, pt.x, geo.h, geo.w):
            index.append(pixel)
            # A sample past the adaptive grid of its RoI is no sample: weight exactly 0, never NaN.
            weight.append(wt if pt.active is None else torch.where(pt.active, wt, 0))
            reads.append(read if pt.active is None else read & pt.active)
    if not index:  # no RoI has a sample: zeros, still connected to the input for autograd
        return (table.sum() * 0).expand(k, c, *geo.output_size).to(out_dtype)
    index = torch.stack(index, dim=-1).reshape(k * bins, -1)
    weight = (torch.stack(weight, dim=-1) / count.reshape(-1, 1, 1, 1)).reshape(k * bins, -1)
    reads = torch.stack(reads, dim=-1).reshape(k * bins, -1)
    image = rois[:, 0].long().repeat_interleave(bins)
    out = pool_rows(index, weight, reads, image, torch.zeros_like(image), table)
    return out.reshape(k, *geo.output_size, c).permute(0, 3, 1, 2).contiguous().to(out_dtype)
