"""Model factories for `dcnbench export-check` that fail the way user code does: a model that is not
finite, a factory that exits, a module that exits or crashes while it is checked."""

import os
import signal
import sys

import torch


class _NaN(torch.nn.Module):
    def forward(self, x):
        return x * float("nan")


class _Overflows(torch.nn.Module):
    """Finite in float64, infinite in float32 (exp(100) > 3.4e38)."""

    def forward(self, x):
        return torch.exp(100 * x)


class _Crashes(torch.nn.Module):
    """Runs in its own dtype (float32) and segfaults in the float64 reference run."""

    def forward(self, x):
        if x.dtype == torch.float64:
            os.kill(os.getpid(), signal.SIGSEGV)
        return x + 1


def all_nan():
    return _NaN(), torch.randn(2, 3)


def overflows_in_float32():
    return _Overflows(), torch.ones(2, 3)


def factory_exits():
    sys.exit(0)


def crashes_when_checked():
    return _Crashes(), torch.randn(2, 3)
