// DCNv3 and DCNv4 on the CPU, forward and backward, channels-last like the ops' layouts.
//
// Both ops are one kernel: DCNv4 is DCNv3 with the offsets and mask read from one packed tensor
// (GroupGeo's strides say where). Each point's position and in-map corners are computed once per
// (position, group) and shared by the group's D channels, which are contiguous in (N, H, W, C) and
// in the output, so the channel loops vectorise. There is no column buffer: memory is the
// output's, whatever the batch (im2col_step is accepted and has nothing to bound), and per thread
// at most three images of 512 KiB (pack_images).
//
// Every output element is written by one task in a fixed order: the forward splits by output
// position; the backward by (image, group, channel slice), each task walking every position and
// point in order (the first slice's task also writes the offset and mask gradients). So results are bitwise reproducible, whatever
// the thread count. Out-of-map corners are never read (group_sampling.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../library.h"
#include "../group_sampling.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

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
constexpr int64_t kBlock = 8;  // output positions a backward task plans together

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

// The lanes' pixel indices are int32 (plan_lanes): checked before any output is allocated.
GroupGeo check_lane_indices(const GroupGeo& g) {
  TORCH_CHECK(g.h * g.w + 4 <= INT32_MAX, "DCNv3/DCNv4 on the CPU takes maps of at most ", INT32_MAX - 4,
              " pixels (H*W), got ", g.h, "x", g.w, " = ", g.h * g.w);
  return g;
}

GroupGeo dcnv3_layout(GroupGeo g) {
  g.off_row = g.group * g.p * 2; g.off_group = g.p * 2;
  g.mask_row = g.group * g.p; g.mask_group = g.p; g.mask_shift = 0;
  return check_lane_indices(g);
}

GroupGeo dcnv4_layout(GroupGeo g, int64_t cpad) {
  TORCH_CHECK(cpad % 8 == 0 && cpad >= g.group * g.p * 3, "offset_mask has ", cpad,
              " lanes, expected a multiple of 8 >= G*P*3 = ", g.group * g.p * 3);
  g.off_row = cpad; g.off_group = g.p * 3;
  g.mask_row = cpad; g.mask_group = g.p * 3; g.mask_shift = g.p * 2;
  return check_lane_indices(g);
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

// The bilinear reads of a run of points ("lanes"), one array per field, so that planning them
// vectorises across the points: ~40 scalar operations and two unpredictable branches per point
// otherwise, as much time as the channel loops that share them (D = 32 channels, four AVX2
// vectors). Each lane reads four fixed corner slots, (y0, x0), (y0, x0 + 1), (y0 + 1, x0),
// (y0 + 1, x0 + 1): group_point's in-map corners with their weights and slopes, each at its slot,
// and an out-of-map corner as weight 0 at pixel `spare + slot` (a row of zeros to read, or a sink
// row to write, never the map: a NaN pixel reaches only the points that read it). ok is 0 for a
// point that fails group_point's pre-test (all four corners out of the map: it adds nothing).
// Slot s of lane j is at s·cap + j.
template <typename T>
struct Lanes {
  int64_t cap;
  std::vector<T> px, py, kx, ky;  // the lane's origin and tap: x = px + (kx + dx)·os, as group_position
  std::vector<T> pair;            // the lane's offsets (dx, dy) at 2j, 2j + 1, copied in by the caller
  std::vector<int32_t> pix, ok, live;
  std::vector<T> w, dy, dx;
  explicit Lanes(int64_t n)
      : cap(n), px(n), py(n), kx(n), ky(n), pair(2 * n), pix(4 * n), ok(n), live(n), w(4 * n), dy(4 * n), dx(4 * n) {}
};

// Plans lanes [0, n) (their offsets copied into ln.pair: reading them in place took gathers, the
// plan's main cost on Zen 3); the same operations per lane as
// group_position and group_point, in the same order, whichever iteration of the vector loop (or its
// remainder) takes a lane. Pixel indices are int32: the callers check that h·w + 4 fits.
//
// GCC 12 leaves this loop scalar under its default -ftrapping-math: it keeps a product or a
// float-to-int conversion whose result a select may discard behind a branch, in case it traps.
// Nothing here runs with floating-point traps enabled, and the flag changes no value.
#if defined(__GNUC__) && !defined(__clang__)
#define DCN_NO_TRAPS __attribute__((optimize("no-trapping-math")))
#else
#define DCN_NO_TRAPS
#endif

template <typename T>
DCN_NO_TRAPS void plan_lanes(T os, int64_t h, int64_t w, int32_t spare, int64_t n, Lanes<T>& ln) {
  const int64_t cap = ln.cap;
  const int32_t h32 = static_cast<int32_t>(h), w32 = static_cast<int32_t>(w);
  const T hf = T(h), wf = T(w);
  const T *px = ln.px.data(), *py = ln.py.data(), *kx = ln.kx.data(), *ky = ln.ky.data();
  const T* pair = ln.pair.data();
  int32_t *pix = ln.pix.data(), *ok = ln.ok.data();
  T *wt = ln.w.data(), *sy = ln.dy.data(), *sx = ln.dx.data();
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T x = px[j] + (kx[j] + pair[2 * j]) * os;
    const T y = py[j] + (ky[j] + pair[2 * j + 1]) * os;
    const bool in_map = (y > T(-1)) & (x > T(-1)) & (y < hf) & (x < wf);  // & not &&: no branches
    // floor by truncation, as group_point; a lane that fails the pre-test (NaN, huge) converts 0
    const T yc = in_map ? y : T(0), xc = in_map ? x : T(0);
    int32_t y0 = static_cast<int32_t>(yc), x0 = static_cast<int32_t>(xc);
    y0 -= T(y0) > yc;
    x0 -= T(x0) > xc;
    const T ly = yc - T(y0), lx = xc - T(x0), hy = T(1) - ly, hx = T(1) - lx;
    const bool top = y0 >= 0, bottom = y0 + 1 < h32, left = x0 >= 0, right = x0 + 1 < w32;
    const int32_t at = y0 * w32 + x0;
    const bool in0 = top & left, in1 = top & right, in2 = bottom & left, in3 = bottom & right;
    pix[j] = in0 ? at : spare;
    pix[cap + j] = in1 ? at + 1 : spare + 1;
    pix[2 * cap + j] = in2 ? at + w32 : spare + 2;
    pix[3 * cap + j] = in3 ? at + w32 + 1 : spare + 3;
    wt[j] = in0 ? hy * hx : T(0);
    wt[cap + j] = in1 ? hy * lx : T(0);
    wt[2 * cap + j] = in2 ? ly * hx : T(0);
    wt[3 * cap + j] = in3 ? ly * lx : T(0);
    sy[j] = in0 ? -hx : T(0);
    sy[cap + j] = in1 ? -lx : T(0);
    sy[2 * cap + j] = in2 ? hx : T(0);
    sy[3 * cap + j] = in3 ? lx : T(0);
    sx[j] = in0 ? -hy : T(0);
    sx[cap + j] = in1 ? hy : T(0);
    sx[2 * cap + j] = in2 ? -ly : T(0);
    sx[3 * cap + j] = in3 ? ly : T(0);
    ok[j] = in_map;
  }
}

