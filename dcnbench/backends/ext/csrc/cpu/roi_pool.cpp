// deform_roi_pool (mmcv's) and deform_psroi_pool (MXNet's) on the CPU, forward and backward.
//
// Each sampling point's corners are computed once and reused for every channel that reads it.
// Forward and the offset gradients are split by RoI; the input gradient is split by input
// channel (each task owns whole channel planes), so nothing races and every sum has a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../library.h"
#include "../sampling.h"
#include "../rois.h"

namespace dcnbench_ext {
namespace {

// ---- deform_roi_pool ----------------------------------------------------------------------------

template <typename T>
struct RoIPoint {  // where sample (iy, ix) of bin (i, j) of a RoI reads, and the offset chain factors
  bool active;
  Corners<T> q;
};

template <typename T>
RoIPoint<T> roi_point(const RoIBox<T>& box, const T* off, int64_t bins, int64_t bin, int64_t i, int64_t j,
                      int64_t iy, int64_t ix, int64_t ph, int64_t pw, T gamma, int64_t h, int64_t w) {
  RoIPoint<T> p;
  p.active = iy < box.grid_h && ix < box.grid_w;
  T sx = box.x1, sy = box.y1;
  if (off) {
    sx += gamma * box.w * off[bin];
    sy += gamma * box.h * off[bins + bin];
  }
  const T bh = box.h / T(ph), bw = box.w / T(pw);
  const T gh = T(std::max<int64_t>(box.grid_h, 1)), gw = T(std::max<int64_t>(box.grid_w, 1));
  const T y = sy + T(i) * bh + (T(iy) + T(0.5)) * bh / gh;
  const T x = sx + T(j) * bw + (T(ix) + T(0.5)) * bw / gw;
  p.q = bilinear_roialign<T>(y, x, h, w);
  return p;
}

at::Tensor roi_forward(const at::Tensor& input_, const at::Tensor& rois_, const std::optional<at::Tensor>& offset_,
                       int64_t ph, int64_t pw, double scale, int64_t sampling_ratio, double gamma) {
  const at::Tensor input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor offset = offset_.has_value() ? offset_->contiguous() : at::Tensor();
  const int64_t c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0), bins = ph * pw;
  at::Tensor out = at::zeros({k, c, ph, pw}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool_forward_cpu", [&] {
    using T = scalar_t;
    const T* in = input.data_ptr<T>();
    const T* r = rois.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const RoIBox<T> box = roi_box<T>(r + n * 5, T(scale), ph, pw, sampling_ratio);
        const T* off = offset.defined() ? offset.data_ptr<T>() + n * 2 * bins : nullptr;
        const T* plane0 = in + box.batch * c * h * w;
        for (int64_t bin = 0; bin < bins; ++bin) {
          const int64_t i = bin / pw, j = bin % pw;
          for (int64_t iy = 0; iy < box.grid_h; ++iy)
            for (int64_t ix = 0; ix < box.grid_w; ++ix) {
              const RoIPoint<T> p = roi_point(box, off, bins, bin, i, j, iy, ix, ph, pw, T(gamma), h, w);
              for (int64_t ch = 0; ch < c; ++ch) {
                const T* pl = plane0 + ch * h * w;
                o[(n * c + ch) * bins + bin] += interpolate(pl, p.q);
              }
            }
          for (int64_t ch = 0; ch < c; ++ch) o[(n * c + ch) * bins + bin] /= box.count;
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> roi_backward(const at::Tensor& grad_, const at::Tensor& input_,
                                                const at::Tensor& rois_, const std::optional<at::Tensor>& offset_,
                                                int64_t ph, int64_t pw, double scale, int64_t sampling_ratio,
                                                double gamma, bool /*deterministic*/) {
  const at::Tensor grad = grad_.contiguous(), input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor offset = offset_.has_value() ? offset_->contiguous() : at::Tensor();
  const int64_t c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0), bins = ph * pw;
  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_offset = offset.defined() ? at::zeros_like(offset) : at::empty({0}, input.options());  // none: empty
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool_backward_cpu", [&] {
    using T = scalar_t;
    const T* in = input.data_ptr<T>();
    const T* r = rois.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    T* gin = grad_input.data_ptr<T>();
    const T* offs = offset.defined() ? offset.data_ptr<T>() : nullptr;
    // Input gradient: channel chunks own their planes.
    const int64_t chunks = std::min<int64_t>(c, std::max<int64_t>(1, 2 * at::get_num_threads()));
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c0 = t * c / chunks, c1 = (t + 1) * c / chunks;
        for (int64_t n = 0; n < k; ++n) {
          const RoIBox<T> box = roi_box<T>(r + n * 5, T(scale), ph, pw, sampling_ratio);
          const T* off = offs ? offs + n * 2 * bins : nullptr;
          for (int64_t bin = 0; bin < bins; ++bin)
            for (int64_t iy = 0; iy < box.grid_h; ++iy)
              for (int64_t ix = 0; ix < box.grid_w; ++ix) {
                const RoIPoint<T> p = roi_point(box, off, bins, bin, bin / pw, bin % pw, iy, ix, ph, pw, T(gamma), h, w);
                for (int64_t ch = c0; ch < c1; ++ch) {
                  const T gv = g[(n * c + ch) * bins + bin] / box.count;
                  T* pl = gin + (box.batch * c + ch) * h * w;
                  for (int jj = 0; jj < 4; ++jj)
                    if (p.q.idx[jj] >= 0) pl[p.q.idx[jj]] += p.q.w[jj] * gv;
                }
              }
        }
      }
    });
    if (!offs) return;
    T* goff = grad_offset.data_ptr<T>();
    at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const RoIBox<T> box = roi_box<T>(r + n * 5, T(scale), ph, pw, sampling_ratio);
        const T* off = offs + n * 2 * bins;
        const T* plane0 = in + box.batch * c * h * w;
        for (int64_t bin = 0; bin < bins; ++bin) {
          T ay = 0, ax = 0;
          for (int64_t iy = 0; iy < box.grid_h; ++iy)
            for (int64_t ix = 0; ix < box.grid_w; ++ix) {
              const RoIPoint<T> p = roi_point(box, off, bins, bin, bin / pw, bin % pw, iy, ix, ph, pw, T(gamma), h, w);
              for (int64_t ch = 0; ch < c; ++ch) {
                const T* pl = plane0 + ch * h * w;
                const T gv = g[(n * c + ch) * bins + bin];
                T vy = 0, vx = 0;
                for (int jj = 0; jj < 4; ++jj) {
                  const T v = corner(pl, p.q, jj);
                  vy += p.q.dy[jj] * v;
                  vx += p.q.dx[jj] * v;
                }
                ay += gv * vy;
                ax += gv * vx;
              }
            }
          goff[n * 2 * bins + bin] = T(gamma) * box.w * ax / box.count;
          goff[n * 2 * bins + bins + bin] = T(gamma) * box.h * ay / box.count;
        }
      }
    });
  });
  return {grad_input, grad_offset};
}

