// Per-sample math shared by the CPU and CUDA kernels: where a point reads the map and with what
// weights. Everything here is inline __host__ __device__, so the CPU tests exercise the math the
// GPU runs. Indices are int64_t: a plane offset (n*C + c)*H*W can pass 2^31.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DCN_HD __host__ __device__ __forceinline__
#else
#define DCN_HD inline
#endif

namespace dcnbench_ext {

// Non-finite values (DCN.md section 6, README "Non-finite values"): a sample reads the
// pixels at the corners of its bilinear cell that lie inside the map, and nothing else. A corner
// outside the map has idx -1 and must never be read (its weight is 0, but 0 * inf is NaN): read
// with corner() and interpolate(), and skip idx < 0 when scattering. A sampling point that is not
// finite (a NaN or infinite offset) has no cell: every corner has idx -1 and NaN weights, so the
// outputs (and offset gradients) that use the sample are NaN and the map gets no gradient from it.
//
// idx: the four corners' offsets inside the plane; w: their weights; dy/dx: d w / d y and d w / d x
// (for the offset gradient).
template <typename T>
struct Corners {
  int64_t idx[4];
  T w[4];
  T dy[4];
  T dx[4];
};

template <typename T>
DCN_HD bool finite(T v) {
#if defined(__CUDACC__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// A sample that reads no pixel: weights 0 (no corner in the map) or NaN (a point that is not finite).
template <typename T>
DCN_HD Corners<T> nowhere(T fill) {
  Corners<T> c;
  for (int j = 0; j < 4; ++j) { c.idx[j] = -1; c.w[j] = fill; c.dy[j] = fill; c.dx[j] = fill; }
  return c;
}

template <typename T>
DCN_HD T not_a_number() { return T(NAN); }

// Bilinear read at (y, x) under the paper's rule Z: a corner outside the map contributes zero. The
// cell of y is [floor(y), floor(y) + 1]: at y = -1 exactly it holds row 0 (weight 0, but the
// one-sided derivative reads it); from y = h on it holds no row.
template <typename T>
DCN_HD Corners<T> bilinear_z(T y, T x, int64_t h, int64_t w) {
  if (!finite(y) || !finite(x)) return nowhere<T>(not_a_number<T>());
  if (y < T(-1) || y >= T(h) || x < T(-1) || x >= T(w)) return nowhere<T>(T(0));  // before the integer cast
  Corners<T> c;
  T y0f = floor(y), x0f = floor(x);
  T ly = y - y0f, lx = x - x0f, hy = T(1) - ly, hx = T(1) - lx;
  int64_t y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
  const T wy[2] = {hy, ly}, wx[2] = {hx, lx}, sy[2] = {T(-1), T(1)};
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      int j = a * 2 + b;
      int64_t yi = y0 + a, xi = x0 + b;
      bool ok = yi >= 0 && yi < h && xi >= 0 && xi < w;
      c.idx[j] = ok ? yi * w + xi : -1;
      c.w[j] = ok ? wy[a] * wx[b] : T(0);
      c.dy[j] = ok ? sy[a] * wx[b] : T(0);
      c.dx[j] = ok ? wy[a] * sy[b] : T(0);
    }
  }
  return c;
}

// Corner j's value in `plane`; 0 for a corner outside the map, which is not read.
template <typename T>
DCN_HD T corner(const T* plane, const Corners<T>& q, int j) {
  return q.idx[j] < 0 ? T(0) : plane[q.idx[j]];
}

// The bilinear value w0 v0 + w1 v1 + w2 v2 + w3 v3 (in that order), corners outside the map skipped.
template <typename T>
DCN_HD T interpolate(const T* plane, const Corners<T>& q) {
  return q.w[0] * corner(plane, q, 0) + q.w[1] * corner(plane, q, 1) + q.w[2] * corner(plane, q, 2) +
         q.w[3] * corner(plane, q, 3);
}

// The four corners of rows ys and columns xs, with the weights of each axis and their derivatives.
template <typename T>
DCN_HD void fill_corners(Corners<T>& c, const int64_t ys[2], const int64_t xs[2], const T wy[2], const T wx[2],
                         const T sy[2], const T sx[2], int64_t w) {
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int j = a * 2 + b;
      c.idx[j] = ys[a] * w + xs[b];
      c.w[j] = wy[a] * wx[b];
      c.dy[j] = sy[a] * wx[b];
      c.dx[j] = wy[a] * sx[b];
    }
}

