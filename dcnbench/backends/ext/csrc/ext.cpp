// The schema of every op in the `dcnbench_ext` library. Kernels register per device in cpu/ and
// cuda/; the autograd wrapper and argument checks live in Python (backends/ext/__init__.py).
// Half types are cast to float32 by the wrapper, so kernels see float64 or float32.
#include "library.h"

TORCH_LIBRARY(DCN_LIBRARY, m) {
  m.def("deform_conv2d_forward(Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, int offset_groups) -> Tensor");
  m.def("deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor? mask, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, int offset_groups, "
        "bool deterministic) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("roi_pool_forward(Tensor input, Tensor rois, Tensor? offset, int pooled_h, int pooled_w, float spatial_scale, "
        "int sampling_ratio, float gamma) -> Tensor");
  m.def("roi_pool_backward(Tensor grad, Tensor input, Tensor rois, Tensor? offset, int pooled_h, int pooled_w, "
        "float spatial_scale, int sampling_ratio, float gamma, bool deterministic) -> (Tensor, Tensor)");
  m.def("psroi_pool_forward(Tensor input, Tensor rois, Tensor? trans, float spatial_scale, int output_dim, "
        "int group_size, int pooled_size, int part_size, int sample_per_part, float trans_std) -> Tensor");
  m.def("psroi_pool_backward(Tensor grad, Tensor input, Tensor rois, Tensor? trans, float spatial_scale, "
        "int output_dim, int group_size, int pooled_size, int part_size, int sample_per_part, float trans_std, "
        "bool deterministic) -> (Tensor, Tensor)");
  // Multi-scale deformable attention (cpu/ms_deform_attn.cpp, cuda/ms_deform_attn.cu).
  m.def("ms_deform_attn_forward(Tensor value, Tensor value_spatial_shapes, Tensor value_level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights, int im2col_step) -> Tensor");
  m.def("ms_deform_attn_backward(Tensor grad, Tensor value, Tensor value_spatial_shapes, "
        "Tensor value_level_start_index, Tensor sampling_locations, Tensor attention_weights, int im2col_step, "
        "bool deterministic) -> (Tensor, Tensor, Tensor)");
}
