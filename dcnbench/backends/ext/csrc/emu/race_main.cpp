// The race check's executable (backends/ext/race.py builds it with -fsanitize=thread): every emulated
// CUDA kernel, linked in from ext.cpp and cuda/*.cu, called through the dispatcher on inputs where
// many threads and blocks meet (overlapping RoIs, several taps per pixel, many attention samples per
// pixel). With DCNBENCH_EMU_THREADS
// > 1 the blocks (or, with DCNBENCH_EMU_SPLIT=thread, the threads of each block) run on several OS
// threads, so two of them writing one address without atomicAdd is a data race ThreadSanitizer sees.
//
// libtorch is not instrumented, so it must not run threads of its own (at::set_num_threads(1)):
// TSan sees only the kernels' accesses, ordered against the host code by thread create and join.
// An op whose kernel is not linked in (a build of some of the .cu files) is skipped.
//
// usage: dcnbench_race atomic|deterministic   (exit 0; ThreadSanitizer's exit code 66 on a report)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../library.h"

namespace {

#define DCN_STR2(x) #x
#define DCN_STR(x) DCN_STR2(x)

// Calls DCN_LIBRARY::<op> boxed, if its CPU kernel is linked in; says which ran.
void call(const char* op, std::vector<c10::IValue> args) {
  const std::string name = std::string(DCN_STR(DCN_LIBRARY)) + "::" + op;
  const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "");
  if (!handle.hasKernelForDispatchKey(c10::DispatchKey::CPU)) return;
  handle.callBoxed(args);
  std::printf("ran %s\n", op);
}

at::Tensor rnd(at::IntArrayRef shape, double scale = 1.0) { return at::randn(shape, at::kDouble) * scale; }

void run(bool det) {
  const c10::IValue none;
  {  // deform_conv2d: 2x4x8x8, 3x3, pad 1, offset groups 2, mask: 18 blocks of 256 in im2col/col2im
    const at::Tensor x = rnd({2, 4, 8, 8}), w = rnd({6, 4, 3, 3}), off = rnd({2, 36, 8, 8}, 2.0);
    const at::Tensor mask = at::rand({2, 18, 8, 8}, at::kDouble), grad = rnd({2, 6, 8, 8});
    const std::vector<c10::IValue> geo = {1, 1, 1, 1, 1, 1, 1, 2};
    std::vector<c10::IValue> a = {x, w, off, mask, none};
    a.insert(a.end(), geo.begin(), geo.end());
    call("deform_conv2d_forward", a);
    std::vector<c10::IValue> b = {grad, x, w, off, mask};
    b.insert(b.end(), geo.begin(), geo.end());
    b.push_back(det);
    call("deform_conv2d_backward", b);
  }
  // RoIs overlapping each other on one 2-image batch, so several bins scatter into one pixel.
  const at::Tensor rois = at::tensor({0., 1., 1., 20., 14., 1., 0., 3., 12., 18., 0., 5., 2., 22., 22., 1., -4., -4., 9.,
                                      30., 0., 2., 6., 16., 16., 1., 8., 8., 24., 20.}, at::kDouble).view({6, 5});
  {  // roi_pool: 6 RoIs, 16 channels, 4x4 bins, sampling ratio 2, offsets
    const at::Tensor x = rnd({2, 16, 12, 12}), off = rnd({6, 2, 4, 4}), grad = rnd({6, 16, 4, 4});
    call("roi_pool_forward", {x, rois, off, 4, 4, 0.5, 2, 0.1});
    call("roi_pool_backward", {grad, x, rois, off, 4, 4, 0.5, 2, 0.1, det});
  }
  {  // psroi_pool: output_dim 8, group 3 (72 channels), pooled 3, part 3, 2 samples, 2 classes
    const at::Tensor x = rnd({2, 72, 12, 12}), tr = rnd({6, 4, 3, 3}), grad = rnd({6, 8, 3, 3});
    call("psroi_pool_forward", {x, rois, tr, 0.5, 8, 3, 3, 3, 2, 0.1});
    call("psroi_pool_backward", {grad, x, rois, tr, 0.5, 8, 3, 3, 3, 2, 0.1, det});
  }
  {  // ms_deform_attn: 2 images, levels 4x5 and 2x3 (S = 26), 2 heads of 8 channels, 30 queries of
     // 3 points per level: 360 samples per image and head on 26 pixels, so many scatter into one
    const at::Tensor value = rnd({2, 26, 2, 8}), shapes = at::tensor({4, 5, 2, 3}, at::kLong).view({2, 2});
    const at::Tensor starts = at::tensor({0, 20}, at::kLong), attn = at::rand({2, 30, 2, 2, 3}, at::kDouble);
    const at::Tensor loc = at::rand({2, 30, 2, 2, 3, 2}, at::kDouble) * 1.2 - 0.1, grad = rnd({2, 30, 16});
    call("ms_deform_attn_forward", {value, shapes, starts, loc, attn, 64});
    call("ms_deform_attn_backward", {grad, value, shapes, starts, loc, attn, 64, det});
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "atomic" && mode != "deterministic") {
    std::fprintf(stderr, "usage: %s atomic|deterministic\n", argv[0]);
    return 2;
  }
  at::set_num_threads(1);
  at::manual_seed(0);
  run(mode == "deterministic");
  return 0;
}
