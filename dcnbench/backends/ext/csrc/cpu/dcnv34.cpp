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

#include "../library.h"
#include "../group_sampling.h"

// The schemas live here rather than in ext.cpp: this file is the whole of the DCNv3/DCNv4 ops.
TORCH_LIBRARY_FRAGMENT(DCN_LIBRARY, m) {
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

// The parts of group_position that depend on the tap only (T(i·dw), T(j·dh)) or on the output
// position only (p0x, p0y): computed once, then each point's position is group_position's last two
// lines, the same operations in the same order.
template <typename T>
struct TapGrid {
  std::vector<T> kx, ky;
  explicit TapGrid(const GroupGeo& g) {
    for (const auto& [i, j] : taps(g)) {
      kx.push_back(T(i * g.dw));
      ky.push_back(T(j * g.dh));
    }
  }
};

template <typename T>
void origin(const GroupGeo& g, int64_t ho, int64_t wo, T os, T& p0y, T& p0x) {
  const int64_t cx = (g.dw * (g.kw - 1)) >> 1, cy = (g.dh * (g.kh - 1)) >> 1;
  p0x = T(cx - g.pw + wo * g.sw) - T(cx) * os;
  p0y = T(cy - g.ph + ho * g.sh) - T(cy) * os;
}

// One point's bilinear read as four fixed corner slots, (y0, x0), (y0, x0 + 1), (y0 + 1, x0),
// (y0 + 1, x0 + 1): group_point's in-map corners with their weights and slopes, each at its
// slot, and an out-of-map corner as weight 0 at pixel `spare + slot` (a row of zeros to read, or
// a sink row to write, never the map: a NaN pixel reaches only the points that read it). Without
// branches per corner, so the channel loops take all four slots in one pass. False when the point
// fails group_point's pre-test (all four corners out of the map: the point adds nothing).
template <typename T>
struct Plan {
  int64_t pix[4];
  T w[4], dy[4], dx[4];
};

template <typename T>
bool plan_point(T y, T x, int64_t h, int64_t w, int64_t spare, Plan<T>& pl) {
  if (!(y > T(-1) && x > T(-1) && y < T(h) && x < T(w))) return false;
  int64_t y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x);  // floor, as group_point
  y0 -= T(y0) > y;
  x0 -= T(x0) > x;
  const T ly = y - T(y0), lx = x - T(x0);
  const T wy[2] = {T(1) - ly, ly}, wx[2] = {T(1) - lx, lx}, s[2] = {T(-1), T(1)};
  const bool yin[2] = {y0 >= 0, y0 + 1 < h}, xin[2] = {x0 >= 0, x0 + 1 < w};
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int k = 2 * a + b;
      const bool in = yin[a] && xin[b];
      pl.pix[k] = in ? (y0 + a) * w + x0 + b : spare + k;
      pl.w[k] = in ? wy[a] * wx[b] : T(0);
      pl.dy[k] = in ? s[a] * wx[b] : T(0);
      pl.dx[k] = in ? wy[a] * s[b] : T(0);
    }
  return true;
}

// The plans of one (position, group)'s points that read the map, in the op's order; returns how
// many. idx[i] is the point's index k, for its mask and its offset-gradient slots.
template <typename T>
int64_t plan_points(const GroupGeo& g, const TapGrid<T>& grid, const T* off, int64_t ho, int64_t wo, T os,
                    int64_t spare, Plan<T>* pl, int64_t* idx) {
  T p0y, p0x;
  origin(g, ho, wo, os, p0y, p0x);
  int64_t live = 0;
  for (int64_t k = 0; k < g.p; ++k) {
    const T x = p0x + (grid.kx[k] + off[2 * k]) * os;
    const T y = p0y + (grid.ky[k] + off[2 * k + 1]) * os;
    if (plan_point(y, x, g.h, g.w, spare, pl[live])) idx[live++] = k;
  }
  return live;
}

// GCC vectorises a loop over points across its points (gathering each point's rows) once the channel
// loop inside is unrolled, which runs several times slower than the channel loop's own vectors: an
// empty asm statement in the loop over points keeps that loop scalar.
#if defined(__GNUC__)
#define DCN_SCALAR_LOOP() asm volatile("")
#else
#define DCN_SCALAR_LOOP()
#endif

