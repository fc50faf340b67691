// Host-side argument check shared by the CPU and CUDA pooling ops.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace dcnbench_ext {

// A RoI whose batch index names no image would send a kernel into another tensor's memory, and the
// Python wrappers' checks do not run when a caller reaches the op directly or through torch.compile:
// refuse it here. On CUDA this copies the K indices to the host (one synchronisation per call).
inline void check_batch_indices(const at::Tensor& rois, int64_t images) {
  if (rois.size(0) == 0) return;
  const at::Tensor index = rois.select(1, 0).to(at::kCPU, at::kDouble).contiguous();
  const double* v = index.data_ptr<double>();
  for (int64_t k = 0; k < index.numel(); ++k) {
    TORCH_CHECK(std::floor(v[k]) == v[k] && v[k] >= 0 && v[k] <= double(images - 1), "rois[", k, ", 0] = ", v[k],
                " is not a batch index of the ", images, "-image input, expected an integer in [0, ", images - 1, "]");
  }
}

}  // namespace dcnbench_ext
