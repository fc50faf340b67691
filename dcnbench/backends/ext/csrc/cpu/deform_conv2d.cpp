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
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "../library.h"
#include "../geometry.h"
#include "../sampling.h"

namespace dcnbench_ext {
namespace {

constexpr int64_t kColumnBudget = int64_t(1) << 23;  // column elements per batch chunk (32 MiB in float32)

// DCNBENCH_EXT_COLUMN_BUDGET replaces the budget for a call (read each call, so `verify --knobs`
// can check that results do not depend on how the batch is chunked; Python validates the value).
int64_t column_budget() {
  const char* text = std::getenv("DCNBENCH_EXT_COLUMN_BUDGET");
  const long long value = text ? std::atoll(text) : 0;
  return value > 0 ? value : kColumnBudget;
}

using Geo = ConvGeo;

// The plan holds a corner's pixel (y*W + x) in 32 bits (so its loop vectorises); element offsets stay 64-bit.
Geo checked(const Geo& g) {
  TORCH_CHECK(g.h * g.w < (int64_t(1) << 31), "deform_conv2d on the CPU takes maps of fewer than 2^31 pixels, got ",
              g.h, "x", g.w);
  return g;
}

int64_t chunk_of(const Geo& g) {
  const int64_t per_image = std::max<int64_t>(1, g.c * g.k * g.l);
  return std::max<int64_t>(1, std::min<int64_t>(g.n, column_budget() / per_image));
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

// The sampling plan of one (image, offset group, tap) over a run of positions: per position the
// four corners' pixels (y*W + x, -1 outside the map) and their weights and slopes, rule Z exactly as
// bilinear_z (sampling.h) computes them, but branch-free, so the loop over positions vectorises.
// Every channel of the offset group then reads the plan: corners are computed once per point.
template <typename T>
struct Plan {
  std::vector<int32_t> pix;   // 4 x len
  std::vector<T> w, dy, dx;   // 4 x len; dy/dx filled only when asked (the backward's offset gradient)
  std::vector<T> base_y, base_x;  // len: the positions' grid point before the tap and the offset
  explicit Plan(int64_t len) : pix(4 * len), w(4 * len), dy(4 * len), dx(4 * len), base_y(len), base_x(len) {}

  // The grid points of positions [l0, l0 + len) (shared by every tap).
  void positions(const Geo& g, int64_t l0, int64_t len) {
    for (int64_t i = 0; i < len; ++i) {
      const int64_t l = l0 + i;
      base_y[i] = T((l / g.wo) * g.sh - g.ph);
      base_x[i] = T((l % g.wo) * g.sw - g.pw);
    }
  }

  // Corners of (image n, offset group gi, tap k) at positions [l0, l0 + len), after positions().
  void build(const Geo& g, const T* offset, int64_t n, int64_t gi, int64_t k, int64_t l0, int64_t len, bool slopes) {
    const T* oy = offset + ((n * g.og + gi) * g.k + k) * 2 * g.l + l0;
    const T* ox = oy + g.l;
    const T ky = T((k / g.kw) * g.dh), kx = T((k % g.kw) * g.dw), hh = T(g.h), ww = T(g.w);
    const int32_t h = int32_t(g.h), w_ = int32_t(g.w);
    int32_t *p0 = pix.data(), *p1 = p0 + len, *p2 = p1 + len, *p3 = p2 + len;
    T *w0 = w.data(), *w1 = w0 + len, *w2 = w1 + len, *w3 = w2 + len;
    T *y0s = dy.data(), *y1s = y0s + len, *y2s = y1s + len, *y3s = y2s + len;
    T *x0s = dx.data(), *x1s = x0s + len, *x2s = x1s + len, *x3s = x2s + len;
    const T nan = not_a_number<T>();
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const T y = (base_y[i] + ky) + oy[i], x = (base_x[i] + kx) + ox[i];
      const bool finite_point = (y - y == T(0)) && (x - x == T(0));  // false for NaN and +-inf
      const bool in = y >= T(-1) && y < hh && x >= T(-1) && x < ww;  // false for NaN
      const T yc = in ? y : T(0), xc = in ? x : T(0);
      const T yf = std::floor(yc), xf = std::floor(xc);
      const T ly = yc - yf, lx = xc - xf, hy = T(1) - ly, hx = T(1) - lx;
      const int32_t ya = int32_t(yf), xa = int32_t(xf);
      const bool r0 = in && ya >= 0, r1 = in && ya + 1 < h, c0 = in && xa >= 0, c1 = in && xa + 1 < w_;
      const T none = finite_point ? T(0) : nan;
      const int32_t at = ya * w_ + xa;
      p0[i] = r0 && c0 ? at : -1;
      p1[i] = r0 && c1 ? at + 1 : -1;
      p2[i] = r1 && c0 ? at + w_ : -1;
      p3[i] = r1 && c1 ? at + w_ + 1 : -1;
      w0[i] = r0 && c0 ? hy * hx : none;
      w1[i] = r0 && c1 ? hy * lx : none;
      w2[i] = r1 && c0 ? ly * hx : none;
      w3[i] = r1 && c1 ? ly * lx : none;
      if (slopes) {  // d w / d y and d w / d x (sampling.h's dy/dx)
        y0s[i] = r0 && c0 ? -hx : none; x0s[i] = r0 && c0 ? -hy : none;
        y1s[i] = r0 && c1 ? -lx : none; x1s[i] = r0 && c1 ? hy : none;
        y2s[i] = r1 && c0 ? hx : none;  x2s[i] = r1 && c0 ? -ly : none;
        y3s[i] = r1 && c1 ? lx : none;  x3s[i] = r1 && c1 ? ly : none;
      }
    }
  }

  // Corner j's row of channels at position i in channels-last image xn (c channels); `zeros` outside.
  const T* row(const T* xn, int j, int64_t i, int64_t len, int64_t c, const T* zeros) const {
    const int32_t p = pix[j * len + i];
    return p < 0 ? zeros : xn + int64_t(p) * c;
  }
};

// Positions per plan block and per forward tile. The tile's columns (positions x C*K) stay near
// 256 KiB, so they are gathered into a core's cache and read from there by the GEMM instead of
// round-tripping through memory; a large weight (resnet's 512 x 4608, 9 MiB) raises that to half
// its size, since each tile's GEMM reads (and packs) the whole weight once; 64 to 512 positions.
// It depends on the geometry only, never on the thread count, so every output element is computed
// the same way on any number of threads.
int64_t tile_of(const Geo& g, int64_t element_bytes) {
  const int64_t row_bytes = std::max<int64_t>(1, g.c * g.k) * element_bytes;
  const int64_t weight_bytes = g.o * g.cg * g.k * element_bytes;
  const int64_t budget = std::max<int64_t>(int64_t(256) << 10, weight_bytes / 2);
  return std::min(std::clamp<int64_t>(budget / row_bytes, 64, 512), std::max<int64_t>(g.l, 1));
}

// The columns of positions [l0, l0 + lt) of image n into cols (lt rows of groups*K*Cg, `ld` apart),
// on the calling thread: per (offset group, tap) one plan over the positions, then each position's
// four corner rows weighted into the group's channels (contiguous in the channels-last image).
template <typename T>
void gather(const Geo& g, const T* x, const T* offset, const T* mask, int64_t n, int64_t l0, int64_t lt, Plan<T>& plan,
            const T* zeros, T* cols, int64_t ld) {
  const T* xn = x + n * g.h * g.w * g.c;
  plan.positions(g, l0, lt);
  for (int64_t gi = 0; gi < g.og; ++gi)
    for (int64_t k = 0; k < g.k; ++k) {
      plan.build(g, offset, n, gi, k, l0, lt, false);
      const T* mk = mask ? mask + ((n * g.og + gi) * g.k + k) * g.l + l0 : nullptr;
      for (int64_t i = 0; i < lt; ++i) {
        const T m = mk ? mk[i] : T(1);
        const T w0 = plan.w[i] * m, w1 = plan.w[lt + i] * m, w2 = plan.w[2 * lt + i] * m, w3 = plan.w[3 * lt + i] * m;
        const T *r0 = plan.row(xn, 0, i, lt, g.c, zeros), *r1 = plan.row(xn, 1, i, lt, g.c, zeros);
        const T *r2 = plan.row(xn, 2, i, lt, g.c, zeros), *r3 = plan.row(xn, 3, i, lt, g.c, zeros);
        T* col = cols + i * ld;
        channel_runs(g, gi, k, gi * g.cpg, (gi + 1) * g.cpg, [&](int64_t ca, int64_t cb, int64_t at) {
          T* d = col + at - ca;
#pragma omp simd
          for (int64_t c = ca; c < cb; ++c) d[c] = w0 * r0[c] + w1 * r1[c] + w2 * r2[c] + w3 * r3[c];
        });
      }
    }
}

// Calls f(n, bi, l0, lt, plan, zeros) for every tile of positions of images n0 .. n0 + b - 1 (bi = n - n0),
// in parallel, each task with a plan and a row of zeros of its own.
template <typename T, typename F>
void for_each_tile(const Geo& g, int64_t n0, int64_t b, int64_t tile, F f) {
  const int64_t tiles = (g.l + tile - 1) / tile;
  at::parallel_for(0, b * tiles, 1, [&](int64_t begin, int64_t end) {
    Plan<T> plan(tile);
    const std::vector<T> zeros(g.c, T(0));  // the row a corner outside the map reads
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / tiles, l0 = (t % tiles) * tile;
      f(n0 + bi, bi, l0, std::min(tile, g.l - l0), plan, zeros.data());
    }
  });
}

// cols (b, L, groups*K*Cg) for images [n0, n0 + b); x is channels-last (N, H, W, C).
template <typename T>
void im2col(const Geo& g, const T* x, const T* offset, const T* mask, int64_t n0, int64_t b, T* cols) {
  const int64_t row = g.c * g.k;
  for_each_tile<T>(g, n0, b, tile_of(g, sizeof(T)), [&](int64_t n, int64_t bi, int64_t l0, int64_t lt, Plan<T>& plan,
                                                       const T* zeros) {
    gather(g, x, offset, mask, n, l0, lt, plan, zeros, cols + (bi * g.l + l0) * row, row);
  });
}

// grad_x (channels-last) += the columns' gradient scattered through the bilinear weights. Tasks
// own (image, offset group, channel chunk) slices of grad_x, so no two tasks touch one element;
// each walks the positions in order (taps inner), so every sum has one order on any thread count.
template <typename T>
void col2im(const Geo& g, const T* gcols, const T* offset, const T* mask, int64_t n0, int64_t b, T* gx) {
  const int64_t threads = at::get_num_threads(), row = g.c * g.k, block = tile_of(g, sizeof(T));
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(g.cpg / 16 > 0 ? g.cpg / 16 : 1,
                                                                (threads + b * g.og - 1) / (b * g.og)));
  at::parallel_for(0, b * g.og * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Plan<T>> plans;  // one per tap, over a block of positions
    for (int64_t k = 0; k < g.k; ++k) plans.emplace_back(block);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / (g.og * chunks), gi = (t / chunks) % g.og, ch = t % chunks, n = n0 + bi;
      const int64_t c_lo = gi * g.cpg + ch * g.cpg / chunks, c_hi = gi * g.cpg + (ch + 1) * g.cpg / chunks;
      T* gn = gx + n * g.h * g.w * g.c;
      for (int64_t l0 = 0; l0 < g.l; l0 += block) {
        const int64_t lt = std::min(block, g.l - l0);
        for (int64_t k = 0; k < g.k; ++k) {
          plans[k].positions(g, l0, lt);
          plans[k].build(g, offset, n, gi, k, l0, lt, false);
        }
        for (int64_t i = 0; i < lt; ++i) {
          const T* gcol = gcols + (bi * g.l + l0 + i) * row;
          for (int64_t k = 0; k < g.k; ++k) {
            const Plan<T>& q = plans[k];
            const T m = mask ? mask[((n * g.og + gi) * g.k + k) * g.l + l0 + i] : T(1);
            channel_runs(g, gi, k, c_lo, c_hi, [&](int64_t ca, int64_t cb, int64_t at) {
              const T* s = gcol + at - ca;
              // One corner after the other, a fixed order; corners outside the map are not touched.
              for (int j = 0; j < 4; ++j) {
                const int32_t p = q.pix[j * lt + i];
                if (p < 0) continue;
                T* r = gn + int64_t(p) * g.c;
                const T wj = q.w[j * lt + i] * m;
#pragma omp simd
                for (int64_t c = ca; c < cb; ++c) r[c] += wj * s[c];
              }
            });
          }
        }
      }
    }
  });
}

