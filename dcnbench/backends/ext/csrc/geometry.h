// deform_conv2d's geometry, read from the tensors once on the host and passed by value to the
// CPU tasks and the CUDA kernels alike.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace dcnbench_ext {

struct ConvGeo {
  int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, og, ho, wo, k, l, cg, cpg;
};

inline ConvGeo conv_geometry(const at::Tensor& input, const at::Tensor& weight, int64_t sh, int64_t sw, int64_t ph,
                             int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t og) {
  ConvGeo g{};
  g.n = input.size(0); g.c = input.size(1); g.h = input.size(2); g.w = input.size(3);
  g.o = weight.size(0); g.kh = weight.size(2); g.kw = weight.size(3);
  g.sh = sh; g.sw = sw; g.ph = ph; g.pw = pw; g.dh = dh; g.dw = dw; g.groups = groups; g.og = og;
  g.ho = (g.h + 2 * ph - dh * (g.kh - 1) - 1) / sh + 1;
  g.wo = (g.w + 2 * pw - dw * (g.kw - 1) - 1) / sw + 1;
  g.k = g.kh * g.kw;
  g.l = g.ho * g.wo;
  g.cg = g.c / groups;  // channels per convolution group
  g.cpg = g.c / og;     // channels per offset group
  return g;
}

}  // namespace dcnbench_ext
