"""deform_psroi_pool's identities with torchvision, and its `roi_align` reference row."""

from __future__ import annotations

from dcnbench.ops.deform_psroi_pool.points import psroi_rois_for_roi_align


def ps_roi_align(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                 sample_per_part=1, trans_std=0.0, no_trans=False):
    """torchvision's ps_roi_align (group_size = pooled_size) or roi_align(aligned=True) (group_size 1)
    on the same RoIs, offsets and MXNet's rounding ignored: the reference row."""
    from torchvision.ops import ps_roi_align, roi_align

    if group_size == 1:
        return roi_align(input, rois, pooled_size, spatial_scale, sample_per_part, aligned=True)
    return ps_roi_align(input, rois, pooled_size, spatial_scale, sample_per_part)


def ps_roi_align_identity(case):
    """deform_psroi_pool with zero offsets, group_size = pooled_size (or 1), every sample inside
    [-0.5, size-0.5], is the reference row on RoIs moved to MXNet's rounded box and back by half a
    sub-bin (`points.psroi_rois_for_roi_align`)."""

    def fn(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0, sample_per_part=1,
           trans_std=0.0, no_trans=False):
        moved = psroi_rois_for_roi_align(rois, spatial_scale, pooled_size, sample_per_part)
        return ps_roi_align(input, moved, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                            sample_per_part, trans_std, no_trans)

    return fn
