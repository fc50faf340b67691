// DCNv3/DCNv4 per-point math: where a point samples and which corners it reads, as inline
// __host__ __device__ helpers (like sampling.h), so a CUDA kernel can share what the CPU tests.
//
// Unlike sampling.h's Corners, a GroupPoint lists only the corners inside the map: kernels loop
// over those and never touch an out-of-map pixel, so a NaN or infinite pixel reaches only the
// outputs (and gradients) of points that read it.
#pragma once

#include <cmath>
#include <cstdint>

#include "sampling.h"  // DCN_HD

namespace dcnbench_ext {

// One DCNv3/DCNv4 call's geometry, and where each (position, group, point)'s offsets and mask
// live: offset pair (dx, dy) of point p at pos·off_row + g·off_group + 2p (+1 for dy), mask at
// pos·mask_row + g·mask_group + mask_shift + p. DCNv3: two tensors (off_group 2P, mask_group P);
// DCNv4: one packed tensor (both groups 3P, mask_shift 2P, rows Cpad lanes long).
struct GroupGeo {
  int64_t n, h, w, group, d, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, q, p;
  bool remove_center;
  int64_t off_row, off_group, mask_row, mask_group, mask_shift;
};

// The sampling position of tap (i, j) (x index, y index) at output (ho, wo), evaluated in the
// CUDA kernels' order: (p0 − c·os) + (k·dil + offset)·os.
template <typename T>
DCN_HD void group_position(const GroupGeo& g, int64_t ho, int64_t wo, int64_t i, int64_t j, T off_x, T off_y, T os,
                           T& y, T& x) {
  const int64_t cx = (g.dw * (g.kw - 1)) >> 1, cy = (g.dh * (g.kh - 1)) >> 1;
  const T p0x = T(cx - g.pw + wo * g.sw) - T(cx) * os;
  const T p0y = T(cy - g.ph + ho * g.sh) - T(cy) * os;
  x = p0x + (T(i * g.dw) + off_x) * os;
  y = p0y + (T(j * g.dh) + off_y) * os;
}

// The in-map corners of a bilinear read at (y, x) under rule Z, after the kernels' pre-test
// (−1 < y < H and −1 < x < W; NaN fails it): their pixel index y·W + x, weight, and the weight's
// derivatives by y and by x.
template <typename T>
struct GroupPoint {
  int count;
  int64_t pix[4];
  T w[4], dy[4], dx[4];
};

template <typename T>
DCN_HD GroupPoint<T> group_point(T y, T x, int64_t h, int64_t w) {
  GroupPoint<T> pt;
  pt.count = 0;
  if (!(y > T(-1) && x > T(-1) && y < T(h) && x < T(w))) return pt;
  // floor by truncation (y and x are bounded by the pre-test): no libm call on the CPU.
  int64_t y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x);
  y0 -= T(y0) > y;
  x0 -= T(x0) > x;
  const T ly = y - T(y0), lx = x - T(x0);
  const T wy[2] = {T(1) - ly, ly}, wx[2] = {T(1) - lx, lx}, s[2] = {T(-1), T(1)};
  for (int a = 0; a < 2; ++a) {
    const int64_t yi = y0 + a;
    if (yi < 0 || yi >= h) continue;
    for (int b = 0; b < 2; ++b) {
      const int64_t xi = x0 + b;
      if (xi < 0 || xi >= w) continue;
      const int k = pt.count++;
      pt.pix[k] = yi * w + xi;
      pt.w[k] = wy[a] * wx[b];
      pt.dy[k] = s[a] * wx[b];
      pt.dx[k] = wy[a] * s[b];
    }
  }
  return pt;
}

// Softmax over the P mask values of one (position, group), in place (DCNv4's `softmax` flag).
template <typename T>
DCN_HD void group_softmax(T* m, int64_t p) {
  T top = m[0];
  for (int64_t k = 1; k < p; ++k) top = m[k] > top ? m[k] : top;
  T sum = T(0);
  for (int64_t k = 0; k < p; ++k) {
    m[k] = exp(m[k] - top);
    sum += m[k];
  }
  for (int64_t k = 0; k < p; ++k) m[k] /= sum;
}

}  // namespace dcnbench_ext