// Asks for a (position, group)'s offsets and mask ahead of use: a task walks one group across the
// positions, so they are read G·3P values apart and the hardware prefetcher does not see them come.
template <typename T>
void prefetch_sides(const GroupGeo& g, const T* off, const T* mask, int64_t pos, int64_t gi) {
#if defined(__GNUC__)
  const char* o = reinterpret_cast<const char*>(off + pos * g.off_row + gi * g.off_group);
  const char* m = reinterpret_cast<const char*>(mask + pos * g.mask_row + gi * g.mask_group + g.mask_shift);
  for (int64_t b = 0; b < int64_t(2 * g.p * sizeof(T)); b += 64) __builtin_prefetch(o + b);
  __builtin_prefetch(o + 2 * g.p * sizeof(T) - 1);
  for (int64_t b = 0; b < int64_t(g.p * sizeof(T)); b += 64) __builtin_prefetch(m + b);
  __builtin_prefetch(m + g.p * sizeof(T) - 1);
#endif
}

// The backward task's copy of one (image, group) of the map: rows of D, then four rows of zeros
// that the plans' out-of-map corners read (pixel index `pixels + slot`). In (N, H, W, C) a group's
// rows lie C apart, and with C a multiple of 1024 (dcnv4-bench's 7x7 stage: 32 x 32) every pixel
// of it falls in one cache set, so reading and updating them in place thrashes.
template <typename T>
void copy_group(const GroupGeo& g, const T* x, int64_t n, int64_t gi, T* xs) {
  const int64_t pixels = g.h * g.w;
  const T* src = x + n * pixels * g.c + gi * g.d;
  for (int64_t p = 0; p < pixels; ++p) std::copy(src + p * g.c, src + p * g.c + g.d, xs + p * g.d);
  std::fill(xs + pixels * g.d, xs + (pixels + 4) * g.d, T(0));
}

// The forward of one (position, group): the sum over the live points kept in registers and stored
// once. N is D at compile time for the common group widths (the channel loop unrolls into vector
// registers), 0 for any other (then D channels in chunks of kChunk). An out-of-map corner's pixel
// is negative (plan_points' spare): it reads `zeros`.
constexpr int64_t kChunk = 64;

template <typename T, int64_t N>
void forward_group(const Plan<T>* pl, const int64_t* idx, int64_t live, const T* m, const T* xg, int64_t c,
                   const T* zeros, int64_t d, T* dst) {
  constexpr int64_t cap = N ? N : kChunk;
  for (int64_t lo = 0; lo < d; lo += cap) {
    const int64_t len = N ? N : std::min(cap, d - lo);
    T acc[cap];
    for (int64_t k = 0; k < cap; ++k) acc[k] = T(0);
    for (int64_t i = 0; i < live; ++i) {
      DCN_SCALAR_LOOP();
      const Plan<T>& p = pl[i];
      const T mk = m[idx[i]];
      const T* r[4];
      for (int s = 0; s < 4; ++s) r[s] = (p.pix[s] >= 0 ? xg + p.pix[s] * c : zeros) + lo;
      const T *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3];
      const T w0 = p.w[0] * mk, w1 = p.w[1] * mk, w2 = p.w[2] * mk, w3 = p.w[3] * mk;
#pragma omp simd
      for (int64_t k = 0; k < len; ++k) acc[k] += w0 * r0[k] + w1 * r1[k] + w2 * r2[k] + w3 * r3[k];
    }
    for (int64_t k = 0; k < len; ++k) dst[lo + k] = acc[k];
  }
}

