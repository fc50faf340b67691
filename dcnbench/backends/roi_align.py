"""torchvision's roi_align / ps_roi_align on the same map and RoIs: the reference row for RoI pooling.

What pooling costs without deformation, as conv2d is for deform_conv2d. It ignores the offsets
(and MXNet's RoI rounding), so it is timed but never verified.
"""

from __future__ import annotations

import torchvision

from dcnbench.backends import Backend, local_devices
from dcnbench.ops.deform_psroi_pool.references import ps_roi_align
from dcnbench.ops.deform_roi_pool.references import roi_align


def backend() -> Backend:
    return Backend(
        name="roi_align",
        description="torchvision roi_align / ps_roi_align, same map and RoIs, no deformation (reference row)",
        ops={"deform_roi_pool": roi_align, "deform_psroi_pool": ps_roi_align},
        dtypes=local_devices(("float64", "float32", "float16")),
        unsupported_reasons={"bfloat16": "torchvision's roi_align has no bfloat16 CPU kernel"},
        version=torchvision.__version__,
        kind="reference",
    )
