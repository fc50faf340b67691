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


def _group_output(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                  group_channels):
    n, h, w, _ = input.shape
    return _new(input, (n, out_size(h, kernel_h, stride_h, pad_h, dilation_h), out_size(w, kernel_w, stride_w, pad_w,
                                                                                     dilation_w), group * group_channels))


def dcnv3_forward(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                  group, group_channels, offset_scale, remove_center):
    return _group_output(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                         group_channels)


def dcnv3_backward(grad, input, offset, mask, *params):
    return _new(input, input.shape), _new(offset, offset.shape), _new(mask, mask.shape)


def dcnv4_forward(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                  group, group_channels, offset_scale, remove_center, softmax):
    return _group_output(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                         group_channels)


def dcnv4_backward(grad, input, offset_mask, *params):
    return _new(input, input.shape), _new(offset_mask, offset_mask.shape)


def ms_deform_attn_forward(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                           im2col_step):
    n, _, m, d = value.shape
    return _new(value, (n, sampling_locations.shape[1], m * d))


def ms_deform_attn_backward(grad, value, value_spatial_shapes, value_level_start_index, sampling_locations,
                            attention_weights, im2col_step, deterministic):
    return _new(value, value.shape), _new(sampling_locations, sampling_locations.shape), \
        _new(attention_weights, attention_weights.shape)


KERNELS = (deform_conv2d_forward, deform_conv2d_backward, roi_pool_forward, roi_pool_backward, psroi_pool_forward,
           psroi_pool_backward, dcnv3_forward, dcnv3_backward, dcnv4_forward, dcnv4_backward, ms_deform_attn_forward,
           ms_deform_attn_backward)


def defined(namespace: str) -> set[str]:
    """The op names a loaded library defines (the emulated CUDA library has no DCNv3/DCNv4 ops)."""
    return {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith(f"{namespace}::")}


def register(namespace: str) -> None:
    """Register every fake kernel for the ops of `namespace` (a loaded ext library)."""
    ops = defined(namespace)
    for kernel in KERNELS:
        if kernel.__name__ in ops:
            torch.library.register_fake(f"{namespace}::{kernel.__name__}", kernel)
