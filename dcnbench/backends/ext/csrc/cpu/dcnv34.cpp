// DCNv3 and DCNv4 on the CPU, forward and backward, channels-last like the ops' layouts.
//
// Both ops are one kernel: DCNv4 is DCNv3 with the offsets and mask read from one packed tensor
// (GroupGeo's strides say where). Each point's position and in-map corners are computed once per
// (position, group) and shared by the group's D channels, which are contiguous in (N, H, W, C) and
// in the output, so the channel loops vectorise. There is no column buffer: memory is the
// output's, whatever the batch (im2col_step is accepted and has nothing to bound).
//
// Every output element is written by one task in a fixed order: the forward splits by output
// position; the backward by (image, group, channel slice), each task walking every position and
// point in order (the first slice's task also writes the offset and mask gradients). So results are bitwise reproducible, whatever
// the thread count. Out-of-map corners are never read (group_sampling.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../group_sampling.h"

// The schemas live here rather than in ext.cpp: this file is the whole of the DCNv3/DCNv4 ops.
TORCH_LIBRARY_FRAGMENT(dcnbench_ext, m) {
  m.def("dcnv3_forward(Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, int stride_h, "
        "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, int group_channels, "
        "float offset_scale, bool remove_center) -> Tensor");
  m.def("dcnv3_backward(Tensor grad, Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, "
        "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, "
        "int group_channels, float offset_scale, bool remove_center) -> (Tensor, Tensor, Tensor)");
  m.def("dcnv4_forward(Tensor input, Tensor offset_mask, int kernel_h, int kernel_w, int stride_h, int stride_w, "
        "int pad_h, int pad_w, int dilation_h, int dilation_w, int group, int group_channels, float offset_scale, "
        "bool remove_center, bool softmax) -> Tensor");
  m.def("dcnv4_backward(Tensor grad, Tensor input, Tensor offset_mask, int kernel_h, int kernel_w, int stride_h, "
        "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, int group_channels, "
        "float offset_scale, bool remove_center, bool softmax) -> (Tensor, Tensor)");
}

namespace dcnbench_ext {
namespace {

constexpr int64_t kPositionsPerTask = 16;
constexpr int64_t kMinChannelSlice = 8;

GroupGeo group_geometry(const at::Tensor& input, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                        int64_t pw, int64_t dh, int64_t dw, int64_t group, int64_t d, bool remove_center) {
  GroupGeo g{};
  g.n = input.size(0); g.h = input.size(1); g.w = input.size(2); g.c = input.size(3);
  g.group = group; g.d = d; g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw;
  g.ho = (g.h + 2 * ph - (dh * (kh - 1) + 1)) / sh + 1;
  g.wo = (g.w + 2 * pw - (dw * (kw - 1) + 1)) / sw + 1;
  g.q = g.ho * g.wo;
  g.remove_center = remove_center;
  g.p = kh * kw - (remove_center ? 1 : 0);
  TORCH_CHECK(g.c == group * d, "input has ", g.c, " channels, expected group*group_channels = ", group * d);
  return g;
}

GroupGeo dcnv3_layout(GroupGeo g) {
  g.off_row = g.group * g.p * 2; g.off_group = g.p * 2;
  g.mask_row = g.group * g.p; g.mask_group = g.p; g.mask_shift = 0;
  return g;
}

GroupGeo dcnv4_layout(GroupGeo g, int64_t cpad) {
  TORCH_CHECK(cpad % 8 == 0 && cpad >= g.group * g.p * 3, "offset_mask has ", cpad,
              " lanes, expected a multiple of 8 >= G*P*3 = ", g.group * g.p * 3);
  g.off_row = cpad; g.off_group = g.p * 3;
  g.mask_row = cpad; g.mask_group = g.p * 3; g.mask_shift = g.p * 2;
  return g;
}

// (i, j) of each point in the op's order: x-major, y fastest, the centre tap left out when asked.
std::vector<std::pair<int64_t, int64_t>> taps(const GroupGeo& g) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t i = 0; i < g.kw; ++i)
    for (int64_t j = 0; j < g.kh; ++j)
      if (!(g.remove_center && i == g.kw / 2 && j == g.kh / 2)) out.emplace_back(i, j);
  return out;
}

