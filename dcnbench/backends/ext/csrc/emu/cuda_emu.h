// cuda_emu.h: lets the host C++ compiler build csrc/cuda/*.cu unchanged and run the kernels on CPU
// tensors, to test the kernels' indexing, grid-stride coverage and races without a GPU.
//
// Execution model. A launch runs every block of the grid; a block runs its threads ONE AFTER
// ANOTHER, each to completion, with blockIdx/threadIdx/blockDim/gridDim set in thread-local
// variables. That is only equivalent to a GPU when threads of a block never wait for each other:
// the kernels here use no shared memory, barriers or warp intrinsics, and this header turns any
// use of them (__syncthreads, __shared__, __shfl_*_sync, ...) into a compile error. Blocks may run
// concurrently on several OS threads, so inter-block races are real races (ThreadSanitizer sees them).
//
// Knobs, read from the environment at every launch:
//   DCNBENCH_EMU_MAX_BLOCKS=N  run at most N blocks in x (gridDim.x is capped): grid-stride loops
//                              must still cover everything, other kernels visibly don't.
//   DCNBENCH_EMU_ORDER=forward|reverse|shuffle  order of the blocks, and of the threads in a block;
//   DCNBENCH_EMU_SEED=S        seeds shuffle (default 0); a block's thread order depends only on
//                              S and the block, not on which OS thread runs it.
//   DCNBENCH_EMU_THREADS=N     run the blocks on N OS threads, round robin (default 1);
//   DCNBENCH_EMU_SPLIT=thread  with THREADS: spread the threads of every block instead.
//   DCNBENCH_EMU_SAMPLE_BLOCKS=N  run only the first N blocks of the visit order, gridDim unchanged: a
//                              spot check of launches too large to run whole (the index-overflow case:
//                              block 0's grid-stride loop still walks the whole index range). Results
//                              are incomplete: never set it for verification.
// Index arithmetic: the emulated library is compiled with -fsanitize=signed-integer-overflow, so a
// kernel that computes an index in a 32-bit int stops with "runtime error: signed integer overflow"
// at its file and line once the index passes 2^31-1, without the memory such an index would need.
// Launch configurations a GPU rejects (more than 1024 threads in a block, blockDim.z > 64,
// gridDim.x > 2^31-1, gridDim.y/z > 65535, a zero dimension, dynamic shared memory) are not run:
// like cudaGetLastError, the error is kept and thrown by the next C10_CUDA_KERNEL_LAUNCH_CHECK (or
// by the next launch, which reports that an error went unchecked).
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.h is for host-compiler builds of the .cu files; nvcc uses the CUDA runtime"
#endif

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

// What the sequential execution of a block cannot honour fails to compile, with this message.
#define DCN_EMU_REFUSE(what)                                                                         \
  ([] {                                                                                              \
    static_assert(false, "cuda_emu: " what " is not emulated: the threads of a block run one after " \
                         "another (see cuda_emu.h)");                                                \
    return 0;                                                                                        \
  }())
#define __syncthreads() DCN_EMU_REFUSE("__syncthreads")
#define __syncwarp(...) DCN_EMU_REFUSE("__syncwarp")
#define __shared__ DCN_EMU_REFUSE("__shared__");
#define __shfl_sync(...) DCN_EMU_REFUSE("__shfl_sync")
#define __shfl_up_sync(...) DCN_EMU_REFUSE("__shfl_up_sync")
#define __shfl_down_sync(...) DCN_EMU_REFUSE("__shfl_down_sync")
#define __shfl_xor_sync(...) DCN_EMU_REFUSE("__shfl_xor_sync")
#define __ballot_sync(...) DCN_EMU_REFUSE("__ballot_sync")
#define __any_sync(...) DCN_EMU_REFUSE("__any_sync")
#define __all_sync(...) DCN_EMU_REFUSE("__all_sync")
#define __activemask() DCN_EMU_REFUSE("__activemask")
#define warpSize DCN_EMU_REFUSE("warpSize")

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// CUDA's atomicAdd: relaxed, returns the old value. Only the types the kernels use.
template <typename T>
T atomicAdd(T* address, T val) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "cuda_emu: atomicAdd on float/double only");
  return std::atomic_ref<T>(*address).fetch_add(val, std::memory_order_relaxed);
}

