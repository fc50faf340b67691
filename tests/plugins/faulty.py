"""Plugins that misbehave on purpose, for the fault-injection tests (tests/test_faults.py).

Each passes the probe (a 1-image call) and misbehaves on the suite's larger calls.
"""

import torch
from torchvision.ops import deform_conv2d as tv


def nan_output(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Correct, except that every output is NaN for batches over one image."""
    out = tv(input, offset, weight, bias, stride, padding, dilation, mask)
    return out * float("nan") if input.shape[0] > 1 else out


def raises_when_large(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    if input.shape[0] > 1:
        raise RuntimeError("out of shared memory")
    return tv(input, offset, weight, bias, stride, padding, dilation, mask)


def no_dtypes(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    return tv(input, offset, weight, bias, stride, padding, dilation, mask)


no_dtypes.dcnbench_dtypes = ()
nan_output.dcnbench_dtypes = raises_when_large.dcnbench_dtypes = ("float64", "float32")
torch  # imported for plugins that build tensors
