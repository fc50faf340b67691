"""torchvision.ops.deform_conv2d, called as it is."""

from __future__ import annotations

import torch
import torchvision
from torchvision.ops import deform_conv2d

from dcnbench.ops import OP_DEFORM_CONV2D
from dcnbench.registry import Backend

_DTYPES = ("float64", "float32", "float16")


def backend() -> Backend:
    dtypes = {"cpu": _DTYPES}
    if torch.cuda.is_available():
        dtypes["cuda"] = _DTYPES
    return Backend(
        name="torchvision",
        description="torchvision.ops.deform_conv2d",
        ops={OP_DEFORM_CONV2D: deform_conv2d},
        dtypes=dtypes,
        unsupported_reasons={"bfloat16": "torchvision has no bfloat16 deform_conv2d kernel"},
        version=torchvision.__version__,
    )
