// Multi-scale deformable attention on the CPU, forward and backward (schemas in ext.cpp).
//
// No column buffer: memory is the output's and the gradients', whatever the batch, so im2col_step
// (accepted, checked by the wrapper) has nothing to bound. Each point's corners and weights are
// computed once (ms_deform_attn.h) and shared by its head's D channels, contiguous in value
// (N, S, M, D) and in the output, so the channel loops vectorise.
//
// Every output element is written by one task in a fixed order: the forward and the location and
// weight gradients split by (image, query); the value gradient by (image, head, channel slice),
// each task walking every query, level and point in order. So results are bitwise the same on any
// thread count. Corners outside a level are never read (a missing corner points at a row of zeros).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../library.h"
#include "../ms_deform_attn.h"

namespace dcnbench_ext {
namespace {

constexpr int64_t kQueriesPerTask = 4;
constexpr int64_t kMinChannelSlice = 8;

struct Levels {
  std::vector<int64_t> h, w, start;
};

// The level table, checked against value's S (the wrapper checked it too; a direct caller may not).
Levels level_table(const at::Tensor& shapes_, const at::Tensor& starts_, int64_t s) {
  TORCH_CHECK(shapes_.dim() == 2 && shapes_.size(1) == 2 && shapes_.scalar_type() == at::kLong,
              "value_spatial_shapes must be (L, 2) int64");
  TORCH_CHECK(starts_.dim() == 1 && starts_.size(0) == shapes_.size(0) && starts_.scalar_type() == at::kLong,
              "value_level_start_index must be (L,) int64");
  const at::Tensor shapes = shapes_.contiguous(), starts = starts_.contiguous();
  Levels t;
  int64_t total = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t h = shapes.data_ptr<int64_t>()[2 * l], w = shapes.data_ptr<int64_t>()[2 * l + 1];
    TORCH_CHECK(h >= 1 && w >= 1, "level ", l, " is ", h, "x", w, ", expected positive sizes");
    TORCH_CHECK(starts.data_ptr<int64_t>()[l] == total, "value_level_start_index[", l, "] is ",
                starts.data_ptr<int64_t>()[l], ", expected ", total, " (the running sum of H*W)");
    t.h.push_back(h);
    t.w.push_back(w);
    t.start.push_back(total);
    total += h * w;
  }
  TORCH_CHECK(total == s, "value has S = ", s, " positions, expected the sum of H*W = ", total);
  return t;
}

MsdaGeo geometry(const at::Tensor& value, const at::Tensor& loc) {
  TORCH_CHECK(value.dim() == 4 && loc.dim() == 6, "value must be (N, S, M, D), sampling_locations (N, Lq, M, L, P, 2)");
  return MsdaGeo{value.size(0), value.size(1), value.size(2), value.size(3), loc.size(3), loc.size(1), loc.size(4)};
}

// A point's in-map corners as four (row, weight) slots; a missing corner points at `zeros` (a row of
// D zeros, not the map) with weight 0, so the channel loop stays one fused pass.
template <typename T>
struct Slots {
  const T* row[4];
  T w[4];
};

template <typename T>
Slots<T> slots(const Corners<T>& c, const T* level_row0, int64_t pixel_stride, const T* zeros, T scale) {
  Slots<T> s;
  for (int j = 0; j < 4; ++j) {
    const bool in = c.idx[j] >= 0;
    s.row[j] = in ? level_row0 + c.idx[j] * pixel_stride : zeros;
    s.w[j] = in ? c.w[j] * scale : T(0);
  }
  return s;
}

template <typename T>
void forward_cpu(const MsdaGeo& g, const Levels& lv, const T* value, const T* loc, const T* attn, T* out) {
  at::parallel_for(0, g.n * g.q, kQueriesPerTask, [&](int64_t begin, int64_t end) {
    std::vector<T> zeros(g.d, T(0));
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / g.q, q = nq % g.q;
      for (int64_t m = 0; m < g.m; ++m) {
        T* dst = out + (nq * g.m + m) * g.d;
        bool poisoned = false;
        for (int64_t l = 0; l < g.l; ++l) {
          const T* row0 = value + msda_value_row(g, n, lv.start[l], 0, m);
          for (int64_t p = 0; p < g.p; ++p) {
            const int64_t i = msda_point_index(g, n, q, m, l, p);
            const Corners<T> c = msda_corners<T>(loc[2 * i], loc[2 * i + 1], lv.h[l], lv.w[l]);
            if (msda_poisoned(c)) poisoned = true;
            if (c.idx[0] < 0 && c.idx[1] < 0 && c.idx[2] < 0 && c.idx[3] < 0) continue;
            const Slots<T> s = slots(c, row0, g.m * g.d, zeros.data(), attn[i]);
            const T w0 = s.w[0], w1 = s.w[1], w2 = s.w[2], w3 = s.w[3];
            const T *r0 = s.row[0], *r1 = s.row[1], *r2 = s.row[2], *r3 = s.row[3];
#pragma omp simd
            for (int64_t d = 0; d < g.d; ++d) dst[d] += w0 * r0[d] + w1 * r1[d] + w2 * r2[d] + w3 * r3[d];
          }
        }
        if (poisoned) std::fill(dst, dst + g.d, std::numeric_limits<T>::quiet_NaN());
      }
    }
  });
}