// Offset and mask gradients: per (image, tile of positions); sums over each offset group's channels.
template <typename T>
void offset_mask_grad(const Geo& g, const T* gcols, const T* x, const T* offset, const T* mask, int64_t n0, int64_t b,
                      T* grad_offset, T* grad_mask) {
  const int64_t row = g.c * g.k;
  for_each_tile<T>(g, n0, b, tile_of(g, sizeof(T)), [&](int64_t n, int64_t bi, int64_t l0, int64_t lt, Plan<T>& q,
                                                       const T* zeros) {
    const T* xn = x + n * g.h * g.w * g.c;
    q.positions(g, l0, lt);
    for (int64_t gi = 0; gi < g.og; ++gi)
      for (int64_t k = 0; k < g.k; ++k) {
        q.build(g, offset, n, gi, k, l0, lt, true);
        const int64_t at_ = (n * g.og + gi) * g.k + k;
        for (int64_t i = 0; i < lt; ++i) {
          const T* gcol = gcols + (bi * g.l + l0 + i) * row;
          const T *r0 = q.row(xn, 0, i, lt, g.c, zeros), *r1 = q.row(xn, 1, i, lt, g.c, zeros);
          const T *r2 = q.row(xn, 2, i, lt, g.c, zeros), *r3 = q.row(xn, 3, i, lt, g.c, zeros);
          // One dot product of the columns' gradient with each corner's channels; the offset
          // and mask gradients are those four sums weighted by the corners' slopes and weights.
          T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          channel_runs(g, gi, k, gi * g.cpg, (gi + 1) * g.cpg, [&](int64_t ca, int64_t cb, int64_t at) {
            const T* s = gcol + at - ca;
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t c = ca; c < cb; ++c) {
              s0 += s[c] * r0[c];
              s1 += s[c] * r1[c];
              s2 += s[c] * r2[c];
              s3 += s[c] * r3[c];
            }
            a0 += s0; a1 += s1; a2 += s2; a3 += s3;
          });
          // A corner outside the map sums over a row of zeros: an infinite incoming gradient makes
          // that sum NaN, as the chain rule's inf * 0 does (README "Non-finite values").
          const T ay = q.dy[i] * a0 + q.dy[lt + i] * a1 + q.dy[2 * lt + i] * a2 + q.dy[3 * lt + i] * a3;
          const T ax = q.dx[i] * a0 + q.dx[lt + i] * a1 + q.dx[2 * lt + i] * a2 + q.dx[3 * lt + i] * a3;
          const T am = q.w[i] * a0 + q.w[lt + i] * a1 + q.w[2 * lt + i] * a2 + q.w[3 * lt + i] * a3;
          const T m = mask ? mask[at_ * g.l + l0 + i] : T(1);
          grad_offset[at_ * 2 * g.l + l0 + i] = ay * m;
          grad_offset[at_ * 2 * g.l + g.l + l0 + i] = ax * m;
          if (grad_mask) grad_mask[at_ * g.l + l0 + i] = am;
        }
      }
  });
}