// The lanes of [lo, hi) that read the map, appended to ln.live in order (no branch per lane: the
// pre-test's outcome is random); returns the new count.
template <typename T>
int64_t gather_live(Lanes<T>& ln, int64_t lo, int64_t hi, int64_t count) {
  int32_t* live = ln.live.data();
  const int32_t* ok = ln.ok.data();
  for (int64_t j = lo; j < hi; ++j) {
    live[count] = static_cast<int32_t>(j);
    count += ok[j];
  }
  return count;
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

// Asks for n values from p ahead of use. The forward plans a position's offsets with gathers,
// which wait for each line (and, being gathers, do not set the hardware prefetcher going).
template <typename T>
void prefetch_span(const T* p, int64_t n) {
#if defined(__GNUC__)
  const char* b = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < int64_t(n * sizeof(T)); i += 64) __builtin_prefetch(b + i);
  __builtin_prefetch(b + n * sizeof(T) - 1);
#endif
}

// Whether tasks keep a whole image group-major (pack_image), each group's rows D apart, instead of
// reading the map and the output gradient in place and copying each (image, group) (copy_group):
// when a pixel's channels span 2 KiB or more (the stages of 14x14 and 7x7 in dcnv4-bench) and the
// image fits in a core's L2 (512 KiB on the EPYC this was measured on). The image is then read and
// written in order, once per task range, not as G sets of rows on separate pages; the arithmetic
// is the same, and so are the results, bit for bit. Measured (one thread, DCNv3, 64 images, CPU
// time of alternating calls): the forward 28.7 -> 24.0 ms at 7x7, 60.0 -> 46.5 ms at 14x14.
inline bool pack_images(const GroupGeo& g, int64_t bytes) {
  return g.c * bytes >= 2048 && (g.h * g.w + 4) * g.c * bytes <= (512 << 10);
}