// Location and weight gradients, per (image, query): for each point, one dot product of the output
// gradient with each in-map corner's channels, then the corner weights and their slopes.
template <typename T>
void location_weight_grad_cpu(const MsdaGeo& g, const Levels& lv, const T* grad, const T* value, const T* loc,
                              const T* attn, T* grad_loc, T* grad_attn) {
  at::parallel_for(0, g.n * g.q, kQueriesPerTask, [&](int64_t begin, int64_t end) {
    std::vector<T> zeros(g.d, T(0));
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / g.q, q = nq % g.q;
      for (int64_t m = 0; m < g.m; ++m) {
        const T* go = grad + (nq * g.m + m) * g.d;
        for (int64_t l = 0; l < g.l; ++l) {
          const T* row0 = value + msda_value_row(g, n, lv.start[l], 0, m);
          for (int64_t p = 0; p < g.p; ++p) {
            const int64_t i = msda_point_index(g, n, q, m, l, p);
            const Corners<T> c = msda_corners<T>(loc[2 * i], loc[2 * i + 1], lv.h[l], lv.w[l]);
            if (msda_poisoned(c)) {
              grad_loc[2 * i] = grad_loc[2 * i + 1] = grad_attn[i] = std::numeric_limits<T>::quiet_NaN();
              continue;
            }
            if (c.idx[0] < 0 && c.idx[1] < 0 && c.idx[2] < 0 && c.idx[3] < 0) continue;  // buffers start at 0
            const Slots<T> s = slots(c, row0, g.m * g.d, zeros.data(), T(1));
            const T *r0 = s.row[0], *r1 = s.row[1], *r2 = s.row[2], *r3 = s.row[3];
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int64_t d = 0; d < g.d; ++d) {
              a0 += go[d] * r0[d];
              a1 += go[d] * r1[d];
              a2 += go[d] * r2[d];
              a3 += go[d] * r3[d];
            }
            const T sampled = c.w[0] * a0 + c.w[1] * a1 + c.w[2] * a2 + c.w[3] * a3;
            const T sy = c.dy[0] * a0 + c.dy[1] * a1 + c.dy[2] * a2 + c.dy[3] * a3;
            const T sx = c.dx[0] * a0 + c.dx[1] * a1 + c.dx[2] * a2 + c.dx[3] * a3;
            grad_attn[i] = sampled;
            grad_loc[2 * i] = sx * attn[i] * T(lv.w[l]);  // d(x·W − 0.5)/dx = W
            grad_loc[2 * i + 1] = sy * attn[i] * T(lv.h[l]);
          }
        }
      }
    }
  });
}

