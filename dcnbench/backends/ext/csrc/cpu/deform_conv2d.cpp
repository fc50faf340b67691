// deform_conv2d on the CPU: deformable im2col in channels-last order, then one GEMM per group.
//
// The map is read channels-last (N, H, W, C) and the columns are laid out (b, L, groups, K, C/groups),
// so each sampling point's four corners are computed once per (position, offset group, tap) and
// then read, weighted and written as contiguous runs of channels: the channel loops vectorise.
// Every output element is written by one task in a fixed order (reductions use fixed-width
// `omp simd` partial sums), so forward and backward are bitwise reproducible run to run. The
// column buffer covers a bounded chunk of the batch, so memory does not grow with N.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "../geometry.h"
#include "../sampling.h"

namespace dcnbench_ext {
namespace {

constexpr int64_t kBlock = 32;                       // output positions per task
constexpr int64_t kColumnBudget = int64_t(1) << 23;  // column elements per batch chunk (32 MiB in float32)

// DCNBENCH_EXT_COLUMN_BUDGET replaces the budget for a call (read each call, so `verify --knobs`
// can check that results do not depend on how the batch is chunked; Python validates the value).
int64_t column_budget() {
  const char* text = std::getenv("DCNBENCH_EXT_COLUMN_BUDGET");
  const long long value = text ? std::atoll(text) : 0;
  return value > 0 ? value : kColumnBudget;
}

using Geo = ConvGeo;

int64_t chunk_of(const Geo& g) {
  const int64_t per_image = std::max<int64_t>(1, g.c * g.k * g.l);
  return std::max<int64_t>(1, std::min<int64_t>(g.n, column_budget() / per_image));
}

template <typename T>
Corners<T> corners_at(const Geo& g, const T* offset, int64_t n, int64_t gi, int64_t k, int64_t l) {
  const T* dy = offset + ((n * g.og + gi) * g.k + k) * 2 * g.l;
  const int64_t i = k / g.kw, j = k % g.kw, oy = l / g.wo, ox = l % g.wo;
  const T py = T(oy * g.sh - g.ph + i * g.dh) + dy[l];
  const T px = T(ox * g.sw - g.pw + j * g.dw) + dy[g.l + l];
  return bilinear_z<T>(py, px, g.h, g.w);
}

// Column offset of channel c at tap k within one position's row of (groups, K, C/groups).
inline int64_t col_at(const Geo& g, int64_t c, int64_t k) { return ((c / g.cg) * g.k + k) * g.cg + c % g.cg; }

// Calls f(c_begin, c_end, column offset of c_begin) for the runs of offset group gi's channels
// that are contiguous in the column layout (a run ends where a convolution group ends).
template <typename F>
void channel_runs(const Geo& g, int64_t gi, int64_t k, int64_t c_lo, int64_t c_hi, F f) {
  for (int64_t c = c_lo; c < c_hi;) {
    const int64_t end = std::min(c_hi, (c / g.cg + 1) * g.cg);
    f(c, end, col_at(g, c, k));
    c = end;
  }
}

// Corner j's row of channels in channels-last image xn; a corner outside the map reads `zeros`.
template <typename T>
const T* corner_row(const T* xn, const Corners<T>& q, int j, int64_t c, const T* zeros) {
  return q.idx[j] < 0 ? zeros : xn + q.idx[j] * c;
}

// Calls f(bi, n, l) for every position l of images n = n0 + bi, bi < b, in tasks of kBlock positions.
template <typename F>
void for_each_position(const Geo& g, int64_t n0, int64_t b, F f) {
  const int64_t blocks = (g.l + kBlock - 1) / kBlock;
  at::parallel_for(0, b * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / blocks, l0 = (t % blocks) * kBlock, l1 = std::min(g.l, l0 + kBlock);
      for (int64_t l = l0; l < l1; ++l) f(bi, n0 + bi, l);
    }
  });
}

// cols (b, L, groups*K*Cg) for images [n0, n0 + b); x is channels-last (N, H, W, C).
template <typename T>
void im2col(const Geo& g, const T* x, const T* offset, const T* mask, int64_t n0, int64_t b, T* cols) {
  const int64_t row = g.c * g.k;
  const std::vector<T> zeros(g.c, T(0));  // the row a corner outside the map reads
  const T* z = zeros.data();
  for_each_position(g, n0, b, [&](int64_t bi, int64_t n, int64_t l) {
        const T* xn = x + n * g.h * g.w * g.c;
        T* col = cols + (bi * g.l + l) * row;
        for (int64_t gi = 0; gi < g.og; ++gi)
          for (int64_t k = 0; k < g.k; ++k) {
            const Corners<T> q = corners_at(g, offset, n, gi, k, l);
            const T m = mask ? mask[((n * g.og + gi) * g.k + k) * g.l + l] : T(1);
            const T w0 = q.w[0] * m, w1 = q.w[1] * m, w2 = q.w[2] * m, w3 = q.w[3] * m;
            const T *r0 = corner_row(xn, q, 0, g.c, z), *r1 = corner_row(xn, q, 1, g.c, z);
            const T *r2 = corner_row(xn, q, 2, g.c, z), *r3 = corner_row(xn, q, 3, g.c, z);
            channel_runs(g, gi, k, gi * g.cpg, (gi + 1) * g.cpg, [&](int64_t ca, int64_t cb, int64_t at) {
              T* d = col + at - ca;
#pragma omp simd
              for (int64_t c = ca; c < cb; ++c) d[c] = w0 * r0[c] + w1 * r1[c] + w2 * r2[c] + w3 * r3[c];
            });
          }
  });
}

