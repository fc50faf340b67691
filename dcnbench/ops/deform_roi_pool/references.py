"""deform_roi_pool's identity with torchvision, which is also its `roi_align` reference row."""

from __future__ import annotations


def roi_align(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """torchvision's roi_align(aligned=True), offsets ignored: deform_roi_pool with zero offsets, in
    every setting (adaptive grid, degenerate and outside RoIs included)."""
    from torchvision.ops import roi_align

    return roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned=True)


def roi_align_identity(case):
    return roi_align
