// The op library's name and the dispatch key the CUDA kernels register for. Defaults are the real
// build's; the CPU emulation of the CUDA kernels (emu/cuda_emu.h) builds ext.cpp and cuda/*.cu with
// -DDCN_LIBRARY=dcnbench_ext_emu -DDCN_CUDA_KEY=CPU, a second library beside dcnbench_ext.
#pragma once

#include <torch/library.h>

#ifndef DCN_LIBRARY
#define DCN_LIBRARY dcnbench_ext
#endif
#ifndef DCN_CUDA_KEY
#define DCN_CUDA_KEY CUDA
#endif
