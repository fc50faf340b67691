"""Planted-bug RoI pooling kernels: the pytorch oracle with one classic mistake each.

`dcnbench verify --impl tests/plugins/planted_roi_bugs.py:NAME` must fail on every one of them
and name the quantity that gives it away. BUGS maps each kernel to (op, quantities that must fail).
"""

from unittest import mock

from dcnbench.ops.deform_psroi_pool import points as psroi_points
from dcnbench.ops.deform_psroi_pool.oracle import deform_psroi_pool
from dcnbench.ops.deform_roi_pool.oracle import deform_roi_pool


def roi_offset_xy_swapped(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """Reads channel 0 as the y shift and channel 1 as x (mmcv's layout is x first)."""
    return deform_roi_pool(input, rois, None if offset is None else offset.flip(1), output_size, spatial_scale,
                           sampling_ratio, gamma)


def roi_gamma_twice(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """Scales the offsets by gamma before the operator scales them by gamma again."""
    return deform_roi_pool(input, rois, None if offset is None else offset * gamma, output_size, spatial_scale,
                           sampling_ratio, gamma)


def roi_offset_not_differentiated(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    return deform_roi_pool(input, rois, None if offset is None else offset.detach(), output_size, spatial_scale,
                           sampling_ratio, gamma)


def psroi_rounding_dropped(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                           sample_per_part=1, trans_std=0.0, no_trans=False):
    """Uses the RoI corners as given instead of rounding them to whole pixels first."""
    with mock.patch.object(psroi_points, "c_round", lambda x: x):
        return deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                                 sample_per_part, trans_std, no_trans)


def psroi_trans_xy_swapped(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                           sample_per_part=1, trans_std=0.0, no_trans=False):
    k = trans.shape[0]
    swapped = trans.reshape(k, -1, 2, *trans.shape[2:]).flip(2).reshape(trans.shape)
    return deform_psroi_pool(input, rois, swapped, spatial_scale, output_dim, group_size, pooled_size, part_size,
                             sample_per_part, trans_std, no_trans)


def psroi_trans_std_twice(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                          sample_per_part=1, trans_std=0.0, no_trans=False):
    return deform_psroi_pool(input, rois, trans * trans_std, spatial_scale, output_dim, group_size, pooled_size,
                             part_size, sample_per_part, trans_std, no_trans)


def psroi_whole_image_in_every_bin(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                                   sample_per_part=1, trans_std=0.0, no_trans=False):
    """Adds 0 x (the sum of every image) to every bin (a normalisation over the whole batch, say):
    right on finite maps, NaN everywhere once one pixel anywhere is not finite."""
    out = deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                            sample_per_part, trans_std, no_trans)
    return out + 0 * input.sum()


for _f in (roi_offset_xy_swapped, roi_gamma_twice, roi_offset_not_differentiated):
    _f.dcnbench_op = "deform_roi_pool"
for _f in (psroi_rounding_dropped, psroi_trans_xy_swapped, psroi_trans_std_twice, psroi_whole_image_in_every_bin):
    _f.dcnbench_op = "deform_psroi_pool"


BUGS = {
    "roi_offset_xy_swapped": ("deform_roi_pool", {"output", "grad_offset"}),
    "roi_gamma_twice": ("deform_roi_pool", {"output", "grad_offset"}),
    "roi_offset_not_differentiated": ("deform_roi_pool", {"grad_offset"}),
    "psroi_rounding_dropped": ("deform_psroi_pool", {"output", "grad_input"}),
    "psroi_trans_xy_swapped": ("deform_psroi_pool", {"output", "grad_offset"}),
    "psroi_trans_std_twice": ("deform_psroi_pool", {"output", "grad_offset"}),
    "psroi_whole_image_in_every_bin": ("deform_psroi_pool", {"nonfinite:output"}),
}
