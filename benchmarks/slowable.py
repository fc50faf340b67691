"""torchvision's deform_conv2d, slowed by DCNBENCH_SLOWDOWN (a fraction, e.g. 0.25) of its own time.

A stand-in for a kernel change that makes a workload slower, for benchmarks/gate_false_alarms.py.
"""

import os
import time

from torchvision.ops import deform_conv2d as _tv

dcnbench_dtypes = ("float64", "float32", "float16")


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """Forward and backward each take `DCNBENCH_SLOWDOWN` longer than torchvision's own."""
    extra = float(os.environ.get("DCNBENCH_SLOWDOWN", "0"))
    x = input.view_as(input) if extra > 0 and input.requires_grad else input
    start = time.perf_counter()
    out = _tv(x, offset, weight, bias, stride, padding, dilation, mask)
    if extra > 0:
        time.sleep(extra * (time.perf_counter() - start))
        if out.requires_grad and x is not input:
            began = {}
            out.register_hook(lambda g: began.setdefault("t", time.perf_counter()) and None)
            # x's gradient arrives when torchvision's backward is done: stretch it there.
            x.register_hook(lambda g: time.sleep(extra * (time.perf_counter() - began["t"])))
    return out


deform_conv2d.dcnbench_dtypes = dcnbench_dtypes