template <typename T>
void load_mask(const GroupGeo& g, const T* mask, int64_t pos, int64_t gi, bool softmax, T* m) {
  const T* src = mask + pos * g.mask_row + gi * g.mask_group + g.mask_shift;
  for (int64_t k = 0; k < g.p; ++k) m[k] = src[k];
  if (softmax) group_softmax(m, g.p);
}

template <typename T>
GroupPoint<T> point_at(const GroupGeo& g, const std::pair<int64_t, int64_t>& tap, const T* off, int64_t ho, int64_t wo,
                       int64_t k, T os) {
  T y, x;
  group_position<T>(g, ho, wo, tap.first, tap.second, off[2 * k], off[2 * k + 1], os, y, x);
  return group_point<T>(y, x, g.h, g.w);
}

// A point's in-map corners as four (row, weight) slots; a missing corner points at `zeros` (a
// buffer of D zeros, not the map) with weight 0, so the channel loop stays one fused pass.
template <typename T>
struct Slots {
  const T* row[4];
  T w[4], dy[4], dx[4];
};

template <typename T>
Slots<T> slots(const GroupPoint<T>& pt, const T* base, int64_t c, const T* zeros) {
  Slots<T> s;
  for (int k = 0; k < 4; ++k) {
    const bool in = k < pt.count;
    s.row[k] = in ? base + pt.pix[k] * c : zeros;
    s.w[k] = in ? pt.w[k] : T(0);
    s.dy[k] = in ? pt.dy[k] : T(0);
    s.dx[k] = in ? pt.dx[k] : T(0);
  }
  return s;
}

template <typename T>
void forward_cpu(const GroupGeo& g, const T* x, const T* off, const T* mask, bool softmax, T os, T* out) {
  const auto tap = taps(g);
  at::parallel_for(0, g.n * g.q, kPositionsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<T> m(g.p), zeros(g.d, T(0));
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t n = pos / g.q, ho = (pos % g.q) / g.wo, wo = pos % g.wo;
      const T* xn = x + n * g.h * g.w * g.c;
      for (int64_t gi = 0; gi < g.group; ++gi) {
        load_mask(g, mask, pos, gi, softmax, m.data());
        const T* o = off + pos * g.off_row + gi * g.off_group;
        T* dst = out + pos * g.c + gi * g.d;
        for (int64_t k = 0; k < g.p; ++k) {
          const GroupPoint<T> pt = point_at(g, tap[k], o, ho, wo, k, os);
          if (pt.count == 0) continue;
          const Slots<T> s = slots(pt, xn + gi * g.d, g.c, zeros.data());
          const T w0 = s.w[0] * m[k], w1 = s.w[1] * m[k], w2 = s.w[2] * m[k], w3 = s.w[3] * m[k];
          const T *r0 = s.row[0], *r1 = s.row[1], *r2 = s.row[2], *r3 = s.row[3];
#pragma omp simd
          for (int64_t d = 0; d < g.d; ++d) dst[d] += w0 * r0[d] + w1 * r1[d] + w2 * r2[d] + w3 * r3[d];
        }
      }
    }
  });
}

