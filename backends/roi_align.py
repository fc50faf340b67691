"""torchvision's roi_align / ps_roi_align on the same map and RoIs: the reference row for RoI pooling.

What pooling costs without deformation, as conv2d is for deform_conv2d. It ignores the offsets
(and MXNet's RoI rounding), so it is timed but never verified.
"""

from __future__ import annotations

import torchvision
from torchvision.ops import ps_roi_align, roi_align

from dcnbench.registry import Backend, local_devices
from dcnbench.roi_ops import OP_DEFORM_PSROI_POOL, OP_DEFORM_ROI_POOL


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    return roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned=True)


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size=0,
                      sample_per_part=1, trans_std=0.0, no_trans=False):
    if group_size == 1:
        return roi_align(input, rois, pooled_size, spatial_scale, sample_per_part, aligned=True)
    return ps_roi_align(input, rois, pooled_size, spatial_scale, sample_per_part)


def backend() -> Backend:
    return Backend(
        name="roi_align",
        description="torchvision roi_align / ps_roi_align, same map and RoIs, no deformation (reference row)",
        ops={OP_DEFORM_ROI_POOL: deform_roi_pool, OP_DEFORM_PSROI_POOL: deform_psroi_pool},
        dtypes=local_devices(("float64", "float32", "float16")),
        unsupported_reasons={"bfloat16": "torchvision's roi_align has no bfloat16 CPU kernel"},
        version=torchvision.__version__,
        kind="reference",
    )
