"""torch.nn.functional.conv2d on the same shape: the reference row showing what a plain layer costs.

It ignores offset and mask, so it is timed but never verified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcnbench.ops import OP_DEFORM_CONV2D
from dcnbench.registry import ALL_DTYPES, Backend, local_devices


def conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    groups = input.shape[1] // weight.shape[1]
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def backend() -> Backend:
    return Backend(
        name="conv2d",
        description="torch.nn.functional.conv2d, same shape, no deformation (reference row)",
        ops={OP_DEFORM_CONV2D: conv2d},
        dtypes=local_devices(ALL_DTYPES),
        version=torch.__version__,
        kind="reference",
    )
