// What the CUDA kernel files take from CUDA and torch's CUDA side: the real headers and the <<<>>>
// launch under nvcc; the CPU emulation (../emu/cuda_emu.h) when the host compiler builds them.
// DCN_LAUNCH(kernel, grid, block, shmem, stream)(args...) is the one launch syntax for both.
#pragma once

#include "../library.h"

#if defined(__CUDACC__)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#define DCN_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<grid, block, shmem, stream>>>
#else
#include "../emu/cuda_emu.h"
#endif