namespace dcn_emu {

struct Stream {};  // launches run synchronously, so there is one stream
inline Stream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }

// The real guard switches the current GPU; the emulated kernels must only ever see CPU tensors.
struct CUDAGuard {
  explicit CUDAGuard(c10::Device d) { TORCH_CHECK(d.is_cpu(), "emulated CUDA kernels take CPU tensors, got ", d); }
};

inline thread_local std::string pending_error;  // cudaGetLastError's sticky error, per host thread

inline void launch_check(const char* file, int line) {
  const std::string e = std::exchange(pending_error, {});
  TORCH_CHECK(e.empty(), "CUDA error: ", e, " (checked at ", file, ":", line, ")");
}

// A knob's value; Python checks them first (backends/ext/emu.py), this catches a direct caller.
inline int64_t env_int(const char* name, int64_t fallback, int64_t low) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  TORCH_CHECK(*end == '\0' && n >= low, name, "=", v, ": expected an integer >= ", low);
  return n;
}

// Why a GPU (compute capability 7.0 to 9.0) refuses this configuration; empty if it runs it.
inline std::string refusal(dim3 g, dim3 b, size_t shmem) {
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z) return "a zero grid or block dimension";
  if (threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64) return "more than 1024 threads or blockDim.z > 64";
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535) return "gridDim.x > 2^31-1 or gridDim.y/z > 65535";
  if (shmem) return "dynamic shared memory (not emulated)";
  return {};
}