// weight (O, Cg, kh, kw) -> (groups, O/groups, K*Cg), matching the column layout.
at::Tensor weight_rows(const at::Tensor& weight, const Geo& g) {
  return weight.view({g.groups, g.o / g.groups, g.cg, g.k}).permute({0, 1, 3, 2}).contiguous().view(
      {g.groups, g.o / g.groups, g.k * g.cg});
}

// The forward's GEMM in float32 is oneDNN's where torch has it (torch's mkldnn::_linear_pointwise
// with the weight packed once per call for the tile's row count), else at::mm_out (MKL). On the
// AVX-512 EPYC (Zen 5) this was measured on, one thread, (256 x 576) @ (576 x 64): MKL 98 GFLOP/s
// (its AMD code path is AVX2), oneDNN 212. Like MKL, it runs on the task's thread alone inside a
// parallel region, and the tiles do not depend on the thread count, so results stay bitwise the
// same on any thread count (tests/test_ext.py). oneDNN has no float64 GEMM on the CPU: float64
// keeps MKL. The ops are looked up by name, boxed: they are not in ATen's C++ API.
struct OneDnn {
  c10::OperatorHandle linear, pack;
};

const OneDnn* onednn() {
  static const std::optional<OneDnn> ops = []() -> std::optional<OneDnn> {
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
    const auto pack = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
    if (!linear || !pack) return std::nullopt;
    return OneDnn{*linear, *pack};
  }();
  return ops ? &*ops : nullptr;
}

