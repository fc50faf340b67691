"""Planted-bug RoI pooling kernels: the pytorch oracle with one classic mistake each.

`dcnbench verify --impl tests/plugins/planted_roi_bugs.py:NAME` must fail on every one of them
and name the quantity that gives it away. BUGS maps each kernel to (op, quantities that must fail).
"""

from unittest import mock

import torch

from dcnbench.ops.deform_psroi_pool import points as psroi_points
from dcnbench.ops.deform_psroi_pool.contract import check_call as check_psroi
from dcnbench.ops.deform_psroi_pool.oracle import deform_psroi_pool
from dcnbench.ops.deform_roi_pool.contract import check_call as check_roi
from dcnbench.ops.deform_roi_pool.oracle import deform_roi_pool
from dcnbench.ops.deform_roi_pool.points import roi_pool_samples


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


# ---- failure class: float16/bfloat16 overflow (issue 21) -------------------------------------------
# mmcv's kernels sum a bin's samples in `scalar_t` and divide by the count at the end. The bin's sum
# is modelled as the oracle's float32 average times the count, rounded to float16 once: with the
# large-values cases' positive samples a float16 running sum passes 65504 exactly when that total does.


def _sums_in_float16(average: torch.Tensor, count: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return ((average * count).to(torch.float16) / count).to(dtype)


def roi_bin_sums_in_float16(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """Sums each bin's samples in float16 for float16 and bfloat16 inputs, then divides by the count."""
    if input.dtype not in (torch.float16, torch.bfloat16) or not rois.shape[0]:
        return deform_roi_pool(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    geo = check_roi(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    _, count = roi_pool_samples(rois.detach().float(), None if offset is None else offset.detach().float(), geo)
    average = deform_roi_pool(input.float(), rois.float(), None if offset is None else offset.float(), output_size,
                              spatial_scale, sampling_ratio, gamma)
    return _sums_in_float16(average, count.reshape(-1, 1, 1, 1), input.dtype)


def psroi_bin_sums_in_float16(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                              sample_per_part=1, trans_std=0.0, no_trans=False):
    """Sums each bin's samples in float16 for float16 and bfloat16 inputs, then divides by the count of
    the samples it kept (those inside [-0.5, size - 0.5], as the oracle counts them)."""
    args = (spatial_scale, output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std, no_trans)
    if input.dtype not in (torch.float16, torch.bfloat16) or not rois.shape[0]:
        return deform_psroi_pool(input, rois, trans, *args)
    geo = check_psroi(input, rois, trans, *args)
    count = None
    for pt in psroi_points.psroi_pool_samples(rois.detach().float(), None if no_trans else trans.detach().float(), geo,
                                              no_trans):
        kept = ~((pt.x < -0.5) | (pt.x > geo.w - 0.5) | (pt.y < -0.5) | (pt.y > geo.h - 0.5))
        count = kept.float() if count is None else count + kept
    count = count.clamp(min=1).repeat_interleave(output_dim // count.shape[1], dim=1)  # (K, classes, p, p) -> channels
    average = deform_psroi_pool(input.float(), rois.float(), None if trans is None else trans.float(), *args)
    return _sums_in_float16(average, count, input.dtype)


for _f in (roi_offset_xy_swapped, roi_gamma_twice, roi_offset_not_differentiated, roi_bin_sums_in_float16):
    _f.dcnbench_op = "deform_roi_pool"
for _f in (psroi_rounding_dropped, psroi_trans_xy_swapped, psroi_trans_std_twice, psroi_whole_image_in_every_bin,
           psroi_bin_sums_in_float16):
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

# Failure class "float16/bfloat16 overflow", one planted bug per op: caught by the op's two large-values
# cases in both half types, named `overflow:output`, and by nothing else.
OVERFLOW_BUGS = {
    "roi_bin_sums_in_float16": ("deform_roi_pool", {"overflow:output"}),
    "psroi_bin_sums_in_float16": ("deform_psroi_pool", {"overflow:output"}),
}