// The backward, one pass: tasks own (image, group, channel slice) of grad_x and walk every position
// and point of the image in order, so no two tasks write one element and every sum has a fixed
// order. Each point's position and corners are computed once for both gradients: the slice's
// share of the input gradient is scattered, and the task of slice 0 also takes the point's offset
// and mask gradients (one dot product of the output gradient with each in-map corner's D channels,
// scaled by the corner's weight and its slopes), the same arithmetic whatever the slicing, so the
// results are bitwise the same on any thread count.
template <typename T>
void backward_cpu(const GroupGeo& g, const T* grad, const T* x, const T* off, const T* mask, bool softmax, T os,
                  T* grad_x, T* grad_off, T* grad_mask) {
  const auto tap = taps(g);
  const int64_t threads = at::get_num_threads();
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(g.d / kMinChannelSlice, 1),
                                                                (threads + g.n * g.group - 1) / (g.n * g.group)));
  at::parallel_for(0, g.n * g.group * slices, 1, [&](int64_t begin, int64_t end) {
    // The task's group of the map and of its gradient, copied to rows of D: in (N, H, W, C) a
    // group's rows lie C apart, and with C a multiple of 1024 (dcnv4-bench's 7x7 stage: 32 x 32)
    // every pixel of it falls in one cache set, so reading and updating them in place thrashes.
    std::vector<T> m(g.p), gm(g.p), zeros(g.d, T(0)), sink(4 * g.d), xs(g.h * g.w * g.d), gxs(g.h * g.w * g.d);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (g.group * slices), gi = (t / slices) % g.group, s = t % slices;
      const int64_t lo = s * g.d / slices, hi = (s + 1) * g.d / slices;
      const bool offsets_here = s == 0;
      const int64_t pixels = g.h * g.w;
      T* gx_out = grad_x + n * pixels * g.c + gi * g.d;
      if (offsets_here) {
        const T* src = x + n * pixels * g.c + gi * g.d;
        for (int64_t p = 0; p < pixels; ++p) std::copy(src + p * g.c, src + p * g.c + g.d, xs.data() + p * g.d);
      }
      std::fill(gxs.begin(), gxs.end(), T(0));
      const T* xn = xs.data();
      T* gxn = gxs.data();
      for (int64_t q = 0; q < g.q; ++q) {
        const int64_t pos = n * g.q + q, ho = q / g.wo, wo = q % g.wo;
        load_mask(g, mask, pos, gi, softmax, m.data());
        const T* o = off + pos * g.off_row + gi * g.off_group;
        const T* go = grad + pos * g.c + gi * g.d;
        T* goff = grad_off + pos * g.off_row + gi * g.off_group;
        for (int64_t k = 0; k < g.p; ++k) {
          const GroupPoint<T> pt = point_at(g, tap[k], o, ho, wo, k, os);
          gm[k] = T(0);
          if (pt.count == 0) continue;  // the gradient buffers start at 0
          if (offsets_here) {
            const Slots<T> sl = slots(pt, xn, g.d, zeros.data());
            const T *r0 = sl.row[0], *r1 = sl.row[1], *r2 = sl.row[2], *r3 = sl.row[3];
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int64_t d = 0; d < g.d; ++d) {
              a0 += go[d] * r0[d];
              a1 += go[d] * r1[d];
              a2 += go[d] * r2[d];
              a3 += go[d] * r3[d];
            }
            const T sx = sl.dx[0] * a0 + sl.dx[1] * a1 + sl.dx[2] * a2 + sl.dx[3] * a3;
            const T sy = sl.dy[0] * a0 + sl.dy[1] * a1 + sl.dy[2] * a2 + sl.dy[3] * a3;
            goff[2 * k] = sx * m[k] * os;
            goff[2 * k + 1] = sy * m[k] * os;
            gm[k] = sl.w[0] * a0 + sl.w[1] * a1 + sl.w[2] * a2 + sl.w[3] * a3;
          }
          T* row[4];
          T w[4];
          for (int c = 0; c < 4; ++c) {
            const bool in = c < pt.count;
            row[c] = in ? gxn + pt.pix[c] * g.d : sink.data() + c * g.d;
            w[c] = in ? pt.w[c] * m[k] : T(0);
          }
          // The four rows are distinct pixels or distinct sink rows: one pass over the channel slice.
          T *r0 = row[0], *r1 = row[1], *r2 = row[2], *r3 = row[3];
          const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
#pragma omp simd
          for (int64_t d = lo; d < hi; ++d) {
            const T v = go[d];
            r0[d] += w0 * v;
            r1[d] += w1 * v;
            r2[d] += w2 * v;
            r3[d] += w3 * v;
          }
        }
        if (!offsets_here) continue;
        T* gmask = grad_mask + pos * g.mask_row + gi * g.mask_group + g.mask_shift;
        if (softmax) {  // through the softmax: s_k (g_k − Σ_j g_j s_j)
          T dot = 0;
          for (int64_t k = 0; k < g.p; ++k) dot += gm[k] * m[k];
          for (int64_t k = 0; k < g.p; ++k) gmask[k] = m[k] * (gm[k] - dot);
        } else {
          for (int64_t k = 0; k < g.p; ++k) gmask[k] = gm[k];
        }
      }
      for (int64_t p = 0; p < pixels; ++p)
        std::copy(gxs.data() + p * g.d + lo, gxs.data() + p * g.d + hi, gx_out + p * g.c + lo);
    }
  });
}

// offset_scale reaches the official kernels as a C float: round it the same way.
template <typename T>
T float_scale(double offset_scale) {
  return T(static_cast<float>(offset_scale));
}

