"""Where deform_psroi_pool samples (shared by its oracle, its case generator's kink check and its
torchvision identity)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dcnbench.ops.deform_psroi_pool.contract import PSRoIPoolGeometry
from dcnbench.ops.rois import Samples, c_round


def psroi_bins(geo: PSRoIPoolGeometry, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(part cell, position-sensitive group) index of each bin row/column: (pooled,) each."""
    p = torch.arange(geo.pooled_size, device=device)
    part = p * geo.part_size // geo.pooled_size
    group = torch.clamp(p * geo.group_size // geo.pooled_size, 0, geo.group_size - 1)
    return part, group


def psroi_box(rois: torch.Tensor, spatial_scale: float) -> tuple[torch.Tensor, ...]:
    """MXNet's RoI on the map: (x1, y1, width, height), (K,) each; rounded, one pixel added, >= 0.1."""
    s = spatial_scale
    x1 = c_round(rois[:, 1]) * s - 0.5
    y1 = c_round(rois[:, 2]) * s - 0.5
    roi_w = torch.clamp((c_round(rois[:, 3]) + 1.0) * s - 0.5 - x1, min=0.1)
    roi_h = torch.clamp((c_round(rois[:, 4]) + 1.0) * s - 0.5 - y1, min=0.1)
    return x1, y1, roi_w, roi_h


def psroi_pool_samples(rois: torch.Tensor, trans: torch.Tensor | None, geo: PSRoIPoolGeometry,
                       no_trans: bool) -> Iterator[Samples]:
    """MXNet's sampling points (before skipping and clamping), (K, classes, pooled, pooled) each."""
    p, spp = geo.pooled_size, geo.sample_per_part
    x1, y1, roi_w, roi_h = psroi_box(rois, geo.spatial_scale)
    bin_w, bin_h = roi_w / p, roi_h / p
    sub_w, sub_h = bin_w / spp, bin_h / spp
    idx = torch.arange(p, dtype=rois.dtype, device=rois.device)
    wstart = idx[None, None, None, :] * bin_w[:, None, None, None] + x1[:, None, None, None]
    hstart = idx[None, None, :, None] * bin_h[:, None, None, None] + y1[:, None, None, None]
    if not no_trans and trans is not None:
        part, _ = psroi_bins(geo, rois.device)
        k, classes = trans.shape[0], trans.shape[1] // 2
        cells = trans.reshape(k, classes, 2, geo.part_size, geo.part_size)[:, :, :, part][:, :, :, :, part]
        wstart = wstart + cells[:, :, 0] * geo.trans_std * roi_w[:, None, None, None]
        hstart = hstart + cells[:, :, 1] * geo.trans_std * roi_h[:, None, None, None]
    wstart, hstart = torch.broadcast_tensors(wstart, hstart)
    for ih in range(spp):
        for iw in range(spp):
            yield Samples(hstart + ih * sub_h[:, None, None, None], wstart + iw * sub_w[:, None, None, None], None)


def psroi_rois_for_roi_align(rois: torch.Tensor, spatial_scale: float, pooled_size: int, sample_per_part: int) -> torch.Tensor:
    """RoIs on which torchvision's (ps_)roi_align samples where deform_psroi_pool with zero offsets does.

    roi_align(aligned=True) takes box * scale - 0.5 unrounded and centres its points in sub-bins;
    MXNet rounds the box, adds one pixel to its end and puts its points at sub-bin starts. Moving
    the box to MXNet's and back by half a sub-bin makes the points coincide.
    """
    s = spatial_scale
    x1, y1, roi_w, roi_h = psroi_box(rois, s)
    half_w, half_h = roi_w / pooled_size / sample_per_part / 2, roi_h / pooled_size / sample_per_part / 2
    nx1, ny1 = (x1 - half_w + 0.5) / s, (y1 - half_h + 0.5) / s
    return torch.stack([rois[:, 0], nx1, ny1, nx1 + roi_w / s, ny1 + roi_h / s], dim=1)
