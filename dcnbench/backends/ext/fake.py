"""Fake kernels of the ext ops: the shape, dtype, device and layout of each result without computing it.

torch.compile, torch.export and torch.library.opcheck run these on fake tensors to trace through
the ops. They must match what the real kernels return (fresh contiguous tensors; a gradient of an
absent mask or offset is an empty tensor), which opcheck checks on real samples. Only shapes here:
this file is the one place that states them, for every ext op namespace (`register`).
"""

from __future__ import annotations

import torch

from dcnbench.ops.contract import out_size


def _new(like: torch.Tensor, shape) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _grad_of(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return _new(like, (0,)) if t is None else _new(t, t.shape)


def deform_conv2d_forward(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                          offset_groups):
    n, _, h, w = input.shape
    o, _, kh, kw = weight.shape
    return _new(input, (n, o, out_size(h, kh, stride_h, pad_h, dil_h), out_size(w, kw, stride_w, pad_w, dil_w)))


def deform_conv2d_backward(grad, input, weight, offset, mask, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                           offset_groups, deterministic):
    return _new(input, input.shape), _new(weight, weight.shape), _new(offset, offset.shape), _grad_of(mask, input)


def roi_pool_forward(input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma):
    return _new(input, (rois.shape[0], input.shape[1], pooled_h, pooled_w))


def roi_pool_backward(grad, input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma, deterministic):
    return _new(input, input.shape), _grad_of(offset, input)


def psroi_pool_forward(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                       sample_per_part, trans_std):
    return _new(input, (rois.shape[0], output_dim, pooled_size, pooled_size))


def psroi_pool_backward(grad, input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                        sample_per_part, trans_std, deterministic):
    return _new(input, input.shape), _grad_of(trans, input)


KERNELS = (deform_conv2d_forward, deform_conv2d_backward, roi_pool_forward, roi_pool_backward, psroi_pool_forward,
           psroi_pool_backward)


def register(namespace: str) -> None:
    """Register every fake kernel for the ops of `namespace` (a loaded ext library)."""
    for kernel in KERNELS:
        torch.library.register_fake(f"{namespace}::{kernel.__name__}", kernel)