// Tasks own blocks of output positions and walk the groups of each: the offsets and mask are read
// in order. (Tasks over (image, group) reading a copy of the group's map, as the backward does,
// measured slower here: their offsets and mask are read G·3P values apart.)
template <typename T>
void forward_cpu(const GroupGeo& g, const T* x, const T* off, const T* mask, bool softmax, T os, T* out) {
  const TapGrid<T> grid(g);
  auto run = [&](auto width) {
    constexpr int64_t N = decltype(width)::value;
    at::parallel_for(0, g.n * g.q, kPositionsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<T> m(g.p), zeros(g.d, T(0));
      std::vector<Plan<T>> pl(g.p);
      std::vector<int64_t> idx(g.p);
      for (int64_t pos = begin; pos < end; ++pos) {
        const int64_t n = pos / g.q, q = pos % g.q;
        const T* xn = x + n * g.h * g.w * g.c;
        for (int64_t gi = 0; gi < g.group; ++gi) {
          load_mask(g, mask, pos, gi, softmax, m.data());
          const int64_t live = plan_points(g, grid, off + pos * g.off_row + gi * g.off_group, q / g.wo, q % g.wo, os,
                                           int64_t(-4), pl.data(), idx.data());
          forward_group<T, N>(pl.data(), idx.data(), live, m.data(), xn + gi * g.d, g.c, zeros.data(), g.d,
                              out + pos * g.c + gi * g.d);
        }
      }
    });
  };
  switch (g.d) {
    case 16: run(std::integral_constant<int64_t, 16>{}); break;
    case 32: run(std::integral_constant<int64_t, 32>{}); break;
    case 64: run(std::integral_constant<int64_t, 64>{}); break;
    default: run(std::integral_constant<int64_t, 0>{});
  }
}

// The backward, one pass: tasks own (image, group, channel slice) of grad_x and walk every position
// and point of the image in order, so no two tasks write one element and every sum has a fixed
// order. Each point's position and corners are planned once for both gradients: the slice's share
// of the input gradient is scattered, and the task of slice 0 also takes the point's offset and
// mask gradients (one dot product of the output gradient with each corner's D channels, scaled by
// the corner's weight and its slopes), the same arithmetic whatever the slicing, so the results
// are bitwise the same on any thread count.
//
// One point's share, over the channels [lo, hi) of the group (the scatter) and, with `dots`, the
// four corner dot products over all D: N > 0 is D at compile time (then [lo, hi) is all of it and
// both run in one loop), 0 any D.
template <typename T, int64_t N>
void backward_point(const T* go, const T* xs, T* gxs, const Plan<T>& p, int64_t d, T mk, int64_t lo, int64_t hi,
                    bool dots, T a[4]) {
  const int64_t o0 = p.pix[0] * d, o1 = p.pix[1] * d, o2 = p.pix[2] * d, o3 = p.pix[3] * d;
  const T w0 = p.w[0] * mk, w1 = p.w[1] * mk, w2 = p.w[2] * mk, w3 = p.w[3] * mk;
  T *g0 = gxs + o0, *g1 = gxs + o1, *g2 = gxs + o2, *g3 = gxs + o3;
  if (N && dots) {
    const T *x0 = xs + o0, *x1 = xs + o1, *x2 = xs + o2, *x3 = xs + o3;
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t k = 0; k < N; ++k) {
      const T v = go[k];
      a0 += v * x0[k];
      a1 += v * x1[k];
      a2 += v * x2[k];
      a3 += v * x3[k];
      g0[k] += w0 * v;
      g1[k] += w1 * v;
      g2[k] += w2 * v;
      g3[k] += w3 * v;
    }
    a[0] = a0; a[1] = a1; a[2] = a2; a[3] = a3;
    return;
  }
  if (dots) {
    const T *x0 = xs + o0, *x1 = xs + o1, *x2 = xs + o2, *x3 = xs + o3;
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t k = 0; k < d; ++k) {
      a0 += go[k] * x0[k];
      a1 += go[k] * x1[k];
      a2 += go[k] * x2[k];
      a3 += go[k] * x3[k];
    }
    a[0] = a0; a[1] = a1; a[2] = a2; a[3] = a3;
  }
#pragma omp simd
  for (int64_t k = lo; k < hi; ++k) {
    const T v = go[k];
    g0[k] += w0 * v;
    g1[k] += w1 * v;
    g2[k] += w2 * v;
    g3[k] += w3 * v;
  }
}

