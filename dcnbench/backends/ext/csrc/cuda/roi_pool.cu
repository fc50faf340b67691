// deform_roi_pool and deform_psroi_pool on CUDA: one thread per output bin and channel. Input
// gradients use atomicAdd, or in deterministic mode one thread per input channel plane that walks
// every RoI, bin and sample in order; offset gradients are one thread per (RoI, bin) summing channels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../sampling.h"
#include "../rois.h"
#include "runtime.h"

namespace dcnbench_ext {
namespace {

constexpr int kThreads = 256;
int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

#define GRID_STRIDE(e, total) \
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < (total); e += int64_t(gridDim.x) * blockDim.x)

struct RoIArgs {
  int64_t k, c, h, w, ph, pw, sampling_ratio;
  double scale, gamma;
};

template <typename T>
__device__ Corners<T> roi_corners(const RoIArgs& a, const RoIBox<T>& box, const T* off, int64_t bin, int64_t iy,
                                  int64_t ix) {
  const int64_t bins = a.ph * a.pw, i = bin / a.pw, j = bin % a.pw;
  T sx = box.x1, sy = box.y1;
  if (off) {
    sx += T(a.gamma) * box.w * off[bin];
    sy += T(a.gamma) * box.h * off[bins + bin];
  }
  const T bh = box.h / T(a.ph), bw = box.w / T(a.pw);
  const T gh = T(box.grid_h > 1 ? box.grid_h : 1), gw = T(box.grid_w > 1 ? box.grid_w : 1);
  const T y = sy + T(i) * bh + (T(iy) + T(0.5)) * bh / gh;
  const T x = sx + T(j) * bw + (T(ix) + T(0.5)) * bw / gw;
  return bilinear_roialign<T>(y, x, a.h, a.w);
}

template <typename T>
__global__ void roi_forward_kernel(const RoIArgs a, const T* input, const T* rois, const T* offset, T* out) {
  const int64_t bins = a.ph * a.pw;
  GRID_STRIDE(e, a.k * a.c * bins) {
    const int64_t bin = e % bins, ch = (e / bins) % a.c, n = e / (bins * a.c);
    const RoIBox<T> box = roi_box<T>(rois + n * 5, T(a.scale), a.ph, a.pw, a.sampling_ratio);
    const T* off = offset ? offset + n * 2 * bins : nullptr;
    const T* pl = input + (box.batch * a.c + ch) * a.h * a.w;
    T sum = 0;
    for (int64_t iy = 0; iy < box.grid_h; ++iy)
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const Corners<T> q = roi_corners(a, box, off, bin, iy, ix);
        sum += interpolate(pl, q);
      }
    out[e] = sum / box.count;
  }
}

template <typename T>
__global__ void roi_grad_input_atomic_kernel(const RoIArgs a, const T* grad, const T* rois, const T* offset, T* gin) {
  const int64_t bins = a.ph * a.pw;
  GRID_STRIDE(e, a.k * a.c * bins) {
    const int64_t bin = e % bins, ch = (e / bins) % a.c, n = e / (bins * a.c);
    const RoIBox<T> box = roi_box<T>(rois + n * 5, T(a.scale), a.ph, a.pw, a.sampling_ratio);
    const T* off = offset ? offset + n * 2 * bins : nullptr;
    T* pl = gin + (box.batch * a.c + ch) * a.h * a.w;
    const T gv = grad[e] / box.count;
    for (int64_t iy = 0; iy < box.grid_h; ++iy)
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const Corners<T> q = roi_corners(a, box, off, bin, iy, ix);
        for (int j = 0; j < 4; ++j)
          if (q.idx[j] >= 0) atomicAdd(pl + q.idx[j], q.w[j] * gv);
      }
  }
}