// The i-th of n items to visit: forward, reverse, or a permutation seeded by `seed` (only that
// one is stored, 8 bytes an item).
struct Order {
  std::string kind;
  std::vector<uint64_t> perm;
  Order(const std::string& k, uint64_t n, uint64_t seed) : kind(k) {
    if (kind != "shuffle") return;
    perm.resize(n);
    for (uint64_t i = 0; i < n; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
  }
  uint64_t at(uint64_t i, uint64_t n) const { return kind == "shuffle" ? perm[i] : kind == "reverse" ? n - 1 - i : i; }
};

inline dim3 unflatten(uint64_t i, dim3 d) {
  return dim3(unsigned(i % d.x), unsigned(i / d.x % d.y), unsigned(i / d.x / d.y));
}

template <typename Body>
void run_grid(dim3 grid, dim3 block, const Body& body) {
  const int64_t cap = env_int("DCNBENCH_EMU_MAX_BLOCKS", 0, 1), workers = env_int("DCNBENCH_EMU_THREADS", 1, 1);
  const char* o = std::getenv("DCNBENCH_EMU_ORDER");
  const std::string order = o && *o ? o : "forward";
  TORCH_CHECK(order == "forward" || order == "reverse" || order == "shuffle", "DCNBENCH_EMU_ORDER=", order,
              ": expected forward, reverse or shuffle");
  const uint64_t seed = uint64_t(env_int("DCNBENCH_EMU_SEED", 0, 0));
  const char* sp = std::getenv("DCNBENCH_EMU_SPLIT");
  const std::string split = sp && *sp ? sp : "block";
  TORCH_CHECK(split == "block" || split == "thread", "DCNBENCH_EMU_SPLIT=", split, ": expected block or thread");
  const bool per_thread = split == "thread";
  if (cap > 0) grid.x = unsigned(std::min<int64_t>(grid.x, cap));
  const int64_t sample = env_int("DCNBENCH_EMU_SAMPLE_BLOCKS", 0, 1);
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z, all = uint64_t(grid.x) * grid.y * grid.z;
  const uint64_t nblocks = sample > 0 ? std::min<uint64_t>(all, uint64_t(sample)) : all;
  const Order blocks(order, all, seed);
  // Threads first, first + step, ... (in visit order) of block b.
  auto run_block = [&](uint64_t b, uint64_t first, uint64_t step) {
    gridDim = grid;
    blockDim = block;
    blockIdx = unflatten(b, grid);
    const Order threads(order, nthreads, seed * 0x9E3779B97F4A7C15ull + b);
    for (uint64_t t = first; t < nthreads; t += step) {
      threadIdx = unflatten(threads.at(t, nthreads), block);
      body();
    }
  };
  if (workers <= 1) {
    for (uint64_t i = 0; i < nblocks; ++i) run_block(blocks.at(i, all), 0, 1);
    return;
  }
  // A fixed assignment: block i of the visit order runs on OS thread i % n (SPLIT=block), or thread
  // t of every block on OS thread t % n (SPLIT=thread, valid as threads never wait for each other).
  // Work on different OS threads is then ordered by nothing but the launch, whatever the timing, so
  // ThreadSanitizer reports every conflicting pair it sees (a shared work counter would order them,
  // and a fast first thread could take all the work). SPLIT=thread also exposes races between
  // threads of one block, which SPLIT=block runs on one OS thread.
  std::exception_ptr failure;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  std::vector<std::thread> pool;
  const uint64_t n = uint64_t(std::min<int64_t>(workers, int64_t(per_thread ? nthreads : nblocks)));
  for (uint64_t w = 0; w < n; ++w)
    pool.emplace_back([&, w] {
      try {
        if (per_thread)
          for (uint64_t i = 0; i < nblocks; ++i) run_block(blocks.at(i, all), w, n);
        else
          for (uint64_t i = w; i < nblocks; i += n) run_block(blocks.at(i, all), 0, 1);
      } catch (...) {
        if (!failed.test_and_set()) failure = std::current_exception();
      }
    });
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

// DCN_LAUNCH(kernel, grid, block, shmem, stream)(args...): the arguments are converted to the
// kernel's parameter types once, like a real launch copies them, then every thread gets a copy.
template <typename... P>
struct Launch {
  const char* name;
  dim3 grid, block;
  size_t shmem;
  void (*kernel)(P...);

  template <typename... A>
  void operator()(A&&... args) const {
    static_assert((!std::is_reference_v<P> && ...), "cuda_emu: kernel parameters are passed by value");
    if (!pending_error.empty()) {  // reported once, like cudaGetLastError clears it
      const std::string e = std::exchange(pending_error, {});
      TORCH_CHECK(false, "CUDA error: ", e, " went unchecked before launching ", name);
    }
    const std::string why = refusal(grid, block, shmem);
    if (!why.empty()) {
      pending_error = "invalid configuration argument (emulated launch of " + std::string(name) + ": " + why + ")";
      return;
    }
    const std::tuple<P...> params(std::forward<A>(args)...);
    run_grid(grid, block, [&] { std::apply(kernel, params); });
  }
};

template <typename... P>
Launch<P...> launch(const char* name, dim3 grid, dim3 block, size_t shmem, Stream, void (*kernel)(P...)) {
  return {name, grid, block, shmem, kernel};
}

}  // namespace dcn_emu

// The names the .cu files use. Aliases, so no symbol of the real (header-inline) classes is defined
// here that libc10_cuda, loaded by torch's CUDA wheel, could interpose.
namespace c10::cuda {
using CUDAGuard = ::dcn_emu::CUDAGuard;
}
namespace at::cuda {
using ::dcn_emu::getCurrentCUDAStream;
}
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::dcn_emu::launch_check(__FILE__, __LINE__)
#define DCN_LAUNCH(kernel, grid, block, shmem, stream) \
  ::dcn_emu::launch(#kernel, grid, block, shmem, stream, kernel)