// grad_x (channels-last) += the columns' gradient scattered through the bilinear weights. Tasks
// own (image, offset group, channel chunk) slices of grad_x, so no two tasks touch one element.
template <typename T>
void col2im(const Geo& g, const T* gcols, const T* offset, const T* mask, int64_t n0, int64_t b, T* gx) {
  const int64_t threads = at::get_num_threads(), row = g.c * g.k;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(g.cpg / 16 > 0 ? g.cpg / 16 : 1,
                                                                (threads + b * g.og - 1) / (b * g.og)));
  at::parallel_for(0, b * g.og * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / (g.og * chunks), gi = (t / chunks) % g.og, ch = t % chunks, n = n0 + bi;
      const int64_t c_lo = gi * g.cpg + ch * g.cpg / chunks, c_hi = gi * g.cpg + (ch + 1) * g.cpg / chunks;
      T* gn = gx + n * g.h * g.w * g.c;
      for (int64_t l = 0; l < g.l; ++l) {
        const T* gcol = gcols + (bi * g.l + l) * row;
        for (int64_t k = 0; k < g.k; ++k) {
          const Corners<T> q = corners_at(g, offset, n, gi, k, l);
          const T m = mask ? mask[((n * g.og + gi) * g.k + k) * g.l + l] : T(1);
          channel_runs(g, gi, k, c_lo, c_hi, [&](int64_t ca, int64_t cb, int64_t at) {
            const T* s = gcol + at - ca;
            // One corner after the other, a fixed order; corners outside the map are not touched.
            for (int j = 0; j < 4; ++j) {
              if (q.idx[j] < 0) continue;
              T* r = gn + q.idx[j] * g.c;
              const T wj = q.w[j] * m;
              for (int64_t c = ca; c < cb; ++c) r[c] += wj * s[c];
            }
          });
        }
      }
    }
  });
}

// Offset and mask gradients: per (image, position block); sums over each offset group's channels.
template <typename T>
void offset_mask_grad(const Geo& g, const T* gcols, const T* x, const T* offset, const T* mask, int64_t n0, int64_t b,
                      T* grad_offset, T* grad_mask) {
  const int64_t row = g.c * g.k;
  const std::vector<T> zeros(g.c, T(0));  // the row a corner outside the map reads
  const T* z = zeros.data();
  for_each_position(g, n0, b, [&](int64_t bi, int64_t n, int64_t l) {
        const T* xn = x + n * g.h * g.w * g.c;
        const T* gcol = gcols + (bi * g.l + l) * row;
        for (int64_t gi = 0; gi < g.og; ++gi)
          for (int64_t k = 0; k < g.k; ++k) {
            const Corners<T> q = corners_at(g, offset, n, gi, k, l);
            const T *r0 = corner_row(xn, q, 0, g.c, z), *r1 = corner_row(xn, q, 1, g.c, z);
            const T *r2 = corner_row(xn, q, 2, g.c, z), *r3 = corner_row(xn, q, 3, g.c, z);
            T ay = 0, ax = 0, am = 0;
            channel_runs(g, gi, k, gi * g.cpg, (gi + 1) * g.cpg, [&](int64_t ca, int64_t cb, int64_t at) {
              const T* s = gcol + at - ca;
              T sy = 0, sx = 0, sm = 0;
#pragma omp simd reduction(+ : sy, sx, sm)
              for (int64_t c = ca; c < cb; ++c) {
                const T v0 = r0[c], v1 = r1[c], v2 = r2[c], v3 = r3[c];
                sy += s[c] * (q.dy[0] * v0 + q.dy[1] * v1 + q.dy[2] * v2 + q.dy[3] * v3);
                sx += s[c] * (q.dx[0] * v0 + q.dx[1] * v1 + q.dx[2] * v2 + q.dx[3] * v3);
                sm += s[c] * (q.w[0] * v0 + q.w[1] * v1 + q.w[2] * v2 + q.w[3] * v3);
              }
              ay += sy; ax += sx; am += sm;
            });
            const int64_t at_ = (n * g.og + gi) * g.k + k;
            const T m = mask ? mask[at_ * g.l + l] : T(1);
            grad_offset[at_ * 2 * g.l + l] = ay * m;
            grad_offset[at_ * 2 * g.l + g.l + l] = ax * m;
            if (grad_mask) grad_mask[at_ * g.l + l] = am;
          }
  });
}

