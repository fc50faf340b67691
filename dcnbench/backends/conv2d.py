"""torch.nn.functional.conv2d on the same shape: the reference row showing what a plain layer costs.

It ignores offset and mask, so it is timed but never verified. For DCNv3/DCNv4 it is the depthwise
conv2d of the same shape (ones as weights) on the channels-last map.
"""

from __future__ import annotations

import torch

from dcnbench.backends import ALL_DTYPES, Backend, local_devices
from dcnbench.ops.dcnv3.references import depthwise_conv2d
from dcnbench.ops.dcnv4.references import depthwise_conv2d_v4
from dcnbench.ops.deform_conv2d.references import conv2d


def backend() -> Backend:
    return Backend(
        name="conv2d",
        description="torch.nn.functional.conv2d, same shape, no deformation (reference row)",
        ops={"deform_conv2d": conv2d, "dcnv3": depthwise_conv2d, "dcnv4": depthwise_conv2d_v4},
        dtypes=local_devices(ALL_DTYPES),
        version=torch.__version__,
        kind="reference",
    )