// One image of a (rows, G, D) tensor into dst group-major: group k's rows from k·stride rows on
// (rows past `rows` are left as they are: the map's four rows of zeros). unpack_groups is the way
// back for groups [ga, gb), into rows of c values.
template <typename T>
void pack_image(const T* src, int64_t rows, int64_t group, int64_t d, int64_t stride, T* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < group; ++k) {
      const T* from = src + (r * group + k) * d;
      T* to = dst + (k * stride + r) * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) to[i] = from[i];
    }
}

template <typename T>
void unpack_groups(const T* src, int64_t rows, int64_t ga, int64_t gb, int64_t d, int64_t stride, int64_t c, T* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = ga; k < gb; ++k) {
      const T* from = src + (k * stride + r) * d;
      T* to = dst + r * c + k * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) to[i] = from[i];
    }
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
// is negative (plan_lanes' spare): it reads `zeros`.
constexpr int64_t kChunk = 64;

template <typename T, int64_t N>
void forward_group(const Lanes<T>& ln, int64_t count, int64_t first, const T* m, const T* xg, int64_t c,
                   const T* zeros, int64_t d, T* dst) {
  constexpr int64_t cap = N ? N : kChunk;
  const int64_t lanes = ln.cap;
  for (int64_t lo = 0; lo < d; lo += cap) {
    const int64_t len = N ? N : std::min(cap, d - lo);
    // acc starts as the first point's terms, not as zeros: GCC made the zeroing a memset (rep stos,
    // ~30 cycles a group).
    T acc[cap];
    for (int64_t i = 0; i < count; ++i) {
      DCN_SCALAR_LOOP();
      const int64_t j = ln.live[i];
      const T mk = m[j - first];
      const T* r[4];
      for (int s = 0; s < 4; ++s) {
        const int32_t px = ln.pix[s * lanes + j];
        r[s] = (px >= 0 ? xg + px * c : zeros) + lo;
      }
      const T *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3];
      const T w0 = ln.w[j] * mk, w1 = ln.w[lanes + j] * mk, w2 = ln.w[2 * lanes + j] * mk,
              w3 = ln.w[3 * lanes + j] * mk;
      if (i == 0) {
#pragma omp simd
        for (int64_t k = 0; k < len; ++k) acc[k] = w0 * r0[k] + w1 * r1[k] + w2 * r2[k] + w3 * r3[k];
      } else {
#pragma omp simd
        for (int64_t k = 0; k < len; ++k) acc[k] += w0 * r0[k] + w1 * r1[k] + w2 * r2[k] + w3 * r3[k];
      }
    }
    for (int64_t k = 0; k < len; ++k) dst[lo + k] = count ? acc[k] : T(0);
  }
}