// ---- deform_psroi_pool --------------------------------------------------------------------------

struct PSParams {
  int64_t c, h, w, k, d, group, pooled, part, spp, classes;
};

template <typename T>
struct PSPoint {
  bool keep;
  Corners<T> q;
};

// Sample (ih, iw) of bin (i, j) for offset class cls.
template <typename T>
PSPoint<T> ps_point(const PSParams& p, const PSBox<T>& box, const T* tr, int64_t cls, int64_t i, int64_t j,
                    int64_t ih, int64_t iw, T trans_std) {
  const T bw = box.w / T(p.pooled), bh = box.h / T(p.pooled);
  T ws = T(j) * bw + box.x1, hs = T(i) * bh + box.y1;
  if (tr) {
    const int64_t pi = i * p.part / p.pooled, pj = j * p.part / p.pooled;
    ws += tr[((cls * 2) * p.part + pi) * p.part + pj] * trans_std * box.w;
    hs += tr[((cls * 2 + 1) * p.part + pi) * p.part + pj] * trans_std * box.h;
  }
  const T x = ws + T(iw) * (bw / T(p.spp)), y = hs + T(ih) * (bh / T(p.spp));
  PSPoint<T> s;
  s.keep = psroi_corners<T>(y, x, p.h, p.w, s.q);
  return s;
}