// (O', K) rows of weight packed for oneDNN's GEMM of `rows` rows by them.
at::Tensor onednn_weight(const at::Tensor& w, int64_t rows) {
  torch::jit::Stack stack{w.contiguous(), rows};
  onednn()->pack.callBoxed(&stack);
  return stack[0].toTensor();
}

// x (M, K) @ the packed weight transposed: (M, O'), a new tensor.
at::Tensor onednn_gemm(const at::Tensor& x, const at::Tensor& packed) {
  torch::jit::Stack stack{x, packed, c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(),
                          std::string("")};
  onednn()->linear.callBoxed(&stack);
  return stack[0].toTensor();
}

// Forward, fused: each task gathers one tile of positions of one image into a buffer of its own,
// multiplies it by the weight, (lt, K*Cg) @ (K*Cg, O/groups) per group, into a second small buffer
// (a GEMM inside a parallel region runs on the task's thread alone), and writes that to the output
// transposed, adding the bias, while it is in cache. No column buffer for the batch; every thread
// gathers. The (positions x channels) product is the layout the column rows already have, so the
// GEMM reads them as they are (the transposed product, straight into the output, packs them first:
// measured slower).
template <typename T>
void forward_tiles(const Geo& g, const T* x, const T* offset, const T* mask, const at::Tensor& wr, const T* bias,
                   T* out) {
  const int64_t tile = tile_of(g, sizeof(T)), tiles = (g.l + tile - 1) / tile, row = g.c * g.k;
  const int64_t kcg = g.k * g.cg, og_out = g.o / g.groups;
  std::vector<at::Tensor> packed;  // per group, when oneDNN does the GEMM: packed from the rows as they are
  if (onednn() && wr.scalar_type() == at::kFloat && wr.numel() > 0)
    for (int64_t gi = 0; gi < g.groups; ++gi) packed.push_back(onednn_weight(wr[gi], tile));
  // (groups, K*Cg, O/groups) for MKL, made only where it runs: each copy of resnet101-conv5's weight
  // (9.4 MB) costs its page faults again on every call.
  const at::Tensor wt = packed.empty() ? wr.transpose(1, 2).contiguous() : at::Tensor();
  at::parallel_for(0, g.n * tiles, 1, [&](int64_t begin, int64_t end) {
    at::Tensor cols = at::empty({tile, row}, wr.options());
    at::Tensor acc = packed.empty() ? at::empty({tile, og_out}, wr.options()) : at::Tensor();  // MKL's output
    Plan<T> plan(tile);
    const std::vector<T> zeros(g.c, T(0));  // the row a corner outside the map reads
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / tiles, l0 = (t % tiles) * tile, lt = std::min(tile, g.l - l0);
      gather(g, x, offset, mask, n, l0, lt, plan, zeros.data(), cols.data_ptr<T>(), row);
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        const at::Tensor rows = cols.narrow(0, 0, lt).narrow(1, gi * kcg, kcg);
        at::Tensor a;
        if (packed.empty()) {
          a = acc.narrow(0, 0, lt);
          at::mm_out(a, rows, wt[gi]);
        } else {
          a = onednn_gemm(rows, packed[gi]);
        }
        const T* src = a.data_ptr<T>();
        for (int64_t o = 0; o < og_out; ++o) {
          const int64_t oc = gi * og_out + o;
          const T b = bias ? bias[oc] : T(0);
          T* dst = out + (n * g.o + oc) * g.l + l0;
          for (int64_t i = 0; i < lt; ++i) dst[i] = src[i * og_out + o] + b;
        }
      }
    }
  });
}

