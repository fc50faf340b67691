// deform_conv2d on the CPU: im2col with deformable sampling, then one GEMM per group.
//
// Work is split into (image, offset group, channel chunk) tasks; each task walks the taps and a
// block of output positions, computes the block's bilinear corners once and reuses them for every
// channel it owns. Every output element is written by exactly one task in a fixed order, so
// forward and backward are deterministic (bitwise equal across runs with the same thread count).
// The column buffer holds a bounded chunk of the batch, so memory does not grow with N.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../sampling.h"

namespace dcnbench_ext {
namespace {

constexpr int64_t kBlock = 64;                  // output positions per corner block
constexpr int64_t kColumnBudget = int64_t(1) << 23;  // column elements per batch chunk (32 MiB in float32)

struct Geo {
  int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, og, ho, wo, k, l;
};

Geo geometry(const at::Tensor& input, const at::Tensor& weight, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
             int64_t dh, int64_t dw, int64_t groups, int64_t og) {
  Geo g{};
  g.n = input.size(0); g.c = input.size(1); g.h = input.size(2); g.w = input.size(3);
  g.o = weight.size(0); g.kh = weight.size(2); g.kw = weight.size(3);
  g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw; g.groups = groups; g.og = og;
  g.ho = (g.h + 2 * ph - dh * (g.kh - 1) - 1) / sh + 1;
  g.wo = (g.w + 2 * pw - dw * (g.kw - 1) - 1) / sw + 1;
  g.k = g.kh * g.kw;
  g.l = g.ho * g.wo;
  return g;
}

int64_t chunk_of(const Geo& g) {
  int64_t per_image = std::max<int64_t>(1, g.c * g.k * g.l);
  return std::max<int64_t>(1, std::min<int64_t>(g.n, kColumnBudget / per_image));
}

// Corners of positions [l0, l1) of tap k for image n, offset group gi.
template <typename T>
void corners_block(const Geo& g, const T* offset, int64_t n, int64_t gi, int64_t k, int64_t l0, int64_t l1,
                   Corners<T>* out) {
  const T* dy = offset + ((n * g.og + gi) * g.k + k) * 2 * g.l;
  const T* dx = dy + g.l;
  const int64_t i = k / g.kw, j = k % g.kw;
  for (int64_t l = l0; l < l1; ++l) {
    const int64_t oy = l / g.wo, ox = l % g.wo;
    const T py = T(oy * g.sh - g.ph + i * g.dh) + dy[l];
    const T px = T(ox * g.sw - g.pw + j * g.dw) + dx[l];
    out[l - l0] = bilinear_z<T>(py, px, g.h, g.w);
  }
}

// Channel chunks per offset group, so a small batch still gives every thread work.
int64_t channel_chunks(const Geo& g, int64_t images) {
  const int64_t threads = at::get_num_threads();
  const int64_t per_group = g.c / g.og;
  int64_t chunks = (threads + images * g.og - 1) / (images * g.og);
  return std::max<int64_t>(1, std::min<int64_t>(per_group, chunks * 2));
}

// cols (b, C*K, L) for images [n0, n0 + b).
template <typename T>
void im2col(const Geo& g, const T* input, const T* offset, const T* mask, int64_t n0, int64_t b, T* cols) {
  const int64_t cpg = g.c / g.og, chunks = channel_chunks(g, b);
  at::parallel_for(0, b * g.og * chunks, 1, [&](int64_t begin, int64_t end) {
    Corners<T> blk[kBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / (g.og * chunks), gi = (t / chunks) % g.og, ch = t % chunks;
      const int64_t c0 = gi * cpg + ch * cpg / chunks, c1 = gi * cpg + (ch + 1) * cpg / chunks;
      const int64_t n = n0 + bi;
      for (int64_t k = 0; k < g.k; ++k) {
        const T* m = mask ? mask + ((n * g.og + gi) * g.k + k) * g.l : nullptr;
        for (int64_t l0 = 0; l0 < g.l; l0 += kBlock) {
          const int64_t l1 = std::min(g.l, l0 + kBlock);
          corners_block(g, offset, n, gi, k, l0, l1, blk);
          for (int64_t c = c0; c < c1; ++c) {
            const T* in = input + (n * g.c + c) * g.h * g.w;
            T* col = cols + ((bi * g.c + c) * g.k + k) * g.l;
            for (int64_t l = l0; l < l1; ++l) {
              const Corners<T>& q = blk[l - l0];
              T v = q.w[0] * in[q.idx[0]] + q.w[1] * in[q.idx[1]] + q.w[2] * in[q.idx[2]] + q.w[3] * in[q.idx[3]];
              col[l] = m ? v * m[l] : v;
            }
          }
        }
      }
    }
  });
}

// grad_input += the columns' gradient scattered back through the bilinear weights.
template <typename T>
void col2im(const Geo& g, const T* gcols, const T* offset, const T* mask, int64_t n0, int64_t b, T* grad_input) {
  const int64_t cpg = g.c / g.og, chunks = channel_chunks(g, b);
  at::parallel_for(0, b * g.og * chunks, 1, [&](int64_t begin, int64_t end) {
    Corners<T> blk[kBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / (g.og * chunks), gi = (t / chunks) % g.og, ch = t % chunks;
      const int64_t c0 = gi * cpg + ch * cpg / chunks, c1 = gi * cpg + (ch + 1) * cpg / chunks;
      const int64_t n = n0 + bi;
      for (int64_t k = 0; k < g.k; ++k) {
        const T* m = mask ? mask + ((n * g.og + gi) * g.k + k) * g.l : nullptr;
        for (int64_t l0 = 0; l0 < g.l; l0 += kBlock) {
          const int64_t l1 = std::min(g.l, l0 + kBlock);
          corners_block(g, offset, n, gi, k, l0, l1, blk);
          for (int64_t c = c0; c < c1; ++c) {
            T* gin = grad_input + (n * g.c + c) * g.h * g.w;
            const T* gcol = gcols + ((bi * g.c + c) * g.k + k) * g.l;
            for (int64_t l = l0; l < l1; ++l) {
              const Corners<T>& q = blk[l - l0];
              const T gv = m ? gcol[l] * m[l] : gcol[l];
              gin[q.idx[0]] += q.w[0] * gv;
              gin[q.idx[1]] += q.w[1] * gv;
              gin[q.idx[2]] += q.w[2] * gv;
              gin[q.idx[3]] += q.w[3] * gv;
            }
          }
        }
      }
    }
  });
}

// Offset and mask gradients: per (image, offset group, tap), summed over the group's channels.
template <typename T>
void offset_mask_grad(const Geo& g, const T* gcols, const T* input, const T* offset, const T* mask, int64_t n0,
                      int64_t b, T* grad_offset, T* grad_mask) {
  const int64_t cpg = g.c / g.og;
  at::parallel_for(0, b * g.og * g.k, 1, [&](int64_t begin, int64_t end) {
    Corners<T> blk[kBlock];
    T ay[kBlock], ax[kBlock], am[kBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / (g.og * g.k), gi = (t / g.k) % g.og, k = t % g.k;
      const int64_t n = n0 + bi;
      const T* m = mask ? mask + ((n * g.og + gi) * g.k + k) * g.l : nullptr;
      T* gy = grad_offset + ((n * g.og + gi) * g.k + k) * 2 * g.l;
      T* gx = gy + g.l;
      T* gm = grad_mask ? grad_mask + ((n * g.og + gi) * g.k + k) * g.l : nullptr;
      for (int64_t l0 = 0; l0 < g.l; l0 += kBlock) {
        const int64_t l1 = std::min(g.l, l0 + kBlock), len = l1 - l0;
        corners_block(g, offset, n, gi, k, l0, l1, blk);
        std::fill(ay, ay + len, T(0));
        std::fill(ax, ax + len, T(0));
        std::fill(am, am + len, T(0));
        for (int64_t c = gi * cpg; c < (gi + 1) * cpg; ++c) {
          const T* in = input + (n * g.c + c) * g.h * g.w;
          const T* gcol = gcols + ((bi * g.c + c) * g.k + k) * g.l;
          for (int64_t l = l0; l < l1; ++l) {
            const Corners<T>& q = blk[l - l0];
            const T v0 = in[q.idx[0]], v1 = in[q.idx[1]], v2 = in[q.idx[2]], v3 = in[q.idx[3]];
            const T gv = gcol[l];
            ay[l - l0] += gv * (q.dy[0] * v0 + q.dy[1] * v1 + q.dy[2] * v2 + q.dy[3] * v3);
            ax[l - l0] += gv * (q.dx[0] * v0 + q.dx[1] * v1 + q.dx[2] * v2 + q.dx[3] * v3);
            if (gm) am[l - l0] += gv * (q.w[0] * v0 + q.w[1] * v1 + q.w[2] * v2 + q.w[3] * v3);
          }
        }
        for (int64_t l = l0; l < l1; ++l) {
          const T scale = m ? m[l] : T(1);
          gy[l] = ay[l - l0] * scale;
          gx[l] = ax[l - l0] * scale;
          if (gm) gm[l] = am[l - l0];
        }
      }
    }
  });
}

at::Tensor forward(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
                   const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_, int64_t sh,
                   int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t og) {
  const at::Tensor input = input_.contiguous(), weight = weight_.contiguous(), offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const Geo g = geometry(input, weight, sh, sw, ph, pw, dh, dw, groups, og);
  at::Tensor out = at::zeros({g.n, g.o, g.ho, g.wo}, input.options());
  if (g.n == 0) return out;
  const int64_t chunk = chunk_of(g), cgk = g.c / groups * g.k, og_out = g.o / groups;
  at::Tensor cols = at::empty({chunk, g.c * g.k, g.l}, input.options());
  const at::Tensor wg = weight.view({groups, og_out, cgk});
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_forward_cpu", [&] {
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
      const int64_t b = std::min(chunk, g.n - n0);
      im2col<scalar_t>(g, input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
                       mask.defined() ? mask.data_ptr<scalar_t>() : nullptr, n0, b, cols.data_ptr<scalar_t>());
      const at::Tensor c3 = cols.narrow(0, 0, b);
      at::Tensor o4 = out.narrow(0, n0, b).view({b, groups, og_out, g.l});
      for (int64_t gi = 0; gi < groups; ++gi) {
        o4.select(1, gi).copy_(at::matmul(wg[gi], c3.narrow(1, gi * cgk, cgk)));
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
  const at::Tensor grad = grad_.contiguous(), input = input_.contiguous(), weight = weight_.contiguous();
  const at::Tensor offset = offset_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const Geo g = geometry(input, weight, sh, sw, ph, pw, dh, dw, groups, og);
  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_weight = at::zeros_like(weight);
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = mask.defined() ? at::zeros_like(mask) : at::Tensor();
  if (g.n == 0) return {grad_input, grad_weight, grad_offset, grad_mask};
  const int64_t chunk = chunk_of(g), cgk = g.c / groups * g.k, og_out = g.o / groups;
  at::Tensor cols = at::empty({chunk, g.c * g.k, g.l}, input.options());
  at::Tensor gcols = at::empty({chunk, g.c * g.k, g.l}, input.options());
  const at::Tensor wg = weight.view({groups, og_out, cgk});
  at::Tensor gw = grad_weight.view({groups, og_out, cgk});
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    const scalar_t* m = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
      const int64_t b = std::min(chunk, g.n - n0);
      im2col<scalar_t>(g, input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b, cols.data_ptr<scalar_t>());
      const at::Tensor g4 = grad.narrow(0, n0, b).view({b, groups, og_out, g.l});
      const at::Tensor c3 = cols.narrow(0, 0, b);
      at::Tensor gc3 = gcols.narrow(0, 0, b);
      for (int64_t gi = 0; gi < groups; ++gi) {
        const at::Tensor go = g4.select(1, gi);  // (b, O/groups, L)
        gc3.narrow(1, gi * cgk, cgk).copy_(at::matmul(wg[gi].t(), go));
        gw[gi].add_(at::matmul(go, c3.narrow(1, gi * cgk, cgk).transpose(1, 2)).sum(0));
      }
      col2im<scalar_t>(g, gcols.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), m, n0, b,
                       grad_input.data_ptr<scalar_t>());
      offset_mask_grad<scalar_t>(g, gcols.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
                                 m, n0, b, grad_offset.data_ptr<scalar_t>(),
                                 grad_mask.defined() ? grad_mask.data_ptr<scalar_t>() : nullptr);
    }
  });
  return {grad_input, grad_weight, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnbench_ext, CPU, m) {
  m.impl("deform_conv2d_forward", &forward);
  m.impl("deform_conv2d_backward", &backward);
}

}  // namespace dcnbench_ext