at::Tensor forward(const GroupGeo& g, const at::Tensor& x, const at::Tensor& off, const at::Tensor& mask, bool softmax,
                   double offset_scale) {
  at::Tensor out = at::zeros({g.n, g.ho, g.wo, g.c}, x.options());
  if (g.n == 0 || g.q == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dcnv34_forward_cpu", [&] {
    forward_cpu<scalar_t>(g, x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), mask.data_ptr<scalar_t>(), softmax,
                          float_scale<scalar_t>(offset_scale), out.data_ptr<scalar_t>());
  });
  return out;
}

// grad_off and grad_mask may be one tensor (DCNv4's packed lanes): the layout keeps their writes apart.
void backward(const GroupGeo& g, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& off,
              const at::Tensor& mask, bool softmax, double offset_scale, at::Tensor& grad_x, at::Tensor& grad_off,
              at::Tensor& grad_mask) {
  if (g.n == 0 || g.q == 0) return;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dcnv34_backward_cpu", [&] {
    const scalar_t os = float_scale<scalar_t>(offset_scale);
    backward_cpu<scalar_t>(g, grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(),
                           mask.data_ptr<scalar_t>(), softmax, os, grad_x.data_ptr<scalar_t>(),
                           grad_off.data_ptr<scalar_t>(), grad_mask.data_ptr<scalar_t>());
  });
}

at::Tensor dcnv3_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask, int64_t kh,
                         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                         int64_t group, int64_t d, double offset_scale, bool remove_center) {
  const at::Tensor x = input.contiguous();
  const GroupGeo g = dcnv3_layout(group_geometry(x, kh, kw, sh, sw, ph, pw, dh, dw, group, d, remove_center));
  return forward(g, x, offset.contiguous(), mask.contiguous(), false, offset_scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset_, const at::Tensor& mask_, int64_t kh,
    int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t group, int64_t d,
    double offset_scale, bool remove_center) {
  const at::Tensor x = input.contiguous(), offset = offset_.contiguous(), mask = mask_.contiguous();
  const GroupGeo g = dcnv3_layout(group_geometry(x, kh, kw, sh, sw, ph, pw, dh, dw, group, d, remove_center));
  at::Tensor grad_x = at::zeros_like(x), grad_off = at::zeros_like(offset), grad_mask = at::zeros_like(mask);
  backward(g, grad.contiguous(), x, offset, mask, false, offset_scale, grad_x, grad_off, grad_mask);
  return {grad_x, grad_off, grad_mask};
}

at::Tensor dcnv4_forward(const at::Tensor& input, const at::Tensor& offset_mask, int64_t kh, int64_t kw, int64_t sh,
                         int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t group, int64_t d,
                         double offset_scale, bool remove_center, bool softmax) {
  const at::Tensor x = input.contiguous(), om = offset_mask.contiguous();
  const GroupGeo g = dcnv4_layout(group_geometry(x, kh, kw, sh, sw, ph, pw, dh, dw, group, d, remove_center), om.size(3));
  return forward(g, x, om, om, softmax, offset_scale);
}

std::tuple<at::Tensor, at::Tensor> dcnv4_backward(const at::Tensor& grad, const at::Tensor& input,
                                                  const at::Tensor& offset_mask, int64_t kh, int64_t kw, int64_t sh,
                                                  int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                                  int64_t group, int64_t d, double offset_scale, bool remove_center,
                                                  bool softmax) {
  const at::Tensor x = input.contiguous(), om = offset_mask.contiguous();
  const GroupGeo g = dcnv4_layout(group_geometry(x, kh, kw, sh, sw, ph, pw, dh, dw, group, d, remove_center), om.size(3));
  at::Tensor grad_x = at::zeros_like(x), grad_om = at::zeros_like(om);  // padding lanes keep their 0
  backward(g, grad.contiguous(), x, om, om, softmax, offset_scale, grad_x, grad_om, grad_om);
  return {grad_x, grad_om};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnbench_ext, CPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward);
  m.impl("dcnv3_backward", &dcnv3_backward);
  m.impl("dcnv4_forward", &dcnv4_forward);
  m.impl("dcnv4_backward", &dcnv4_backward);
}

}  // namespace dcnbench_ext
