// Multi-scale deformable attention's per-point math, shared by the CPU and CUDA kernels as inline
// __host__ __device__ helpers (like sampling.h), so the CPU tests exercise what the GPU runs.
//
// A location (x, y), normalised to [0, 1] over a level of H x W, samples pixel (x·W − 0.5, y·H − 0.5)
// (grid_sample's align_corners=False). The bilinear cell of a coordinate p is [floor(p), floor(p) + 1];
// its corners inside the level are read (even at weight 0), those outside are not (rule Z). A
// location that is not finite reads nothing: its weights are NaN, so its head's output, its location
// and weight gradients are NaN and the map gets no gradient from it (README "Non-finite values").
#pragma once

#include <cmath>
#include <cstdint>

#include "sampling.h"  // DCN_HD, Corners, finite, nowhere, not_a_number

namespace dcnbench_ext {

// One call's sizes: value (n, s, m, d), locations (n, q, m, l, p, 2), weights (n, q, m, l, p),
// output (n, q, m·d). `shapes` (l, 2) = (H, W) and `starts` (l,) are the level table.
struct MsdaGeo {
  int64_t n, s, m, d, l, q, p;
};

// The corners of the sample at normalised (lx, ly) on an h x w level: idx is the pixel inside the
// level (y·w + x) or −1 outside it; w the bilinear weights; dy, dx the weights' derivatives by the
// pixel coordinates (the chain rule's factor h or w for the normalised location is the caller's).
// Same rule as bilinear_z, with floor by truncation once the point is known to be in range
// (no libm call in the CPU's innermost loop).
template <typename T>
DCN_HD Corners<T> msda_corners(T loc_x, T loc_y, int64_t h, int64_t w) {
  const T y = loc_y * T(h) - T(0.5), x = loc_x * T(w) - T(0.5);
  if (!finite(y) || !finite(x)) return nowhere<T>(not_a_number<T>());
  if (y < T(-1) || y >= T(h) || x < T(-1) || x >= T(w)) return nowhere<T>(T(0));
  int64_t y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x);  // toward zero, then down
  y0 -= T(y0) > y;
  x0 -= T(x0) > x;
  const T ly = y - T(y0), lx = x - T(x0);
  const T wy[2] = {T(1) - ly, ly}, wx[2] = {T(1) - lx, lx}, s[2] = {T(-1), T(1)};
  Corners<T> c;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int j = a * 2 + b;
      const int64_t yi = y0 + a, xi = x0 + b;
      const bool in = yi >= 0 && yi < h && xi >= 0 && xi < w;
      c.idx[j] = in ? yi * w + xi : -1;
      c.w[j] = in ? wy[a] * wx[b] : T(0);
      c.dy[j] = in ? s[a] * wx[b] : T(0);
      c.dx[j] = in ? wy[a] * s[b] : T(0);
    }
  return c;
}

// Whether the sample reads nothing because its location is not finite (its weights are NaN).
template <typename T>
DCN_HD bool msda_poisoned(const Corners<T>& c) {
  return c.w[0] != c.w[0];
}

// Where point (n, q, m, l, p)'s location and weight live (the weight's index; the location's x is
// at twice it, y next to it).
DCN_HD int64_t msda_point_index(const MsdaGeo& g, int64_t n, int64_t q, int64_t m, int64_t l, int64_t p) {
  return (((n * g.q + q) * g.m + m) * g.l + l) * g.p + p;
}

// The value row of (image n, level position pix of the level starting at `start`, head m): D channels.
DCN_HD int64_t msda_value_row(const MsdaGeo& g, int64_t n, int64_t start, int64_t pix, int64_t m) {
  return ((n * g.s + start + pix) * g.m + m) * g.d;
}

}  // namespace dcnbench_ext