// weight (O, Cg, kh, kw) -> (groups, O/groups, K*Cg), matching the column layout.
at::Tensor weight_rows(const at::Tensor& weight, const Geo& g) {
  return weight.view({g.groups, g.o / g.groups, g.cg, g.k}).permute({0, 1, 3, 2}).contiguous().view(
      {g.groups, g.o / g.groups, g.k * g.cg});
}

at::Tensor forward(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
                   const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_, int64_t sh,
                   int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t og) {
  const at::Tensor weight = weight_.contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const Geo g = conv_geometry(input_, weight, sh, sw, ph, pw, dh, dw, groups, og);
  at::Tensor out = at::zeros({g.n, g.o, g.ho, g.wo}, input_.options());
  if (g.n == 0) return out;
  const at::Tensor x = input_.permute({0, 2, 3, 1}).contiguous();
  const int64_t chunk = chunk_of(g), kcg = g.k * g.cg, og_out = g.o / groups;
  at::Tensor cols = at::empty({chunk, g.l, g.c * g.k}, input_.options());
  const at::Tensor wr = weight_rows(weight, g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "deform_conv2d_forward_cpu", [&] {
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
      const int64_t b = std::min(chunk, g.n - n0);
      im2col<scalar_t>(g, x.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
                       mask.defined() ? mask.data_ptr<scalar_t>() : nullptr, n0, b, cols.data_ptr<scalar_t>());
      const at::Tensor c3 = cols.narrow(0, 0, b);
      at::Tensor o4 = out.narrow(0, n0, b).view({b, groups, og_out, g.l});
      for (int64_t gi = 0; gi < groups; ++gi) {
        // (O/groups, K*Cg) @ (K*Cg, L) per image: the transposed column slice is a strided view.
        for (int64_t bi = 0; bi < b; ++bi) {
          at::Tensor dst = o4.select(0, bi).select(0, gi);
          at::mm_out(dst, wr[gi], c3.select(0, bi).narrow(1, gi * kcg, kcg).t());
        }
      }
    }
  });
  if (bias_.has_value()) out.add_(bias_->view({1, g.o, 1, 1}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_, const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
    const std::optional<at::Tensor>& mask_, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
    int64_t groups, int64_t og, bool /*deterministic: the CPU kernels always are*/) {
  const at::Tensor grad = grad_.contiguous(), weight = weight_.contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const Geo g = conv_geometry(input_, weight, sh, sw, ph, pw, dh, dw, groups, og);
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = mask.defined() ? at::zeros_like(mask) : at::empty({0}, offset.options());  // none: empty
  if (g.n == 0) return {at::zeros(input_.sizes(), input_.options()), at::zeros_like(weight), grad_offset, grad_mask};
  const at::Tensor x = input_.permute({0, 2, 3, 1}).contiguous();
  at::Tensor gx = at::zeros_like(x);
  const int64_t chunk = chunk_of(g), kcg = g.k * g.cg, og_out = g.o / groups;
  at::Tensor cols = at::empty({chunk, g.l, g.c * g.k}, x.options());
  at::Tensor gcols = at::empty({chunk, g.l, g.c * g.k}, x.options());
  const at::Tensor wr = weight_rows(weight, g);
  at::Tensor gwr = at::zeros_like(wr);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    const scalar_t* m = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
      const int64_t b = std::min(chunk, g.n - n0);
      im2col<scalar_t>(g, x.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b, cols.data_ptr<scalar_t>());
      const at::Tensor g4 = grad.narrow(0, n0, b).view({b, groups, og_out, g.l});
      const at::Tensor c3 = cols.narrow(0, 0, b);
      at::Tensor gc3 = gcols.narrow(0, 0, b);
      // Straight into the buffers (mm_out, addmm_), so no column-sized temporary is allocated.
      for (int64_t gi = 0; gi < groups; ++gi) {
        for (int64_t bi = 0; bi < b; ++bi) {
          const at::Tensor go = g4.select(0, bi).select(0, gi);  // (O/groups, L)
          at::Tensor gcol = gc3.select(0, bi).narrow(1, gi * kcg, kcg);  // (L, K*Cg)
          if (groups == 1) {
            at::mm_out(gcol, go.t(), wr[gi]);
          } else {
            gcol.copy_(at::mm(go.t(), wr[gi]));
          }
          gwr[gi].addmm_(go, c3.select(0, bi).narrow(1, gi * kcg, kcg));
        }
      }
      col2im<scalar_t>(g, gcols.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b, gx.data_ptr<scalar_t>());
      offset_mask_grad<scalar_t>(g, gcols.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m,
                                 n0, b, grad_offset.data_ptr<scalar_t>(),
                                 mask.defined() ? grad_mask.data_ptr<scalar_t>() : nullptr);
    }
  });
  const at::Tensor grad_input = gx.permute({0, 3, 1, 2}).contiguous();
  const at::Tensor grad_weight =
      gwr.view({groups, og_out, g.k, g.cg}).permute({0, 1, 3, 2}).contiguous().view(weight.sizes());
  return {grad_input, grad_weight, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnbench_ext, CPU, m) {
  m.impl("deform_conv2d_forward", &forward);
  m.impl("deform_conv2d_backward", &backward);
}

}  // namespace dcnbench_ext
