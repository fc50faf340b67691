"""Where deform_roi_pool samples (shared by its oracle and its case generator's kink check)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dcnbench.ops.deform_roi_pool.contract import RoIPoolGeometry
from dcnbench.ops.rois import Samples


def roi_pool_samples(rois: torch.Tensor, offset: torch.Tensor | None,
                     geo: RoIPoolGeometry) -> tuple[Iterator[Samples], torch.Tensor]:
    """mmcv's sampling points, one sample index at a time, and each RoI's divisor (K,)."""
    s, (ph, pw) = geo.spatial_scale, geo.output_size
    x1, y1 = rois[:, 1] * s - 0.5, rois[:, 2] * s - 0.5
    roi_w, roi_h = rois[:, 3] * s - 0.5 - x1, rois[:, 4] * s - 0.5 - y1
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if geo.sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(roi_h, geo.sampling_ratio, dtype=torch.long)
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).long(), torch.ceil(roi_w / pw).long()
    count = torch.clamp(grid_h * grid_w, min=1).to(rois.dtype)
    start_y, start_x = y1[:, None, None], x1[:, None, None]
    if offset is not None:
        start_x = start_x + geo.gamma * roi_w[:, None, None] * offset[:, 0]
        start_y = start_y + geo.gamma * roi_h[:, None, None] * offset[:, 1]
    iy_base = torch.arange(ph, dtype=rois.dtype, device=rois.device)[None, :, None] * bin_h[:, None, None]
    ix_base = torch.arange(pw, dtype=rois.dtype, device=rois.device)[None, None, :] * bin_w[:, None, None]
    safe_h, safe_w = grid_h.clamp(min=1).to(rois.dtype), grid_w.clamp(min=1).to(rois.dtype)
    most_h = int(grid_h.max()) if grid_h.numel() else 0
    most_w = int(grid_w.max()) if grid_w.numel() else 0

    def points() -> Iterator[Samples]:
        for iy in range(most_h):
            y = start_y + iy_base + ((iy + 0.5) * bin_h / safe_h)[:, None, None]
            for ix in range(most_w):
                x = start_x + ix_base + ((ix + 0.5) * bin_w / safe_w)[:, None, None]
                active = None if geo.sampling_ratio > 0 else ((iy < grid_h) & (ix < grid_w))[:, None, None]
                yield Samples(*torch.broadcast_tensors(y, x), active)

    return points(), count
