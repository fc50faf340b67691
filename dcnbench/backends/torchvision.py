"""torchvision.ops.deform_conv2d, called as it is.

torchvision has no deformable RoI pooling; its roi_align and ps_roi_align are the identity
references for the pooling ops' zero-offset cases (verify) and the `roi_align` reference row.
"""

from __future__ import annotations

import torchvision
from torchvision.ops import deform_conv2d

from dcnbench.backends import Backend, local_devices

_DTYPES = ("float64", "float32", "float16")
NO_POOLING = ("torchvision has no deformable RoI pooling; its roi_align/ps_roi_align serve as the "
              "zero-offset identity checks instead")


def backend() -> Backend:
    return Backend(
        name="torchvision",
        description="torchvision.ops.deform_conv2d",
        ops={"deform_conv2d": deform_conv2d},
        dtypes=local_devices(_DTYPES),
        unsupported_reasons={"bfloat16": "torchvision has no bfloat16 deform_conv2d kernel",
                             "deform_roi_pool": NO_POOLING, "deform_psroi_pool": NO_POOLING},
        version=torchvision.__version__,
        # deform_conv2d runs the batch in chunks of its largest divisor <= 32 (n_parallel_imgs).
        batch_chunk=lambda op, geometry: 32 if op == "deform_conv2d" else None,
    )
