"""torchvision's deform_conv2d, slowed by DCNBENCH_SLOWDOWN (a fraction, e.g. 0.25) of its own time.

A stand-in for a kernel change that makes a workload slower, for benchmarks/gate_false_alarms.py.
"""

import os
import time

from torchvision.ops import deform_conv2d as _tv

dcnbench_dtypes = ("float64", "float32", "float16")


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    start = time.perf_counter()
    out = _tv(input, offset, weight, bias, stride, padding, dilation, mask)
    extra = float(os.environ.get("DCNBENCH_SLOWDOWN", "0"))
    if extra > 0:
        time.sleep(extra * (time.perf_counter() - start))
    return out


deform_conv2d.dcnbench_dtypes = dcnbench_dtypes