int64_t group_of(int64_t i, int64_t group, int64_t pooled) {
  return std::min(std::max<int64_t>(i * group / pooled, 0), group - 1);
}

at::Tensor psroi_forward(const at::Tensor& input_, const at::Tensor& rois_, const std::optional<at::Tensor>& trans_,
                         double scale, int64_t output_dim, int64_t group, int64_t pooled, int64_t part, int64_t spp,
                         double trans_std) {
  const at::Tensor input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor trans = trans_.has_value() ? trans_->contiguous() : at::Tensor();
  const PSParams p{input.size(1), input.size(2), input.size(3), rois.size(0), output_dim, group, pooled, part, spp,
                   trans.defined() ? trans.size(1) / 2 : 1};
  at::Tensor out = at::zeros({p.k, p.d, pooled, pooled}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "psroi_pool_forward_cpu", [&] {
    using T = scalar_t;
    const T* in = input.data_ptr<T>();
    const T* r = rois.data_ptr<T>();
    T* o = out.data_ptr<T>();
    const int64_t per_class = p.d / p.classes;
    at::parallel_for(0, p.k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const PSBox<T> box = psroi_box<T>(r + n * 5, T(scale));
        const T* tr = trans.defined() ? trans.data_ptr<T>() + n * 2 * p.classes * p.part * p.part : nullptr;
        for (int64_t cls = 0; cls < p.classes; ++cls)
          for (int64_t i = 0; i < pooled; ++i)
            for (int64_t j = 0; j < pooled; ++j) {
              const int64_t gh = group_of(i, group, pooled), gw = group_of(j, group, pooled);
              T count = 0;
              for (int64_t ih = 0; ih < spp; ++ih)
                for (int64_t iw = 0; iw < spp; ++iw) {
                  const PSPoint<T> s = ps_point(p, box, tr, cls, i, j, ih, iw, T(trans_std));
                  if (!s.keep) continue;
                  count += 1;
                  for (int64_t d = cls * per_class; d < (cls + 1) * per_class; ++d) {
                    const T* pl = in + (box.batch * p.c + (d * group + gh) * group + gw) * p.h * p.w;
                    o[((n * p.d + d) * pooled + i) * pooled + j] += interpolate(pl, s.q);
                  }
                }
              for (int64_t d = cls * per_class; d < (cls + 1) * per_class; ++d) {
                T& v = o[((n * p.d + d) * pooled + i) * pooled + j];
                v = count > 0 ? v / count : T(0);
              }
            }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> psroi_backward(const at::Tensor& grad_, const at::Tensor& input_,
                                                  const at::Tensor& rois_, const std::optional<at::Tensor>& trans_,
                                                  double scale, int64_t output_dim, int64_t group, int64_t pooled,
                                                  int64_t part, int64_t spp, double trans_std, bool /*deterministic*/) {
  const at::Tensor grad = grad_.contiguous(), input = input_.contiguous(), rois = rois_.contiguous();
  check_batch_indices(rois, input.size(0));
  const at::Tensor trans = trans_.has_value() ? trans_->contiguous() : at::Tensor();
  const PSParams p{input.size(1), input.size(2), input.size(3), rois.size(0), output_dim, group, pooled, part, spp,
                   trans.defined() ? trans.size(1) / 2 : 1};
  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_trans = trans.defined() ? at::zeros_like(trans) : at::empty({0}, input.options());  // none: empty
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "psroi_pool_backward_cpu", [&] {
    using T = scalar_t;
    const T* in = input.data_ptr<T>();
    const T* r = rois.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    T* gin = grad_input.data_ptr<T>();
    const T* trs = trans.defined() ? trans.data_ptr<T>() : nullptr;
    const int64_t per_class = p.d / p.classes, tstride = 2 * p.classes * p.part * p.part;
    auto kept = [&](const PSBox<T>& box, const T* tr, int64_t cls, int64_t i, int64_t j) {
      T count = 0;
      for (int64_t ih = 0; ih < spp; ++ih)
        for (int64_t iw = 0; iw < spp; ++iw) count += ps_point(p, box, tr, cls, i, j, ih, iw, T(trans_std)).keep;
      return count;
    };
    // Input gradient: tasks own chunks of output channels (and so the group*group input channels
    // each reads); each task walks every RoI and bin once, sharing the samples across its channels.
    const int64_t chunks = std::min<int64_t>(p.d, std::max<int64_t>(1, 2 * at::get_num_threads()));
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<PSPoint<T>> pts(spp * spp);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t d0 = t * p.d / chunks, d1 = (t + 1) * p.d / chunks;
        for (int64_t n = 0; n < p.k; ++n) {
          const PSBox<T> box = psroi_box<T>(r + n * 5, T(scale));
          const T* tr = trs ? trs + n * tstride : nullptr;
          for (int64_t cls = d0 / per_class; cls <= (d1 - 1) / per_class; ++cls) {
            const int64_t da = std::max(d0, cls * per_class), db = std::min(d1, (cls + 1) * per_class);
            for (int64_t i = 0; i < pooled; ++i)
              for (int64_t j = 0; j < pooled; ++j) {
                int64_t kept_n = 0;
                for (int64_t ih = 0; ih < spp; ++ih)
                  for (int64_t iw = 0; iw < spp; ++iw) {
                    const PSPoint<T> s = ps_point(p, box, tr, cls, i, j, ih, iw, T(trans_std));
                    if (s.keep) pts[kept_n++] = s;
                  }
                if (kept_n == 0) continue;
                const int64_t gh = group_of(i, group, pooled), gw = group_of(j, group, pooled);
                for (int64_t d = da; d < db; ++d) {
                  const T gv = g[((n * p.d + d) * pooled + i) * pooled + j] / T(kept_n);
                  T* pl = gin + (box.batch * p.c + (d * group + gh) * group + gw) * p.h * p.w;
                  for (int64_t s = 0; s < kept_n; ++s)
                    for (int jj = 0; jj < 4; ++jj)
                      if (pts[s].q.idx[jj] >= 0) pl[pts[s].q.idx[jj]] += pts[s].q.w[jj] * gv;
                }
              }
          }
        }
      }
    });
    if (!trs) return;
    T* gt = grad_trans.data_ptr<T>();
    at::parallel_for(0, p.k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const PSBox<T> box = psroi_box<T>(r + n * 5, T(scale));
        const T* tr = trs + n * tstride;
        for (int64_t cls = 0; cls < p.classes; ++cls)
          for (int64_t i = 0; i < pooled; ++i)
            for (int64_t j = 0; j < pooled; ++j) {
              const T count = kept(box, tr, cls, i, j);
              if (count == 0) continue;
              const int64_t gh = group_of(i, group, pooled), gw = group_of(j, group, pooled);
              T ax = 0, ay = 0;
              for (int64_t ih = 0; ih < spp; ++ih)
                for (int64_t iw = 0; iw < spp; ++iw) {
                  const PSPoint<T> s = ps_point(p, box, tr, cls, i, j, ih, iw, T(trans_std));
                  if (!s.keep) continue;
                  for (int64_t d = cls * per_class; d < (cls + 1) * per_class; ++d) {
                    const T* pl = in + (box.batch * p.c + (d * group + gh) * group + gw) * p.h * p.w;
                    const T gv = g[((n * p.d + d) * pooled + i) * pooled + j];
                    T vx = 0, vy = 0;
                    for (int jj = 0; jj < 4; ++jj) {
                      vx += s.q.dx[jj] * corner(pl, s.q, jj);
                      vy += s.q.dy[jj] * corner(pl, s.q, jj);
                    }
                    ax += gv * vx;
                    ay += gv * vy;
                  }
                }
              const int64_t pi = i * part / pooled, pj = j * part / pooled;
              gt[n * tstride + ((cls * 2) * part + pi) * part + pj] += ax / count * T(trans_std) * box.w;
              gt[n * tstride + ((cls * 2 + 1) * part + pi) * part + pj] += ay / count * T(trans_std) * box.h;
            }
      }
    });
  });
  return {grad_input, grad_trans};
}

}  // namespace

TORCH_LIBRARY_IMPL(DCN_LIBRARY, CPU, m) {
  m.impl("roi_pool_forward", &roi_forward);
  m.impl("roi_pool_backward", &roi_backward);
  m.impl("psroi_pool_forward", &psroi_forward);
  m.impl("psroi_pool_backward", &psroi_backward);
}

}  // namespace dcnbench_ext