// Tasks own blocks of output positions and walk the groups of each: the offsets and mask are read
// in order. (Tasks over (image, group) reading a copy of the group's map, as the backward does,
// measured slower here: their offsets and mask are read G·3P values apart.) With pack_images, a
// task reads its images group-major.
template <typename T>
void forward_cpu(const GroupGeo& g, const T* x, const T* off, const T* mask, bool softmax, T os, T* out) {
  const TapGrid<T> grid(g);
  const int64_t lanes = g.group * g.p;  // a position's points, all groups: planned together
  const bool packed = pack_images(g, sizeof(T));
  auto run = [&](auto width) {
    constexpr int64_t N = decltype(width)::value;
    at::parallel_for(0, g.n * g.q, kPositionsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<T> m(g.p), zeros(g.d, T(0));
      Lanes<T> ln(lanes);
      for (int64_t j = 0; j < lanes; ++j) {
        const int64_t gi = j / g.p, k = j % g.p;
        ln.kx[j] = grid.kx[k];
        ln.ky[j] = grid.ky[k];
      }
      const int64_t pixels = g.h * g.w;
      std::vector<T> xp(packed ? (pixels + 4) * g.c : 0, T(0));
      int64_t have = -1;
      for (int64_t pos = begin; pos < end; ++pos) {
        const int64_t n = pos / g.q, q = pos % g.q;
        const T* xn = x + n * g.h * g.w * g.c;
        if (packed && n != have) {
          pack_image(xn, pixels, g.group, g.d, pixels + 4, xp.data());
          have = n;
        }
        T p0y, p0x;
        origin(g, q / g.wo, q % g.wo, os, p0y, p0x);
        std::fill(ln.px.begin(), ln.px.end(), p0x);
        std::fill(ln.py.begin(), ln.py.end(), p0y);
        if (pos + 1 < end) {
          prefetch_span(off + (pos + 1) * g.off_row, g.group * g.off_group);
          if (mask != off) prefetch_span(mask + (pos + 1) * g.mask_row, g.group * g.mask_group);
        }
        for (int64_t gi = 0; gi < g.group; ++gi) {
          const T* o = off + pos * g.off_row + gi * g.off_group;
          std::copy(o, o + 2 * g.p, ln.pair.data() + gi * 2 * g.p);
        }
        plan_lanes(os, g.h, g.w, packed ? static_cast<int32_t>(pixels) : -4, lanes, ln);
        for (int64_t gi = 0; gi < g.group; ++gi) {
          load_mask(g, mask, pos, gi, softmax, m.data());
          const int64_t count = gather_live(ln, gi * g.p, (gi + 1) * g.p, 0);
          const T* xg = packed ? xp.data() + gi * (pixels + 4) * g.d : xn + gi * g.d;
          forward_group<T, N>(ln, count, gi * g.p, m.data(), xg, packed ? g.d : g.c, zeros.data(), g.d,
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
// a[i] = the sum of s[i]'s L lanes, for four accumulators at once: with AVX, float's eight lanes
// by three horizontal adds and one add (the tree ((0+1)+(2+3)) + ((4+5)+(6+7)) for each), else in
// order. Which path runs depends on the build only, never on the thread count.
template <typename T, int64_t L>
void sum4(const T (&s)[4][L], T a[4]) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float> && L == 8) {
    const __m256 h01 = _mm256_hadd_ps(_mm256_loadu_ps(s[0]), _mm256_loadu_ps(s[1]));
    const __m256 h23 = _mm256_hadd_ps(_mm256_loadu_ps(s[2]), _mm256_loadu_ps(s[3]));
    const __m256 h = _mm256_hadd_ps(h01, h23);
    _mm_storeu_ps(a, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    return;
  }
#endif
  for (int i = 0; i < 4; ++i) {
    T t = s[i][0];
    for (int64_t l = 1; l < L; ++l) t += s[i][l];
    a[i] = t;
  }
}

template <typename T, int64_t N>
void backward_point(const T* go, const T* xs, T* gxs, const Lanes<T>& ln, int64_t j, int64_t d, T mk, int64_t lo,
                    int64_t hi, bool dots, T a[4]) {
  const int64_t lanes = ln.cap;
  const int64_t o0 = ln.pix[j] * d, o1 = ln.pix[lanes + j] * d, o2 = ln.pix[2 * lanes + j] * d,
                o3 = ln.pix[3 * lanes + j] * d;
  const T w0 = ln.w[j] * mk, w1 = ln.w[lanes + j] * mk, w2 = ln.w[2 * lanes + j] * mk, w3 = ln.w[3 * lanes + j] * mk;
  T *g0 = gxs + o0, *g1 = gxs + o1, *g2 = gxs + o2, *g3 = gxs + o3;
  if (N && dots) {
    // The dot products as four accumulators of one vector register each, summed by sum4's tree
    // (omp simd's reduction would reduce each one across its register on its own).
    constexpr int64_t L = 32 / sizeof(T);
    const T *x0 = xs + o0, *x1 = xs + o1, *x2 = xs + o2, *x3 = xs + o3;
    T s[4][L] = {};
    for (int64_t k0 = 0; k0 < N; k0 += L) {
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) {
        const int64_t k = k0 + l;
        const T v = go[k];
        s[0][l] += v * x0[k];
        s[1][l] += v * x1[k];
        s[2][l] += v * x2[k];
        s[3][l] += v * x3[k];
        g0[k] += w0 * v;
        g1[k] += w1 * v;
        g2[k] += w2 * v;
        g3[k] += w3 * v;
      }
    }
    sum4(s, a);
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
  const bool packed = slices == 1 && pack_images(g, sizeof(T));
  auto run = [&](auto width) {
    constexpr int64_t N = decltype(width)::value;
    at::parallel_for(0, g.n * g.group * slices, 1, [&](int64_t begin, int64_t end) {
      // The task's group of the map and of its gradient as rows of D (copy_group says why), each
      // with four rows past the map's: zeros in xs, sinks in gxs, for the plans' out-of-map corners.
      // With pack_images, the whole image of the map (xp), of the output gradient (gp) and of the
      // input gradient (gxp, written back once the range's last group of the image is done).
      const int64_t pixels = g.h * g.w;
      std::vector<T> m(g.p), gm(g.p), xs(packed ? 0 : (pixels + 4) * g.d), gxs(packed ? 0 : (pixels + 4) * g.d);
      std::vector<T> xp(packed ? (pixels + 4) * g.c : 0, T(0)), gp(packed ? g.q * g.c : 0),
          gxp(packed ? (pixels + 4) * g.c : 0);
      int64_t have = -1, first_group = 0;  // the image packed, and the range's first group of it
      Lanes<T> ln(kBlock * g.p);  // kBlock positions' points, planned together
      for (int64_t j = 0; j < ln.cap; ++j) {
        const int64_t b = j / g.p, k = j % g.p;
        ln.kx[j] = grid.kx[k];
        ln.ky[j] = grid.ky[k];
      }
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / (g.group * slices), gi = (t / slices) % g.group, s = t % slices;
        const int64_t lo = s * g.d / slices, hi = (s + 1) * g.d / slices;
        const bool offsets_here = s == 0;
        if (packed && n != have) {
          pack_image(x + n * pixels * g.c, pixels, g.group, g.d, pixels + 4, xp.data());
          pack_image(grad + n * g.q * g.c, g.q, g.group, g.d, g.q, gp.data());
          have = n;
          first_group = gi;
        }
        if (offsets_here && !packed) copy_group(g, x, n, gi, xs.data());
        const T* xg = packed ? xp.data() + gi * (pixels + 4) * g.d : xs.data();
        T* gxg = packed ? gxp.data() + gi * (pixels + 4) * g.d : gxs.data();
        std::fill(gxg, gxg + (pixels + 4) * g.d, T(0));
        for (int64_t q0 = 0; q0 < g.q; q0 += kBlock) {
          const int64_t block = std::min(kBlock, g.q - q0);
          for (int64_t b = 0; b < block; ++b) {
            T p0y, p0x;
            origin(g, (q0 + b) / g.wo, (q0 + b) % g.wo, os, p0y, p0x);
            std::fill(ln.px.begin() + b * g.p, ln.px.begin() + (b + 1) * g.p, p0x);
            std::fill(ln.py.begin() + b * g.p, ln.py.begin() + (b + 1) * g.p, p0y);
            const T* o = off + (n * g.q + q0 + b) * g.off_row + gi * g.off_group;
            std::copy(o, o + 2 * g.p, ln.pair.data() + b * 2 * g.p);
          }
          plan_lanes(os, g.h, g.w, static_cast<int32_t>(pixels), block * g.p, ln);
          for (int64_t b = 0; b < block; ++b) {
            const int64_t q = q0 + b, pos = n * g.q + q;
            if (q + kBlock < g.q) prefetch_sides(g, off, mask, pos + kBlock, gi);
            load_mask(g, mask, pos, gi, softmax, m.data());
            const T* go = packed ? gp.data() + (gi * g.q + q) * g.d : grad + pos * g.c + gi * g.d;
            T* goff = grad_off + pos * g.off_row + gi * g.off_group;
            const int64_t count = gather_live(ln, b * g.p, (b + 1) * g.p, 0);
            std::fill(gm.begin(), gm.end(), T(0));  // the gradient buffers start at 0: dead points keep it
            for (int64_t i = 0; i < count; ++i) {
              const int64_t j = ln.live[i], k = j - b * g.p, l = ln.cap;
              T a[4];
              backward_point<T, N>(go, xg, gxg, ln, j, g.d, m[k], lo, hi, offsets_here, a);
              if (!offsets_here) continue;
              const T* dx = ln.dx.data() + j;
              const T* dy = ln.dy.data() + j;
              const T* w = ln.w.data() + j;
              const T sx = dx[0] * a[0] + dx[l] * a[1] + dx[2 * l] * a[2] + dx[3 * l] * a[3];
              const T sy = dy[0] * a[0] + dy[l] * a[1] + dy[2 * l] * a[2] + dy[3 * l] * a[3];
              goff[2 * k] = sx * m[k] * os;
              goff[2 * k + 1] = sy * m[k] * os;
              gm[k] = w[0] * a[0] + w[l] * a[1] + w[2 * l] * a[2] + w[3 * l] * a[3];
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
        }
        if (!packed) {
          T* gx_out = grad_x + n * pixels * g.c + gi * g.d;
          for (int64_t p = 0; p < pixels; ++p)
            std::copy(gxs.data() + p * g.d + lo, gxs.data() + p * g.d + hi, gx_out + p * g.c + lo);
        } else if (t + 1 == end || (t + 1) / g.group != n) {
          unpack_groups(gxp.data(), pixels, first_group, gi + 1, g.d, pixels + 4, g.c, grad_x + n * pixels * g.c);
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