// Deterministic: one thread per input channel index, for every image, walking RoIs in order.
template <typename T>
__global__ void roi_grad_input_ordered_kernel(const RoIArgs a, const T* grad, const T* rois, const T* offset, T* gin) {
  const int64_t bins = a.ph * a.pw;
  GRID_STRIDE(ch, a.c) {
    for (int64_t n = 0; n < a.k; ++n) {
      const RoIBox<T> box = roi_box<T>(rois + n * 5, T(a.scale), a.ph, a.pw, a.sampling_ratio);
      const T* off = offset ? offset + n * 2 * bins : nullptr;
      T* pl = gin + (box.batch * a.c + ch) * a.h * a.w;
      for (int64_t bin = 0; bin < bins; ++bin) {
        const T gv = grad[(n * a.c + ch) * bins + bin] / box.count;
        for (int64_t iy = 0; iy < box.grid_h; ++iy)
          for (int64_t ix = 0; ix < box.grid_w; ++ix) {
            const Corners<T> q = roi_corners(a, box, off, bin, iy, ix);
            for (int j = 0; j < 4; ++j)
              if (q.idx[j] >= 0) pl[q.idx[j]] += q.w[j] * gv;
          }
      }
    }
  }
}

template <typename T>
__global__ void roi_grad_offset_kernel(const RoIArgs a, const T* grad, const T* input, const T* rois, const T* offset,
                                       T* goff) {
  const int64_t bins = a.ph * a.pw;
  GRID_STRIDE(e, a.k * bins) {
    const int64_t bin = e % bins, n = e / bins;
    const RoIBox<T> box = roi_box<T>(rois + n * 5, T(a.scale), a.ph, a.pw, a.sampling_ratio);
    const T* off = offset + n * 2 * bins;
    T ay = 0, ax = 0;
    for (int64_t iy = 0; iy < box.grid_h; ++iy)
      for (int64_t ix = 0; ix < box.grid_w; ++ix) {
        const Corners<T> q = roi_corners(a, box, off, bin, iy, ix);
        for (int64_t ch = 0; ch < a.c; ++ch) {
          const T* pl = input + (box.batch * a.c + ch) * a.h * a.w;
          const T gv = grad[(n * a.c + ch) * bins + bin];
          T vy = 0, vx = 0;
          for (int j = 0; j < 4; ++j) {
            vy += q.dy[j] * corner(pl, q, j);
            vx += q.dx[j] * corner(pl, q, j);
          }
          ay += gv * vy;
          ax += gv * vx;
        }
      }
    goff[n * 2 * bins + bin] = T(a.gamma) * box.w * ax / box.count;
    goff[n * 2 * bins + bins + bin] = T(a.gamma) * box.h * ay / box.count;
  }
}

