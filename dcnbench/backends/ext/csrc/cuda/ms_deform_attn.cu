// Multi-scale deformable attention on CUDA (schemas in ext.cpp; per-point math in ms_deform_attn.h,
// shared with the CPU kernels). Indices are 64-bit and every kernel is a grid-stride loop over a
// grid capped at kMaxBlocks, so any N·Lq·M·D launches within the GPU's limits (the official
// kernels index with int and overflow past 2^31 elements: Deformable-DETR#66, mmcv#1724).
//
// Forward: one thread per output element (n, q, m, d), summing its L·P samples in order.
// Location and weight gradients: one thread per point (n, q, m, l, p), summing its D channels.
// Value gradient: one thread per (n, q, m, d) scattering its samples with atomicAdd (fast,
// nondeterministic), or in deterministic mode one thread per (n, m, d) walking every query, level
// and point in order. No column buffer: im2col_step bounds nothing here and is only checked.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../ms_deform_attn.h"
#include "runtime.h"

namespace dcnbench_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

// The level table as the kernels read it (device memory): (H, W) rows and start positions.
struct Table {
  const int64_t* shapes;
  const int64_t* starts;
};

template <typename T>
__device__ Corners<T> point_corners(const MsdaGeo g, const Table t, const T* loc, int64_t i, int64_t l) {
  return msda_corners<T>(loc[2 * i], loc[2 * i + 1], t.shapes[2 * l], t.shapes[2 * l + 1]);
}

template <typename T>
__global__ void forward_kernel(const MsdaGeo g, const Table t, const T* value, const T* loc, const T* attn, T* out) {
  const int64_t total = g.n * g.q * g.m * g.d;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = e % g.d, m = (e / g.d) % g.m, q = (e / (g.d * g.m)) % g.q, n = e / (g.d * g.m * g.q);
    T acc = T(0);
    for (int64_t l = 0; l < g.l; ++l) {
      const T* plane = value + msda_value_row(g, n, t.starts[l], 0, m) + d;
      for (int64_t p = 0; p < g.p; ++p) {
        const int64_t i = msda_point_index(g, n, q, m, l, p);
        const Corners<T> c = point_corners(g, t, loc, i, l);
        T v = T(0);
        for (int j = 0; j < 4; ++j)
          if (c.idx[j] >= 0) v += c.w[j] * plane[c.idx[j] * g.m * g.d];
        if (msda_poisoned(c)) v = c.w[0];  // NaN: the location is not finite
        acc += attn[i] * v;
      }
    }
    out[e] = acc;
  }
}

template <typename T>
__global__ void location_weight_grad_kernel(const MsdaGeo g, const Table t, const T* grad, const T* value, const T* loc,
                                            const T* attn, T* grad_loc, T* grad_attn) {
  const int64_t total = g.n * g.q * g.m * g.l * g.p;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = (i / g.p) % g.l, m = (i / (g.p * g.l)) % g.m, q = (i / (g.p * g.l * g.m)) % g.q;
    const int64_t n = i / (g.p * g.l * g.m * g.q);
    const Corners<T> c = point_corners(g, t, loc, i, l);
    if (msda_poisoned(c)) {
      grad_loc[2 * i] = grad_loc[2 * i + 1] = grad_attn[i] = c.w[0];
      continue;
    }
    const T* go = grad + ((n * g.q + q) * g.m + m) * g.d;
    const T* plane = value + msda_value_row(g, n, t.starts[l], 0, m);
    T sampled = T(0), sy = T(0), sx = T(0);
    for (int j = 0; j < 4; ++j) {
      if (c.idx[j] < 0) continue;
      const T* row = plane + c.idx[j] * g.m * g.d;
      T a = T(0);
      for (int64_t d = 0; d < g.d; ++d) a += go[d] * row[d];
      sampled += c.w[j] * a;
      sy += c.dy[j] * a;
      sx += c.dx[j] * a;
    }
    grad_attn[i] = sampled;
    grad_loc[2 * i] = sx * attn[i] * T(t.shapes[2 * l + 1]);
    grad_loc[2 * i + 1] = sy * attn[i] * T(t.shapes[2 * l]);
  }
}

template <typename T>
__global__ void value_grad_atomic_kernel(const MsdaGeo g, const Table t, const T* grad, const T* loc, const T* attn,
                                         T* grad_value) {
  const int64_t total = g.n * g.q * g.m * g.d;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = e % g.d, m = (e / g.d) % g.m, q = (e / (g.d * g.m)) % g.q, n = e / (g.d * g.m * g.q);
    const T go = grad[e];
    for (int64_t l = 0; l < g.l; ++l) {
      T* plane = grad_value + msda_value_row(g, n, t.starts[l], 0, m) + d;
      for (int64_t p = 0; p < g.p; ++p) {
        const int64_t i = msda_point_index(g, n, q, m, l, p);
        const Corners<T> c = point_corners(g, t, loc, i, l);
        for (int j = 0; j < 4; ++j)
          if (c.idx[j] >= 0) atomicAdd(plane + c.idx[j] * g.m * g.d, c.w[j] * attn[i] * go);
      }
    }
  }
}