at::Tensor forward(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
                   const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_, int64_t sh,
                   int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t og) {
  // Detached: the GEMMs below write into buffers (mm_out), which autograd refuses for a weight that
  // requires grad when this kernel runs on a thread where grad mode is on (at::parallel_for's workers
  // do not inherit the caller's dispatch state). The op's gradient is its own backward, not autograd's.
  const at::Tensor weight = weight_.detach().contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  const Geo g = checked(conv_geometry(input_, weight, sh, sw, ph, pw, dh, dw, groups, og));
  if (g.n == 0 || g.l == 0 || g.c == 0) {
    at::Tensor out = at::zeros({g.n, g.o, g.ho, g.wo}, input_.options());
    if (bias.defined()) out.add_(bias.view({1, g.o, 1, 1}));
    return out;
  }
  at::Tensor out = at::empty({g.n, g.o, g.ho, g.wo}, input_.options());  // every element is written once
  const at::Tensor x = input_.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor wr = weight_rows(weight, g);  // (groups, O/groups, K*Cg)
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "deform_conv2d_forward_cpu", [&] {
    forward_tiles<scalar_t>(g, x.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
                            mask.defined() ? mask.data_ptr<scalar_t>() : nullptr, wr,
                            bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_, const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
    const std::optional<at::Tensor>& mask_, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
    int64_t groups, int64_t og, bool /*deterministic: the CPU kernels always are*/) {
  const at::Tensor grad = grad_.detach().contiguous(), weight = weight_.detach().contiguous();  // as in forward
  const at::Tensor offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const Geo g = checked(conv_geometry(input_, weight, sh, sw, ph, pw, dh, dw, groups, og));
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

TORCH_LIBRARY_IMPL(DCN_LIBRARY, CPU, m) {
  m.impl("deform_conv2d_forward", &forward);
  m.impl("deform_conv2d_backward", &backward);
}

}  // namespace dcnbench_ext
