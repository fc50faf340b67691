"""Planted stateful kernels: right on a fresh call, wrong once they have kept something from earlier
calls. A single-call check on fresh inputs passes them; `dcnbench train` must fail each, naming
the first step where it diverged (FIRST_WRONG_STEP: the step whose loss or update it first spoils,
when it is the net's only kernel and each step calls it once per deformable layer).

    dcnbench train --impl tests/plugins/planted_stateful_bugs.py:cached_sampling_positions
    dcnbench train --impl tests/plugins/planted_stateful_bugs.py:tuned_after_warmup
"""

import torch
from torchvision.ops import deform_conv2d as tv

# Calls per input shape before tuned_after_warmup switches to its "fast" path.
WARMUP_CALLS = 3

_positions: dict = {}


def cached_sampling_positions(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                              mask=None):
    """Computes the sampling positions (the offsets) on the first call for an input shape and reuses
    them for every later call of that shape: a plan cache keyed on the shape, not on the offsets.
    The forward reads the cached positions, and the offset gradient is taken there too."""
    key = (tuple(input.shape), tuple(offset.shape), input.dtype, input.device)
    cached = _positions.setdefault(key, offset.detach().clone())
    stale = cached + (offset - offset.detach())  # values from the cache, gradient still routed to offset
    return tv(input, stale, weight, bias, stride, padding, dilation, mask)


_calls: dict = {}


def tuned_after_warmup(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """After WARMUP_CALLS calls of an input shape, switches to a path that splits the batch in two
    chunks and keeps only the last chunk's weight gradient (it assigns where it should add). The
    output and the other gradients stay exact."""
    key = (tuple(input.shape), input.dtype, input.device)
    _calls[key] = _calls.get(key, 0) + 1
    if _calls[key] <= WARMUP_CALLS or input.shape[0] < 2:
        return tv(input, offset, weight, bias, stride, padding, dilation, mask)
    h = input.shape[0] // 2
    first = tv(input[:h], offset[:h], weight.detach(), bias, stride, padding,
               dilation, None if mask is None else mask[:h])
    last = tv(input[h:], offset[h:], weight, bias, stride, padding, dilation, None if mask is None else mask[h:])
    return torch.cat([first, last])


# Two deformable layers of different shapes, each called once a step: the cache is filled at step
# 1 and read from step 2 on; the tuned path runs from call WARMUP_CALLS + 1 of each shape.
FIRST_WRONG_STEP = {"cached_sampling_positions": 2, "tuned_after_warmup": WARMUP_CALLS + 1}
