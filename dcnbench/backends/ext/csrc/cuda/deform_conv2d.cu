// deform_conv2d on CUDA: the same im2col/GEMM/col2im plan as the CPU kernels, one thread per
// column element. The input gradient is scattered with atomicAdd (fast, nondeterministic), or in
// deterministic mode by one thread per input channel plane walking every tap and position in order.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../geometry.h"
#include "../sampling.h"
#include "runtime.h"

namespace dcnbench_ext {
namespace {

constexpr int kThreads = 256;

using Geo = ConvGeo;

// Blocks for n elements, at most 65535 (the grid-stride loops cover the rest): clamped before the
// narrowing to int, so no element count can wrap it.
int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

template <typename T>
__device__ Corners<T> corners_at(const Geo g, const T* offset, int64_t n, int64_t gi, int64_t k, int64_t l) {
  const T* dy = offset + ((n * g.og + gi) * g.k + k) * 2 * g.l;
  const int64_t i = k / g.kw, j = k % g.kw, oy = l / g.wo, ox = l % g.wo;
  const T py = T(oy * g.sh - g.ph + i * g.dh) + dy[l];
  const T px = T(ox * g.sw - g.pw + j * g.dw) + dy[g.l + l];
  return bilinear_z<T>(py, px, g.h, g.w);
}

// cols (b, C*K, L) for images [n0, n0 + b): one thread per element.
template <typename T>
__global__ void im2col_kernel(const Geo g, const T* input, const T* offset, const T* mask, int64_t n0, int64_t b,
                              T* cols) {
  const int64_t total = b * g.c * g.k * g.l;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = e % g.l, k = (e / g.l) % g.k, c = (e / (g.l * g.k)) % g.c, bi = e / (g.l * g.k * g.c);
    const int64_t n = n0 + bi, gi = c / (g.c / g.og);
    const Corners<T> q = corners_at(g, offset, n, gi, k, l);
    const T* in = input + (n * g.c + c) * g.h * g.w;
    T v = interpolate(in, q);
    if (mask) v *= mask[((n * g.og + gi) * g.k + k) * g.l + l];
    cols[e] = v;
  }
}

template <typename T>
__global__ void col2im_atomic_kernel(const Geo g, const T* gcols, const T* offset, const T* mask, int64_t n0, int64_t b,
                                     T* grad_input) {
  const int64_t total = b * g.c * g.k * g.l;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = e % g.l, k = (e / g.l) % g.k, c = (e / (g.l * g.k)) % g.c, bi = e / (g.l * g.k * g.c);
    const int64_t n = n0 + bi, gi = c / (g.c / g.og);
    const Corners<T> q = corners_at(g, offset, n, gi, k, l);
    T gv = gcols[e];
    if (mask) gv *= mask[((n * g.og + gi) * g.k + k) * g.l + l];
    T* gin = grad_input + (n * g.c + c) * g.h * g.w;
    for (int j = 0; j < 4; ++j)
      if (q.idx[j] >= 0) atomicAdd(gin + q.idx[j], q.w[j] * gv);
  }
}

// Deterministic: one thread per (image, channel) plane, every tap and position in a fixed order.
template <typename T>
__global__ void col2im_ordered_kernel(const Geo g, const T* gcols, const T* offset, const T* mask, int64_t n0,
                                      int64_t b, T* grad_input) {
  const int64_t total = b * g.c;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % g.c, bi = e / g.c, n = n0 + bi, gi = c / (g.c / g.og);
    T* gin = grad_input + (n * g.c + c) * g.h * g.w;
    for (int64_t k = 0; k < g.k; ++k)
      for (int64_t l = 0; l < g.l; ++l) {
        const Corners<T> q = corners_at(g, offset, n, gi, k, l);
        T gv = gcols[((bi * g.c + c) * g.k + k) * g.l + l];
        if (mask) gv *= mask[((n * g.og + gi) * g.k + k) * g.l + l];
        for (int j = 0; j < 4; ++j)
          if (q.idx[j] >= 0) gin[q.idx[j]] += q.w[j] * gv;
      }
  }
}

// Offset and mask gradients: one thread per (image, offset group, tap, position), summing channels.
template <typename T>
__global__ void offset_mask_grad_kernel(const Geo g, const T* gcols, const T* input, const T* offset, const T* mask,
                                        int64_t n0, int64_t b, T* grad_offset, T* grad_mask) {
  const int64_t total = b * g.og * g.k * g.l, cpg = g.c / g.og;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = e % g.l, k = (e / g.l) % g.k, gi = (e / (g.l * g.k)) % g.og, bi = e / (g.l * g.k * g.og);
    const int64_t n = n0 + bi;
    const Corners<T> q = corners_at(g, offset, n, gi, k, l);
    T ay = 0, ax = 0, am = 0;
    for (int64_t c = gi * cpg; c < (gi + 1) * cpg; ++c) {
      const T* in = input + (n * g.c + c) * g.h * g.w;
      const T v0 = corner(in, q, 0), v1 = corner(in, q, 1), v2 = corner(in, q, 2), v3 = corner(in, q, 3);
      const T gv = gcols[((bi * g.c + c) * g.k + k) * g.l + l];
      ay += gv * (q.dy[0] * v0 + q.dy[1] * v1 + q.dy[2] * v2 + q.dy[3] * v3);
      ax += gv * (q.dx[0] * v0 + q.dx[1] * v1 + q.dx[2] * v2 + q.dx[3] * v3);
      am += gv * (q.w[0] * v0 + q.w[1] * v1 + q.w[2] * v2 + q.w[3] * v3);
    }
    const int64_t at_ = ((n * g.og + gi) * g.k + k);
    const T scale = mask ? mask[at_ * g.l + l] : T(1);
    grad_offset[at_ * 2 * g.l + l] = ay * scale;
    grad_offset[at_ * 2 * g.l + g.l + l] = ax * scale;
    if (grad_mask) grad_mask[at_ * g.l + l] = am;
  }
}