// mmcv's / RoIAlign's read: 0 outside [-1, size]; a coordinate in [-1, 0] reads as 0 and one
// past size-1 as size-1, where it is a constant (no derivative). All four corners of a point
// inside are in the map (they may coincide at the clamped edge).
template <typename T>
DCN_HD Corners<T> bilinear_roialign(T y, T x, int64_t h, int64_t w) {
  if (!finite(y) || !finite(x)) return nowhere<T>(not_a_number<T>());
  if (y < T(-1) || y > T(h) || x < T(-1) || x > T(w)) return nowhere<T>(T(0));
  Corners<T> c;
  T gy = T(1), gx = T(1);  // derivative of the clamped coordinate
  if (y <= T(0)) { y = T(0); gy = T(0); }
  if (x <= T(0)) { x = T(0); gx = T(0); }
  int64_t y0 = static_cast<int64_t>(floor(y)), x0 = static_cast<int64_t>(floor(x)), y1, x1;
  if (y0 >= h - 1) { y0 = y1 = h - 1; y = T(y0); gy = T(0); } else { y1 = y0 + 1; }
  if (x0 >= w - 1) { x0 = x1 = w - 1; x = T(x0); gx = T(0); } else { x1 = x0 + 1; }
  T ly = y - T(y0), lx = x - T(x0), hy = T(1) - ly, hx = T(1) - lx;
  const int64_t ys[2] = {y0, y1}, xs[2] = {x0, x1};
  const T wy[2] = {hy, ly}, wx[2] = {hx, lx}, sy[2] = {-gy, gy}, sx[2] = {-gx, gx};
  fill_corners(c, ys, xs, wy, wx, sy, sx, w);
  return c;
}

// MXNet's DeformablePSROIPooling read at a kept point, already clamped into the map: floor and
// ceil corners, so at an integer coordinate both corners coincide and the derivative is 0.
template <typename T>
DCN_HD Corners<T> bilinear_floor_ceil(T y, T x, int64_t w, T gy, T gx) {
  Corners<T> c;
  int64_t y0 = static_cast<int64_t>(floor(y)), y1 = static_cast<int64_t>(ceil(y));
  int64_t x0 = static_cast<int64_t>(floor(x)), x1 = static_cast<int64_t>(ceil(x));
  T ly = y - T(y0), lx = x - T(x0), hy = T(1) - ly, hx = T(1) - lx;
  const int64_t ys[2] = {y0, y1}, xs[2] = {x0, x1};
  const T wy[2] = {hy, ly}, wx[2] = {hx, lx};
  T same_y = y0 == y1 ? T(0) : gy, same_x = x0 == x1 ? T(0) : gx;
  const T sy[2] = {-same_y, same_y}, sx[2] = {-same_x, same_x};
  fill_corners(c, ys, xs, wy, wx, sy, sx, w);
  return c;
}

// MXNet's DeformablePSROIPooling point (y, x) on an h x w map: false when it is skipped (outside
// [-0.5, size-0.5]), else its corners after clamping into the map. A point that is not finite (a
// NaN or infinite trans) is kept, with NaN weights and no corner: its bin is NaN, it reads nothing.
template <typename T>
DCN_HD bool psroi_corners(T y, T x, int64_t h, int64_t w, Corners<T>& q) {
  if (!finite(y) || !finite(x)) {
    q = nowhere<T>(not_a_number<T>());
    return true;
  }
  if (x < T(-0.5) || x > T(w) - T(0.5) || y < T(-0.5) || y > T(h) - T(0.5)) return false;
  const T gx = (x < T(0) || x > T(w - 1)) ? T(0) : T(1), gy = (y < T(0) || y > T(h - 1)) ? T(0) : T(1);
  x = x < T(0) ? T(0) : (x > T(w - 1) ? T(w - 1) : x);
  y = y < T(0) ? T(0) : (y > T(h - 1) ? T(h - 1) : y);
  q = bilinear_floor_ceil<T>(y, x, w, gy, gx);
  return true;
}

// C's round(): halves away from zero.
template <typename T>
DCN_HD T c_round(T v) { return v < T(0) ? -floor(-v + T(0.5)) : floor(v + T(0.5)); }

// mmcv deform_roi_pool: the RoI on the map and its sampling grid.
template <typename T>
struct RoIBox {
  int64_t batch;
  T x1, y1, w, h;
  int64_t grid_h, grid_w;
  T count;
};

template <typename T>
DCN_HD RoIBox<T> roi_box(const T* roi, T scale, int64_t ph, int64_t pw, int64_t sampling_ratio) {
  RoIBox<T> b;
  b.batch = static_cast<int64_t>(roi[0]);
  b.x1 = roi[1] * scale - T(0.5);
  b.y1 = roi[2] * scale - T(0.5);
  b.w = roi[3] * scale - T(0.5) - b.x1;
  b.h = roi[4] * scale - T(0.5) - b.y1;
  b.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(b.h / T(ph)));
  b.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(b.w / T(pw)));
  int64_t n = b.grid_h * b.grid_w;
  b.count = T(n > 1 ? n : 1);
  return b;
}

// MXNet DeformablePSROIPooling: the rounded RoI on the map.
template <typename T>
struct PSBox {
  int64_t batch;
  T x1, y1, w, h;
};

template <typename T>
DCN_HD PSBox<T> psroi_box(const T* roi, T scale) {
  PSBox<T> b;
  b.batch = static_cast<int64_t>(roi[0]);
  b.x1 = c_round(roi[1]) * scale - T(0.5);
  b.y1 = c_round(roi[2]) * scale - T(0.5);
  T w = (c_round(roi[3]) + T(1)) * scale - T(0.5) - b.x1;
  T h = (c_round(roi[4]) + T(1)) * scale - T(0.5) - b.y1;
  b.w = w > T(0.1) ? w : T(0.1);
  b.h = h > T(0.1) ? h : T(0.1);
  return b;
}

}  // namespace dcnbench_ext