// Deterministic: one thread per (image, head, channel), every query, level and point in a fixed order.
template <typename T>
__global__ void value_grad_ordered_kernel(const MsdaGeo g, const Table t, const T* grad, const T* loc, const T* attn,
                                          T* grad_value) {
  const int64_t total = g.n * g.m * g.d;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = e % g.d, m = (e / g.d) % g.m, n = e / (g.d * g.m);
    for (int64_t q = 0; q < g.q; ++q) {
      const T go = grad[((n * g.q + q) * g.m + m) * g.d + d];
      for (int64_t l = 0; l < g.l; ++l) {
        T* plane = grad_value + msda_value_row(g, n, t.starts[l], 0, m) + d;
        for (int64_t p = 0; p < g.p; ++p) {
          const int64_t i = msda_point_index(g, n, q, m, l, p);
          const Corners<T> c = point_corners(g, t, loc, i, l);
          for (int j = 0; j < 4; ++j)
            if (c.idx[j] >= 0) plane[c.idx[j] * g.m * g.d] += c.w[j] * attn[i] * go;
        }
      }
    }
  }
}

MsdaGeo geometry(const at::Tensor& value, const at::Tensor& loc, const at::Tensor& shapes, const at::Tensor& starts,
                 int64_t im2col_step) {
  TORCH_CHECK(value.dim() == 4 && loc.dim() == 6, "value must be (N, S, M, D), sampling_locations (N, Lq, M, L, P, 2)");
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2 && shapes.scalar_type() == at::kLong &&
                  starts.dim() == 1 && starts.size(0) == shapes.size(0) && starts.scalar_type() == at::kLong,
              "value_spatial_shapes must be (L, 2) int64 and value_level_start_index (L,) int64");
  TORCH_CHECK(shapes.size(0) == loc.size(3), "sampling_locations has ", loc.size(3), " levels, the shapes ",
              shapes.size(0));
  TORCH_CHECK(im2col_step >= 1, "im2col_step must be >= 1, got ", im2col_step);
  // The level table's values stay on the device (reading them here would synchronise): the Python
  // wrapper checked them against value's S before any kernel ran.
  return MsdaGeo{value.size(0), value.size(1), value.size(2), value.size(3), loc.size(3), loc.size(1), loc.size(4)};
}

at::Tensor forward(const at::Tensor& value_, const at::Tensor& shapes_, const at::Tensor& starts_, const at::Tensor& loc_,
                   const at::Tensor& attn_, int64_t im2col_step) {
  c10::cuda::CUDAGuard guard(value_.device());
  const at::Tensor value = value_.contiguous(), loc = loc_.contiguous(), attn = attn_.contiguous();
  const at::Tensor shapes = shapes_.contiguous(), starts = starts_.contiguous();
  const MsdaGeo g = geometry(value, loc, shapes, starts, im2col_step);
  at::Tensor out = at::empty({g.n, g.q, g.m * g.d}, value.options());
  const int64_t total = g.n * g.q * g.m * g.d;
  if (total == 0) return out.zero_();
  const Table t{shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>()};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    DCN_LAUNCH(forward_kernel<scalar_t>, blocks_for(total), kThreads, 0, stream)(
        g, t, value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_, const at::Tensor& value_,
                                                        const at::Tensor& shapes_, const at::Tensor& starts_,
                                                        const at::Tensor& loc_, const at::Tensor& attn_,
                                                        int64_t im2col_step, bool deterministic) {
  c10::cuda::CUDAGuard guard(value_.device());
  const at::Tensor grad = grad_.contiguous(), value = value_.contiguous(), loc = loc_.contiguous();
  const at::Tensor attn = attn_.contiguous(), shapes = shapes_.contiguous(), starts = starts_.contiguous();
  const MsdaGeo g = geometry(value, loc, shapes, starts, im2col_step);
  at::Tensor grad_value = at::zeros_like(value);
  at::Tensor grad_loc = at::empty_like(loc), grad_attn = at::empty_like(attn);  // every element is written
  if (g.n * g.q == 0) return {grad_value, grad_loc.zero_(), grad_attn.zero_()};
  const Table t{shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>()};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    const int64_t points = g.n * g.q * g.m * g.l * g.p;
    if (points > 0) {
      DCN_LAUNCH(location_weight_grad_kernel<scalar_t>, blocks_for(points), kThreads, 0, stream)(
          g, t, grad.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(),
          attn.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (deterministic) {
      DCN_LAUNCH(value_grad_ordered_kernel<scalar_t>, blocks_for(g.n * g.m * g.d), kThreads, 0, stream)(
          g, t, grad.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
          grad_value.data_ptr<scalar_t>());
    } else {
      DCN_LAUNCH(value_grad_atomic_kernel<scalar_t>, blocks_for(g.n * g.q * g.m * g.d), kThreads, 0, stream)(
          g, t, grad.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
          grad_value.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(DCN_LIBRARY, DCN_CUDA_KEY, m) {
  m.impl("ms_deform_attn_forward", &forward);
  m.impl("ms_deform_attn_backward", &backward);
}

}  // namespace dcnbench_ext