template <typename T>
void backward_cpu(const GroupGeo& g, const T* grad, const T* x, const T* off, const T* mask, bool softmax, T os,
                  T* grad_x, T* grad_off, T* grad_mask) {
  const TapGrid<T> grid(g);
  // D of 16, 32 or 64 runs backward_point's fused loop and is never sliced: which loop computes the
  // dot products must not depend on the thread count, or their rounding would.
  const bool fused = g.d == 16 || g.d == 32 || g.d == 64;
  const int64_t threads = at::get_num_threads();
  const int64_t wanted = (threads + g.n * g.group - 1) / (g.n * g.group);
  const int64_t slices = fused ? 1 : std::max<int64_t>(1, std::min(std::max<int64_t>(g.d / kMinChannelSlice, 1), wanted));
  auto run = [&](auto width) {
    constexpr int64_t N = decltype(width)::value;
    at::parallel_for(0, g.n * g.group * slices, 1, [&](int64_t begin, int64_t end) {
      // The task's group of the map and of its gradient as rows of D (copy_group says why), each
      // with four rows past the map's: zeros in xs, sinks in gxs, for the plans' out-of-map corners.
      const int64_t pixels = g.h * g.w;
      std::vector<T> m(g.p), gm(g.p), xs((pixels + 4) * g.d), gxs((pixels + 4) * g.d);
      std::vector<Plan<T>> pl(g.p);
      std::vector<int64_t> idx(g.p);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / (g.group * slices), gi = (t / slices) % g.group, s = t % slices;
        const int64_t lo = s * g.d / slices, hi = (s + 1) * g.d / slices;
        const bool offsets_here = s == 0;
        T* gx_out = grad_x + n * pixels * g.c + gi * g.d;
        if (offsets_here) copy_group(g, x, n, gi, xs.data());
        std::fill(gxs.begin(), gxs.end(), T(0));
        for (int64_t q = 0; q < g.q; ++q) {
          const int64_t pos = n * g.q + q, ho = q / g.wo, wo = q % g.wo;
          if (q + 1 < g.q) prefetch_sides(g, off, mask, pos + 1, gi);
          load_mask(g, mask, pos, gi, softmax, m.data());
          const T* o = off + pos * g.off_row + gi * g.off_group;
          const T* go = grad + pos * g.c + gi * g.d;
          T* goff = grad_off + pos * g.off_row + gi * g.off_group;
          const int64_t live = plan_points(g, grid, o, ho, wo, os, pixels, pl.data(), idx.data());
          std::fill(gm.begin(), gm.end(), T(0));  // the gradient buffers start at 0: dead points keep it
          for (int64_t i = 0; i < live; ++i) {
            const Plan<T>& p = pl[i];
            const int64_t k = idx[i];
            T a[4];
            backward_point<T, N>(go, xs.data(), gxs.data(), p, g.d, m[k], lo, hi, offsets_here, a);
            if (!offsets_here) continue;
            const T sx = p.dx[0] * a[0] + p.dx[1] * a[1] + p.dx[2] * a[2] + p.dx[3] * a[3];
            const T sy = p.dy[0] * a[0] + p.dy[1] * a[1] + p.dy[2] * a[2] + p.dy[3] * a[3];
            goff[2 * k] = sx * m[k] * os;
            goff[2 * k + 1] = sy * m[k] * os;
            gm[k] = p.w[0] * a[0] + p.w[1] * a[1] + p.w[2] * a[2] + p.w[3] * a[3];
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
  };
  switch (g.d) {
    case 16: run(std::integral_constant<int64_t, 16>{}); break;
    case 32: run(std::integral_constant<int64_t, 32>{}); break;
    case 64: run(std::integral_constant<int64_t, 64>{}); break;
    default: run(std::integral_constant<int64_t, 0>{});
  }
}

// offset_scale reaches the official kernels as a C float: round it the same way.
template <typename T>
T float_scale(double offset_scale) {
  return T(static_cast<float>(offset_scale));
}

at::Tensor forward(const GroupGeo& g, const at::Tensor& x, const at::Tensor& off, const at::Tensor& mask, bool softmax,
                   double offset_scale) {
  at::Tensor out = at::empty({g.n, g.ho, g.wo, g.c}, x.options());  // forward_cpu writes every element
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

TORCH_LIBRARY_IMPL(DCN_LIBRARY, CPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward);
  m.impl("dcnv3_backward", &dcnv3_backward);
  m.impl("dcnv4_forward", &dcnv4_forward);
  m.impl("dcnv4_backward", &dcnv4_backward);
}

}  // namespace dcnbench_ext