// The value gradient: tasks own (image, head, channel slice) of grad_value and walk every query,
// level and point in order, so no two tasks write one element and every sum has a fixed order.
template <typename T>
void value_grad_cpu(const MsdaGeo& g, const Levels& lv, const T* grad, const T* loc, const T* attn, T* grad_value) {
  const int64_t threads = at::get_num_threads(), owners = std::max<int64_t>(1, g.n * g.m);
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(g.d / kMinChannelSlice, 1),
                                                                (threads + owners - 1) / owners));
  at::parallel_for(0, g.n * g.m * slices, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> sink(4 * g.d);  // a missing corner's share (weight 0) lands here, not in the map
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (g.m * slices), m = (t / slices) % g.m, sl = t % slices;
      const int64_t lo = sl * g.d / slices, hi = (sl + 1) * g.d / slices;
      for (int64_t q = 0; q < g.q; ++q) {
        const T* go = grad + ((n * g.q + q) * g.m + m) * g.d;
        for (int64_t l = 0; l < g.l; ++l) {
          T* row0 = grad_value + msda_value_row(g, n, lv.start[l], 0, m);
          for (int64_t p = 0; p < g.p; ++p) {
            const int64_t i = msda_point_index(g, n, q, m, l, p);
            const Corners<T> c = msda_corners<T>(loc[2 * i], loc[2 * i + 1], lv.h[l], lv.w[l]);
            if (c.idx[0] < 0 && c.idx[1] < 0 && c.idx[2] < 0 && c.idx[3] < 0) continue;  // poisoned ones too
            T* row[4];
            T w[4];
            for (int j = 0; j < 4; ++j) {
              const bool in = c.idx[j] >= 0;
              row[j] = in ? row0 + c.idx[j] * g.m * g.d : sink.data() + j * g.d;
              w[j] = in ? c.w[j] * attn[i] : T(0);
            }
            // The four rows are distinct pixels or distinct sink rows: one pass over the slice.
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
        }
      }
    }
  });
}

at::Tensor forward(const at::Tensor& value_, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc_,
                   const at::Tensor& attn_, int64_t im2col_step) {
  TORCH_CHECK(im2col_step >= 1, "im2col_step must be >= 1, got ", im2col_step);
  const at::Tensor value = value_.contiguous(), loc = loc_.contiguous(), attn = attn_.contiguous();
  const MsdaGeo g = geometry(value, loc);
  const Levels lv = level_table(shapes, starts, g.s);
  at::Tensor out = at::zeros({g.n, g.q, g.m * g.d}, value.options());
  if (g.n == 0 || g.q == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_cpu<scalar_t>(g, lv, value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                          out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_, const at::Tensor& value_,
                                                        const at::Tensor& shapes, const at::Tensor& starts,
                                                        const at::Tensor& loc_, const at::Tensor& attn_,
                                                        int64_t im2col_step, bool /*deterministic: always*/) {
  TORCH_CHECK(im2col_step >= 1, "im2col_step must be >= 1, got ", im2col_step);
  const at::Tensor grad = grad_.contiguous(), value = value_.contiguous(), loc = loc_.contiguous();
  const at::Tensor attn = attn_.contiguous();
  const MsdaGeo g = geometry(value, loc);
  const Levels lv = level_table(shapes, starts, g.s);
  at::Tensor grad_value = at::zeros_like(value), grad_loc = at::zeros_like(loc), grad_attn = at::zeros_like(attn);
  if (g.n == 0 || g.q == 0) return {grad_value, grad_loc, grad_attn};
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    location_weight_grad_cpu<scalar_t>(g, lv, grad.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(),
                                       loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                                       grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>());
    value_grad_cpu<scalar_t>(g, lv, grad.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                             grad_value.data_ptr<scalar_t>());
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(DCN_LIBRARY, CPU, m) {
  m.impl("ms_deform_attn_forward", &forward);
  m.impl("ms_deform_attn_backward", &backward);
}

}  // namespace dcnbench_ext