at::Tensor roi_forward(const at::Tensor& input_, const at::Tensor& rois_, const std::optional<at::Tensor>& offset_,
                       int64_t ph, int64_t pw, double scale, int64_t sampling_ratio, double gamma) {
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor offset = offset_.has_value() ? offset_->contiguous() : at::Tensor();
  const RoIArgs a{rois.size(0), input.size(1), input.size(2), input.size(3), ph, pw, sampling_ratio, scale, gamma};
  at::Tensor out = at::zeros({a.k, a.c, ph, pw}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool_forward_cuda", [&] {
    DCN_LAUNCH(roi_forward_kernel<scalar_t>, blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream())(
        a, input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), offset.defined() ? offset.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> roi_backward(const at::Tensor& grad_, const at::Tensor& input_,
                                                const at::Tensor& rois_, const std::optional<at::Tensor>& offset_,
                                                int64_t ph, int64_t pw, double scale, int64_t sampling_ratio,
                                                double gamma, bool deterministic) {
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor grad = grad_.contiguous(), input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor offset = offset_.has_value() ? offset_->contiguous() : at::Tensor();
  const RoIArgs a{rois.size(0), input.size(1), input.size(2), input.size(3), ph, pw, sampling_ratio, scale, gamma};
  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_offset = offset.defined() ? at::zeros_like(offset) : at::empty({0}, input.options());  // none: empty
  if (grad.numel() == 0) return {grad_input, grad_offset};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool_backward_cuda", [&] {
    const scalar_t* off = offset.defined() ? offset.data_ptr<scalar_t>() : nullptr;
    if (deterministic) {
      DCN_LAUNCH(roi_grad_input_ordered_kernel<scalar_t>, blocks_for(a.c), kThreads, 0, stream)(
          a, grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), off, grad_input.data_ptr<scalar_t>());
    } else {
      DCN_LAUNCH(roi_grad_input_atomic_kernel<scalar_t>, blocks_for(grad.numel()), kThreads, 0, stream)(
          a, grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), off, grad_input.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (off) {
      DCN_LAUNCH(roi_grad_offset_kernel<scalar_t>, blocks_for(a.k * ph * pw), kThreads, 0, stream)(
          a, grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), off,
          grad_offset.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_input, grad_offset};
}

// ---- deform_psroi_pool --------------------------------------------------------------------------

struct PSArgs {
  int64_t k, c, h, w, d, group, pooled, part, spp, classes;
  double scale, trans_std;
};

__device__ int64_t group_of(int64_t i, int64_t group, int64_t pooled) {
  const int64_t g = i * group / pooled;
  return g < 0 ? 0 : (g > group - 1 ? group - 1 : g);
}

template <typename T>
__device__ bool ps_corners(const PSArgs& a, const PSBox<T>& box, const T* tr, int64_t cls, int64_t i, int64_t j,
                           int64_t ih, int64_t iw, Corners<T>& q) {
  const T bw = box.w / T(a.pooled), bh = box.h / T(a.pooled);
  T ws = T(j) * bw + box.x1, hs = T(i) * bh + box.y1;
  if (tr) {
    const int64_t pi = i * a.part / a.pooled, pj = j * a.part / a.pooled;
    ws += tr[((cls * 2) * a.part + pi) * a.part + pj] * T(a.trans_std) * box.w;
    hs += tr[((cls * 2 + 1) * a.part + pi) * a.part + pj] * T(a.trans_std) * box.h;
  }
  return psroi_corners<T>(hs + T(ih) * (bh / T(a.spp)), ws + T(iw) * (bw / T(a.spp)), a.h, a.w, q);
}

template <typename T>
__global__ void psroi_forward_kernel(const PSArgs a, const T* input, const T* rois, const T* trans, T* out) {
  const int64_t bins = a.pooled * a.pooled, per_class = a.d / a.classes;
  GRID_STRIDE(e, a.k * a.d * bins) {
    const int64_t bin = e % bins, d = (e / bins) % a.d, n = e / (bins * a.d), i = bin / a.pooled, j = bin % a.pooled;
    const PSBox<T> box = psroi_box<T>(rois + n * 5, T(a.scale));
    const T* tr = trans ? trans + n * 2 * a.classes * a.part * a.part : nullptr;
    const int64_t ch = (d * a.group + group_of(i, a.group, a.pooled)) * a.group + group_of(j, a.group, a.pooled);
    const T* pl = input + (box.batch * a.c + ch) * a.h * a.w;
    T sum = 0, count = 0;
    Corners<T> q;
    for (int64_t ih = 0; ih < a.spp; ++ih)
      for (int64_t iw = 0; iw < a.spp; ++iw)
        if (ps_corners(a, box, tr, d / per_class, i, j, ih, iw, q)) {
          count += 1;
          sum += interpolate(pl, q);
        }
    out[e] = count > 0 ? sum / count : T(0);
  }
}

template <typename T>
__device__ T ps_count(const PSArgs& a, const PSBox<T>& box, const T* tr, int64_t cls, int64_t i, int64_t j) {
  T count = 0;
  Corners<T> q;
  for (int64_t ih = 0; ih < a.spp; ++ih)
    for (int64_t iw = 0; iw < a.spp; ++iw) count += ps_corners(a, box, tr, cls, i, j, ih, iw, q) ? T(1) : T(0);
  return count;
}

// Input gradient and trans gradient, one thread per output element; `ordered` makes the input
// gradient deterministic by looping instead over RoIs inside one thread per output channel.
template <typename T>
__global__ void psroi_grad_atomic_kernel(const PSArgs a, const T* grad, const T* input, const T* rois, const T* trans,
                                         T* gin, T* gtrans) {
  const int64_t bins = a.pooled * a.pooled, per_class = a.d / a.classes, tstride = 2 * a.classes * a.part * a.part;
  GRID_STRIDE(e, a.k * a.d * bins) {
    const int64_t bin = e % bins, d = (e / bins) % a.d, n = e / (bins * a.d), i = bin / a.pooled, j = bin % a.pooled;
    const int64_t cls = d / per_class;
    const PSBox<T> box = psroi_box<T>(rois + n * 5, T(a.scale));
    const T* tr = trans ? trans + n * tstride : nullptr;
    const T count = ps_count(a, box, tr, cls, i, j);
    if (count == 0) continue;
    const int64_t ch = (d * a.group + group_of(i, a.group, a.pooled)) * a.group + group_of(j, a.group, a.pooled);
    T* gpl = gin + (box.batch * a.c + ch) * a.h * a.w;
    const T* pl = input + (box.batch * a.c + ch) * a.h * a.w;
    const T gv = grad[e] / count;
    T ax = 0, ay = 0;
    Corners<T> q;
    for (int64_t ih = 0; ih < a.spp; ++ih)
      for (int64_t iw = 0; iw < a.spp; ++iw)
        if (ps_corners(a, box, tr, cls, i, j, ih, iw, q)) {
          for (int jj = 0; jj < 4; ++jj) {
            if (q.idx[jj] >= 0) atomicAdd(gpl + q.idx[jj], q.w[jj] * gv);
            ax += q.dx[jj] * corner(pl, q, jj);
            ay += q.dy[jj] * corner(pl, q, jj);
          }
        }
    if (gtrans) {
      const int64_t pi = i * a.part / a.pooled, pj = j * a.part / a.pooled;
      atomicAdd(gtrans + n * tstride + ((cls * 2) * a.part + pi) * a.part + pj, ax * gv * T(a.trans_std) * box.w);
      atomicAdd(gtrans + n * tstride + ((cls * 2 + 1) * a.part + pi) * a.part + pj, ay * gv * T(a.trans_std) * box.h);
    }
  }
}

template <typename T>
__global__ void psroi_grad_ordered_kernel(const PSArgs a, const T* grad, const T* input, const T* rois, const T* trans,
                                          T* gin, T* gtrans) {
  const int64_t bins = a.pooled * a.pooled, per_class = a.d / a.classes, tstride = 2 * a.classes * a.part * a.part;
  // Input gradient: one thread per output channel (it owns the group*group input channels it reads).
  GRID_STRIDE(d, a.d) {
    const int64_t cls = d / per_class;
    for (int64_t n = 0; n < a.k; ++n) {
      const PSBox<T> box = psroi_box<T>(rois + n * 5, T(a.scale));
      const T* tr = trans ? trans + n * tstride : nullptr;
      for (int64_t bin = 0; bin < bins; ++bin) {
        const int64_t i = bin / a.pooled, j = bin % a.pooled;
        const T count = ps_count(a, box, tr, cls, i, j);
        if (count == 0) continue;
        const int64_t ch = (d * a.group + group_of(i, a.group, a.pooled)) * a.group + group_of(j, a.group, a.pooled);
        T* gpl = gin + (box.batch * a.c + ch) * a.h * a.w;
        const T gv = grad[(n * a.d + d) * bins + bin] / count;
        Corners<T> q;
        for (int64_t ih = 0; ih < a.spp; ++ih)
          for (int64_t iw = 0; iw < a.spp; ++iw)
            if (ps_corners(a, box, tr, cls, i, j, ih, iw, q))
              for (int jj = 0; jj < 4; ++jj)
                if (q.idx[jj] >= 0) gpl[q.idx[jj]] += q.w[jj] * gv;
      }
    }
  }
  // Trans gradient: one thread per RoI, in order.
  if (!gtrans) return;
  GRID_STRIDE(n, a.k) {
    const PSBox<T> box = psroi_box<T>(rois + n * 5, T(a.scale));
    const T* tr = trans + n * tstride;
    for (int64_t d = 0; d < a.d; ++d)
      for (int64_t bin = 0; bin < bins; ++bin) {
        const int64_t i = bin / a.pooled, j = bin % a.pooled, cls = d / per_class;
        const T count = ps_count(a, box, tr, cls, i, j);
        if (count == 0) continue;
        const int64_t ch = (d * a.group + group_of(i, a.group, a.pooled)) * a.group + group_of(j, a.group, a.pooled);
        const T* pl = input + (box.batch * a.c + ch) * a.h * a.w;
        const T gv = grad[(n * a.d + d) * bins + bin] / count;
        T ax = 0, ay = 0;
        Corners<T> q;
        for (int64_t ih = 0; ih < a.spp; ++ih)
          for (int64_t iw = 0; iw < a.spp; ++iw)
            if (ps_corners(a, box, tr, cls, i, j, ih, iw, q))
              for (int jj = 0; jj < 4; ++jj) {
                ax += q.dx[jj] * corner(pl, q, jj);
                ay += q.dy[jj] * corner(pl, q, jj);
              }
        const int64_t pi = i * a.part / a.pooled, pj = j * a.part / a.pooled;
        gtrans[n * tstride + ((cls * 2) * a.part + pi) * a.part + pj] += ax * gv * T(a.trans_std) * box.w;
        gtrans[n * tstride + ((cls * 2 + 1) * a.part + pi) * a.part + pj] += ay * gv * T(a.trans_std) * box.h;
      }
  }
}

PSArgs ps_args(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& trans, double scale, int64_t output_dim,
               int64_t group, int64_t pooled, int64_t part, int64_t spp, double trans_std) {
  return PSArgs{rois.size(0), input.size(1), input.size(2), input.size(3), output_dim, group, pooled, part, spp,
                trans.defined() ? trans.size(1) / 2 : 1, scale, trans_std};
}

at::Tensor psroi_forward(const at::Tensor& input_, const at::Tensor& rois_, const std::optional<at::Tensor>& trans_,
                         double scale, int64_t output_dim, int64_t group, int64_t pooled, int64_t part, int64_t spp,
                         double trans_std) {
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor trans = trans_.has_value() ? trans_->contiguous() : at::Tensor();
  const PSArgs a = ps_args(input, rois, trans, scale, output_dim, group, pooled, part, spp, trans_std);
  at::Tensor out = at::zeros({a.k, a.d, pooled, pooled}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "psroi_pool_forward_cuda", [&] {
    DCN_LAUNCH(psroi_forward_kernel<scalar_t>, blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream())(
        a, input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), trans.defined() ? trans.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> psroi_backward(const at::Tensor& grad_, const at::Tensor& input_,
                                                  const at::Tensor& rois_, const std::optional<at::Tensor>& trans_,
                                                  double scale, int64_t output_dim, int64_t group, int64_t pooled,
                                                  int64_t part, int64_t spp, double trans_std, bool deterministic) {
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor grad = grad_.contiguous(), input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor trans = trans_.has_value() ? trans_->contiguous() : at::Tensor();
  const PSArgs a = ps_args(input, rois, trans, scale, output_dim, group, pooled, part, spp, trans_std);
  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_trans = trans.defined() ? at::zeros_like(trans) : at::empty({0}, input.options());  // none: empty
  if (grad.numel() == 0) return {grad_input, grad_trans};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "psroi_pool_backward_cuda", [&] {
    const scalar_t* tr = trans.defined() ? trans.data_ptr<scalar_t>() : nullptr;
    scalar_t* gt = trans.defined() ? grad_trans.data_ptr<scalar_t>() : nullptr;
    if (deterministic) {
      DCN_LAUNCH(psroi_grad_ordered_kernel<scalar_t>, blocks_for(std::max(a.d, a.k)), kThreads, 0, stream)(
          a, grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), tr,
          grad_input.data_ptr<scalar_t>(), gt);
    } else {
      DCN_LAUNCH(psroi_grad_atomic_kernel<scalar_t>, blocks_for(grad.numel()), kThreads, 0, stream)(
          a, grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), tr,
          grad_input.data_ptr<scalar_t>(), gt);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_input, grad_trans};
}

}  // namespace

TORCH_LIBRARY_IMPL(DCN_LIBRARY, DCN_CUDA_KEY, m) {
  m.impl("roi_pool_forward", &roi_forward);
  m.impl("roi_pool_backward", &roi_backward);
  m.impl("psroi_pool_forward", &psroi_forward);
  m.impl("psroi_pool_backward", &psroi_backward);
}

}  // namespace dcnbench_ext