int64_t chunk_of(const Geo& g) {
  const int64_t budget = int64_t(1) << 27;  // column elements per chunk (512 MiB in float32)
  const int64_t per_image = std::max<int64_t>(1, g.c * g.k * g.l);
  return std::max<int64_t>(1, std::min<int64_t>(g.n, budget / per_image));
}

at::Tensor forward(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
                   const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_, int64_t sh,
                   int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t og) {
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), weight = weight_.contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const Geo g = conv_geometry(input, weight, sh, sw, ph, pw, dh, dw, groups, og);
  at::Tensor out = at::zeros({g.n, g.o, g.ho, g.wo}, input.options());
  if (g.n == 0) return out;
  const int64_t chunk = chunk_of(g), cgk = g.c / groups * g.k, og_out = g.o / groups;
  at::Tensor cols = at::empty({chunk, g.c * g.k, g.l}, input.options());
  const at::Tensor wg = weight.view({groups, og_out, cgk});
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_forward_cuda", [&] {
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
      const int64_t b = std::min(chunk, g.n - n0);
      DCN_LAUNCH(im2col_kernel<scalar_t>, blocks_for(b * g.c * g.k * g.l), kThreads, 0, stream)(
          g, input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), mask.defined() ? mask.data_ptr<scalar_t>() : nullptr,
          n0, b, cols.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor c3 = cols.narrow(0, 0, b);
      at::Tensor o4 = out.narrow(0, n0, b).view({b, groups, og_out, g.l});
      for (int64_t gi = 0; gi < groups; ++gi) o4.select(1, gi).copy_(at::matmul(wg[gi], c3.narrow(1, gi * cgk, cgk)));
    }
  });
  if (bias_.has_value()) out.add_(bias_->view({1, g.o, 1, 1}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_, const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
    const std::optional<at::Tensor>& mask_, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
    int64_t groups, int64_t og, bool deterministic) {
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor grad = grad_.contiguous(), input = input_.contiguous(), weight = weight_.contiguous();
  const at::Tensor offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const Geo g = conv_geometry(input, weight, sh, sw, ph, pw, dh, dw, groups, og);
  at::Tensor grad_input = at::zeros_like(input), grad_weight = at::zeros_like(weight);
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = mask.defined() ? at::zeros_like(mask) : at::empty({0}, offset.options());  // none: empty
  if (g.n == 0) return {grad_input, grad_weight, grad_offset, grad_mask};
  const int64_t chunk = chunk_of(g), cgk = g.c / groups * g.k, og_out = g.o / groups;
  at::Tensor cols = at::empty({chunk, g.c * g.k, g.l}, input.options());
  at::Tensor gcols = at::empty({chunk, g.c * g.k, g.l}, input.options());
  const at::Tensor wg = weight.view({groups, og_out, cgk});
  at::Tensor gw = grad_weight.view({groups, og_out, cgk});
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
    const scalar_t* m = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
      const int64_t b = std::min(chunk, g.n - n0), elems = b * g.c * g.k * g.l;
      DCN_LAUNCH(im2col_kernel<scalar_t>, blocks_for(elems), kThreads, 0, stream)(
          g, input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b, cols.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor g4 = grad.narrow(0, n0, b).view({b, groups, og_out, g.l});
      const at::Tensor c3 = cols.narrow(0, 0, b);
      at::Tensor gc3 = gcols.narrow(0, 0, b);
      for (int64_t gi = 0; gi < groups; ++gi) {
        const at::Tensor go = g4.select(1, gi);
        gc3.narrow(1, gi * cgk, cgk).copy_(at::matmul(wg[gi].t(), go));
        gw[gi].add_(at::matmul(go, c3.narrow(1, gi * cgk, cgk).transpose(1, 2)).sum(0));
      }
      if (deterministic) {
        DCN_LAUNCH(col2im_ordered_kernel<scalar_t>, blocks_for(b * g.c), kThreads, 0, stream)(
            g, gcols.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b, grad_input.data_ptr<scalar_t>());
      } else {
        DCN_LAUNCH(col2im_atomic_kernel<scalar_t>, blocks_for(elems), kThreads, 0, stream)(
            g, gcols.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b, grad_input.data_ptr<scalar_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      DCN_LAUNCH(offset_mask_grad_kernel<scalar_t>, blocks_for(b * g.og * g.k * g.l), kThreads, 0, stream)(
          g, gcols.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b,
          grad_offset.data_ptr<scalar_t>(), mask.defined() ? grad_mask.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_input, grad_weight, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(DCN_LIBRARY, DCN_CUDA_KEY, m) {
  m.impl("deform_conv2d_forward", &forward);
  m.impl("deform_conv2d_backward", &backward);
}

}  // namespace dcnbench_ext
