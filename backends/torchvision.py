"""torchvision.ops.deform_conv2d, called as it is."""

from __future__ import annotations

import torchvision
from torchvision.ops import deform_conv2d

from dcnbench.ops import OP_DEFORM_CONV2D
from dcnbench.registry import Backend, local_devices

_DTYPES = ("float64", "float32", "float16")


def backend() -> Backend:
    return Backend(
        name="torchvision",
        description="torchvision.ops.deform_conv2d",
        ops={OP_DEFORM_CONV2D: deform_conv2d},
        dtypes=local_devices(_DTYPES),
        unsupported_reasons={"bfloat16": "torchvision has no bfloat16 deform_conv2d kernel"},
        version=torchvision.__version__,
    )
