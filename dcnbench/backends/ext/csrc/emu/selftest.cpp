// Test hook for the emulator itself, only in the emulated library: emu_visit launches a kernel of
// any configuration that counts the visits of each element of `count` and stamps `order` with a
// global visit clock, so a driver can check coverage under DCNBENCH_EMU_MAX_BLOCKS, the ORDER knob,
// and that configurations a GPU refuses are refused (and that an unchecked error is caught).
#include <atomic>

#include "../library.h"
#include "cuda_emu.h"

namespace {

__global__ void visit_kernel(int64_t n, double* count, double* order, int64_t* clock) {
  const int64_t threads = int64_t(blockDim.x) * blockDim.y * blockDim.z;
  const int64_t block = (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t first = block * threads + (int64_t(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  for (int64_t e = first; e < n; e += threads * gridDim.x * gridDim.y * gridDim.z) {
    atomicAdd(count + e, 1.0);
    order[e] = double(std::atomic_ref<int64_t>(*clock).fetch_add(1));
  }
}

void visit(const at::Tensor& count, const at::Tensor& order, int64_t gx, int64_t gy, int64_t gz, int64_t bx, int64_t by,
           int64_t bz, int64_t shmem, bool check) {
  TORCH_CHECK(count.is_contiguous() && order.is_contiguous() && count.numel() == order.numel());
  int64_t clock = 0;
  DCN_LAUNCH(visit_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), shmem, at::cuda::getCurrentCUDAStream())(
      count.numel(), count.data_ptr<double>(), order.data_ptr<double>(), &clock);
  if (check) C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(DCN_LIBRARY, m) {
  m.def("emu_visit(Tensor(a!) count, Tensor(b!) order, int gx, int gy, int gz, int bx, int by, int bz, "
        "int shmem=0, bool check=True) -> ()");
}

TORCH_LIBRARY_IMPL(DCN_LIBRARY, CPU, m) { m.impl("emu_visit", &visit); }
