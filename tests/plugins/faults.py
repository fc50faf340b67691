"""Kernels that fail the way broken native code does, for the fault-injection tests.

Each is torchvision's deform_conv2d until its trigger: float64 inputs (the plugin probe calls in
float32, so the plugin loads and the failure hits a case), or every call (`*_always`), or the
third call of the process (`hangs_on_third_call`).
"""

import ctypes
import os
import sys
import time

import torch
from torchvision.ops import deform_conv2d as tv

_calls = 0


def _tv(input, offset, weight, bias, stride, padding, dilation, mask):
    return tv(input, offset, weight, bias, stride, padding, dilation, mask)


def hangs(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    if input.dtype == torch.float64:
        time.sleep(3600)
    return _tv(input, offset, weight, bias, stride, padding, dilation, mask)


def hangs_always(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    time.sleep(3600)


def hangs_on_third_call(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    global _calls
    _calls += 1
    if _calls == 3:
        time.sleep(3600)
    return _tv(input, offset, weight, bias, stride, padding, dilation, mask)


def segfaults(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    if input.dtype == torch.float64:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return _tv(input, offset, weight, bias, stride, padding, dilation, mask)


def segfaults_always(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    ctypes.string_at(0)


def os_exits(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    if input.dtype == torch.float64:
        os._exit(1)
    return _tv(input, offset, weight, bias, stride, padding, dilation, mask)


def sys_exits(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    if input.dtype == torch.float64:
        sys.exit(3)
    return _tv(input, offset, weight, bias, stride, padding, dilation, mask)


for _f in (hangs, hangs_on_third_call, segfaults, os_exits, sys_exits):
    _f.dcnbench_dtypes = ("float64", "float32")
