"""Index arithmetic past 2^31 elements (failure class "32-bit index overflow": torchvision #2598, #4269,
#8744; for ms_deform_attn Deformable-DETR#66 and mmcv#1724, "illegal memory access" at large batch),
without the memory such tensors need.

Every check leans on Linux giving memory on first write: a tensor from `torch.empty` that is never
written costs address space, not RAM, and reads as zeros. The emulated library is compiled with
-fsanitize=signed-integer-overflow (build.py): a kernel computing an index in a 32-bit int stops with
UBSan's "signed integer overflow" at its file and line.

- deform_conv2d, CUDA emulated: `conv_past_int32(ops)` calls the forward on one image whose column
  buffer holds more than 2^31 elements (64 channels, 3x3, 1940x1940: 2.17e9, 8.7 GB of address
  space), with DCNBENCH_EMU_SAMPLE_BLOCKS=1: only block 0 of each launch runs, and its grid-stride
  loop walks the whole index range. Nothing is compared: the run proves the index arithmetic, not
  the values (block 0 writes 33 thousand of the 2.17e9 columns).
- deform_conv2d, CPU: `conv_cpu_past_int32(fn)` on a channels-last input past 2^31 elements by the
  batch (129 images of 64 channels of 512x512; the last alone written, with its offsets and mask),
  stride 16 (the work is the outputs'), and compares that image's output with the float64 oracle on that image alone. The
  kernel reads channels-last, so a channels-last input is not copied (an NCHW one would be, 8.6 GB).
- DCNv3/DCNv4, CPU: `dcnv3_past_int32(fn)` runs DCNv3 (DCNv4 shares the kernel) on a channels-last
  input of more than 2^31 elements whose last image alone holds values, and compares that image's
  output, all of it past element 2^31, with the float64 oracle on that image alone
  (tests/test_ext_dcnv34.py).
- ms_deform_attn, value past 2^31, CPU and CUDA emulated alike: `msda_past_int32(fn, where)`, by the
  batch (66 images of four levels, M = 8, D = 32; the last alone written) or by a level (one image
  whose first level, 8192x8704 with D = 32, holds 2.28e9 elements, so the second level's rows start
  past 2^31; the second level alone written). The output is small, so every block runs; the written
  part's output is compared with the float64 oracle on that part alone (the unwritten part reads
  zeros and adds exact zeros). The index that passes 2^31 is the value row's (Deformable-DETR's
  `data_value_ptr_init_offset`, an int).
- ms_deform_attn, output past 2^31, CUDA emulated: `msda_output_past_int32(ops, where)`, forward and
  backward with sampled blocks as for deform_conv2d; the index that passes 2^31 is the grid-stride
  loop's (the official kernels' CUDA_KERNEL_LOOP, an int). Not on the CPU: its output is written
  whole (8.7 GB).
- deform_roi_pool and deform_psroi_pool, CPU and CUDA emulated alike: `roi_past_int32(fn, op, where)`
  on an NCHW input past 2^31 elements, by the batch (257 images of 9 channels of 1024x1024; the last
  alone written, the RoIs in it) or by the channels (one image of 2061 channels; those from 2052 on,
  past element 2^31, alone written). The output is small, so every block runs; the written part's
  output is compared with the float64 oracle on that part alone. The index that passes 2^31 is the
  channel plane's ((batch * C + channel) * H * W, mmcv's `offset_bottom_data` in an int). Forward
  only: the input gradient would be written whole (8.6 GB).

`python -m dcnbench.backends.ext.overflow` runs every check in CHECKS on the built emulated library.
`python -m dcnbench.backends.ext.overflow CSRC NAME CHECK...` runs the named checks on the library NAME
built from the tree CSRC (the .cu files the checks call alone), each in a forked child process whose
end is reported on stderr as `--- CHECK: exit CODE`: how the tests run a planted copy. With `--cpu`
first, NAME is ext's CPU library built from CSRC (build.native_copy) and the checks are CPU_CHECKS'.
"""

from __future__ import annotations

import math
import sys

import torch

INT32_MAX = 2**31 - 1
CONV_SIDE = 1940  # 64 * 9 * 1940^2 = 2.17e9 column elements, past 2^31


def conv_past_int32(ops) -> int:
    """deform_conv2d's emulated forward on one image past 2^31 column elements; returns that count."""
    from dcnbench.checking.knobs import environment

    c, side = 64, CONV_SIDE
    x = torch.empty(1, c, side, side)  # never written: address space only
    offset = torch.zeros(1, 18, side, side)  # finite offsets keep every sample's corners in bounds
    mask = torch.zeros(1, 9, side, side)
    weight = torch.ones(1, c, 3, 3)
    with environment("DCNBENCH_EMU_SAMPLE_BLOCKS", "1"):
        ops.deform_conv2d_forward(x, weight, offset, mask, None, 1, 1, 1, 1, 1, 1, 1, 1)
    return c * 9 * side * side


CONV_CPU_BOUND = 1e-4  # float32 against the float64 oracle; a wrapped image offset reads zeros: an error near 1


def conv_cpu_past_int32(fn) -> tuple[torch.Tensor, torch.Tensor, int]:
    """deform_conv2d (`fn`, torchvision's signature) on a channels-last float32 input past 2^31 elements
    whose last image alone holds values (DCNv2, 3x3, stride 16): (that image's output, the float64
    oracle's on that image alone, the input element where that image starts)."""
    from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as oracle

    c, side, stride = 64, 512, 16
    n = math.ceil((INT32_MAX + 1) / (c * side * side)) + 1
    out = (side + 2 - 3) // stride + 1
    gen = torch.Generator().manual_seed(24)
    x = torch.empty(n, side, side, c).permute(0, 3, 1, 2)  # channels-last; address space but the last image
    x[-1] = torch.randn(c, side, side, generator=gen)
    offset = torch.empty(n, 18, out, out)
    offset[-1] = 4 * torch.rand(18, out, out, generator=gen) - 2
    mask = torch.empty(n, 9, out, out)
    mask[-1] = torch.rand(9, out, out, generator=gen)
    weight = torch.randn(4, c, 3, 3, generator=gen) / 8
    # The unwritten images' offsets and masks read zeros: every sample of theirs lands on a pixel.
    got = fn(x, offset, weight, None, stride=(stride, stride), padding=(1, 1), mask=mask)[-1]
    want = oracle(x[-1:].double(), offset[-1:].double(), weight.double(), None, stride=(stride, stride),
                  padding=(1, 1), mask=mask[-1:].double())[0]
    return got, want, (n - 1) * c * side * side


# Sampling coordinates up to 1024 in float32 are 6e-5 apart (the offsets are drawn without the kink margin):
# 2.5e-5 measured. A wrapped index reads another image (zeros here) or faults: an error near 1.
DCNV3_BOUND = 1e-3


def dcnv3_past_int32(fn) -> tuple[torch.Tensor, torch.Tensor, int]:
    """DCNv3 (`fn`, the official signature) on an (N, H, W, 8) input past 2^31 elements whose last image
    alone holds values: (that image's output, the float64 oracle's on that image alone, the element
    index where it starts)."""
    from dcnbench.ops.dcnv3.oracle import dcnv3 as oracle

    h = w = 1024
    g, d, stride = 1, 8, 32
    n = math.ceil((INT32_MAX + 1) / (h * w * g * d)) + 1
    ho = wo = (h + 2 - 3) // stride + 1
    args = (3, 3, stride, stride, 1, 1, 1, 1, g, d, 1.0, 1, 0)
    gen = torch.Generator().manual_seed(21)
    x = torch.empty(n, h, w, g * d)  # address space only, but for the last image
    x[-1] = torch.randn(h, w, g * d, generator=gen)
    offset = torch.empty(n, ho, wo, g * 9 * 2)
    offset[:-1] = 0
    offset[-1] = 2 * torch.rand(ho, wo, g * 9 * 2, generator=gen) - 1
    mask = torch.empty(n, ho, wo, g * 9)
    mask[:-1] = 0
    mask[-1] = torch.rand(ho, wo, g * 9, generator=gen)
    got = fn(x, offset, mask, *args)[-1]
    want = oracle(x[-1:].double(), offset[-1:].double(), mask[-1:].double(), *args)[0]
    return got, want, (n - 1) * h * w * g * d


# Four levels halving from 256x384 (Deformable DETR's strides 8-64 of a 2048x3072 image), its heads.
MSDA_LEVELS = ((256, 384), (128, 192), (64, 96), (32, 48))
MSDA_HEADS, MSDA_CHANNELS, MSDA_QUERIES, MSDA_POINTS = 8, 32, 32, 4
LEVEL_PAST_INT32 = ((8192, 8704), (64, 96))  # 8192 * 8704 * 32 = 2.28e9 elements before the second level
# Float32 sampling coordinates up to 384 are 3e-5 apart and the oracle's are exact: 6e-6 measured (by the
# batch, ext's CPU kernel). A wrapped index reads zeros (the unwritten part) or faults: an error near 1.
MSDA_BOUND = 1e-4


def msda_past_int32(fn, where: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ms_deform_attn (`fn`, the official signature) on a float32 value past 2^31 elements, `where` "batch"
    (the last image alone written) or "level" (one image, its second level alone written): (the written
    part's output, the float64 oracle's on that part alone, the value element where that part starts)."""
    from dcnbench.ops.ms_deform_attn.oracle import ms_deform_attn as oracle

    if where == "batch":
        levels, m, d, q = MSDA_LEVELS, MSDA_HEADS, MSDA_CHANNELS, MSDA_QUERIES
        per_image = sum(h * w for h, w in levels) * m * d
        n, first_level = math.ceil((INT32_MAX + 1) / per_image) + 1, 0
    elif where == "level":
        levels, m, d, q, n, first_level = LEVEL_PAST_INT32, 1, 32, 64, 1, 1
    else:
        raise ValueError(f"where is {where!r}, expected 'batch' or 'level'")
    sizes = [h * w for h, w in levels]
    shapes = torch.tensor(levels)
    starts = torch.tensor([sum(sizes[:i]) for i in range(len(levels))])
    s, part = sum(sizes), sum(sizes[:first_level])  # the written part: the last image, from level first_level
    gen = torch.Generator().manual_seed(22)
    value = torch.empty(n, s, m, d)  # address space only, but for the written part
    value[-1, part:] = torch.randn(s - part, m, d, generator=gen)
    # Locations over [-0.1, 1.1] everywhere (in the unwritten levels too: their reads are zeros, and
    # the level case's reach pixels past element 2^31 of the first level); weights that sum to 1.
    loc = 1.2 * torch.rand(n, q, m, len(levels), MSDA_POINTS, 2, generator=gen) - 0.1
    attn = torch.rand(n, q, m, len(levels), MSDA_POINTS, generator=gen)
    attn = attn / attn.sum((-2, -1), keepdim=True)
    got = fn(value, shapes, starts, loc, attn, 64)[-1]
    written = value[-1:, part:].double()
    want = oracle(written, shapes[first_level:], starts[first_level:] - part, loc[-1:, :, :, first_level:].double(),
                  attn[-1:, :, :, first_level:].double(), 64)[0]
    return got, want, ((n - 1) * s + part) * m * d


# RoI pooling's input past 2^31 elements: (images, channels) of ROI_SIDE^2 pixels, and the first
# channel written in the channels case (a whole class of psroi's 3x3 groups: 2052 = 228 * 9).
ROI_SIDE = 1024
ROI_PAST_INT32 = {"batch": (257, 9), "channels": (1, 2061)}
ROI_FIRST_CHANNEL = 2052  # 2052 * 1024^2 = 2.15e9: past 2^31
# The boxes' float32 corners near 1000 are 6e-5 apart and the oracle's are exact: 5e-5 normwise measured
# on ext's CPU kernels. A wrapped plane index reads zeros (the unwritten part) or faults: an error near 1.
ROI_BOUND = 1e-3


def roi_past_int32(fn, op: str, where: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`op` (deform_roi_pool or deform_psroi_pool; `fn` has its official signature) on a float32 NCHW input
    past 2^31 elements, `where` "batch" (the last image alone written, the RoIs in it) or "channels" (one
    image, its channels from ROI_FIRST_CHANNEL on alone written): (the written part's output, the float64
    oracle's on that part alone, the input element where that part starts)."""
    from dcnbench.ops.deform_psroi_pool.oracle import deform_psroi_pool
    from dcnbench.ops.deform_roi_pool.oracle import deform_roi_pool

    n, c = ROI_PAST_INT32[where]
    side, k, group = ROI_SIDE, 4, 3
    first = ROI_FIRST_CHANNEL if where == "channels" else 0
    gen = torch.Generator().manual_seed(23)
    x = torch.empty(n, c, side, side)  # address space only, but for the written part
    x[-1, first:] = torch.randn(c - first, side, side, generator=gen)
    corner = 900 * torch.rand(k, 2, generator=gen)
    size = 20 + 100 * torch.rand(k, 2, generator=gen)  # boxes of 20 to 120 pixels inside the map
    rois = torch.cat([torch.full((k, 1), float(n - 1)), corner, corner + size], 1)
    here = rois.clone()
    here[:, 0] = 0  # the same boxes in the written part alone
    if op == "deform_roi_pool":
        offset = 0.2 * torch.rand(k, 2, group, group, generator=gen) - 0.1
        args = ((group, group), 1.0, 2, 0.1)
        got = fn(x, rois, offset, *args)[:, first:]
        want = deform_roi_pool(x[-1:, first:].double(), here.double(), offset.double(), *args)
    elif op == "deform_psroi_pool":
        trans = 0.2 * torch.rand(k, 2, group, group, generator=gen) - 0.1
        dims = c // (group * group)
        args = (1.0, dims, group, group, group, 2, 0.1, False)
        got = fn(x, rois, trans, *args)[:, first // (group * group):]
        want = deform_psroi_pool(x[-1:, first:].double(), here.double(), trans.double(), 1.0,
                                 dims - first // (group * group), *args[2:])
    else:
        raise ValueError(f"op is {op!r}, expected deform_roi_pool or deform_psroi_pool")
    return got, want, ((n - 1) * c + first) * side * side


# Outputs of 2.176e9 elements (N, Lq, M, D), past 2^31 by the queries or with the batch and heads.
MSDA_OUTPUT_PAST_INT32 = {"queries": (1, 68_000_000, 1, 32), "batch": (4, 8_500_000, 4, 16)}


def msda_output_past_int32(ops, where: str) -> int:
    """ms_deform_attn's emulated forward and backward (atomicAdd mode) on an output past 2^31 elements
    (MSDA_OUTPUT_PAST_INT32[where], one 16x16 level, one point), with DCNBENCH_EMU_SAMPLE_BLOCKS=1 as
    for deform_conv2d: block 0's grid-stride loops walk the whole output (its 130th and last step
    reads and writes elements 2164227840 + its thread: past 2^31) and the backward's location/weight
    loop every point. Returns the output's element count. The deterministic value gradient is not
    run: its threads would each walk every query (2.2e9 steps in all)."""
    from dcnbench.checking.knobs import environment

    n, q, m, d = MSDA_OUTPUT_PAST_INT32[where]
    side = 16
    value = torch.zeros(n, side * side, m, d)
    shapes, starts = torch.tensor([[side, side]]), torch.tensor([0])
    loc = torch.empty(n, q, m, 1, 1, 2)  # never written, like the output and its gradient: reads zeros
    attn = torch.empty(n, q, m, 1, 1)
    with environment("DCNBENCH_EMU_SAMPLE_BLOCKS", "1"):
        out = ops.ms_deform_attn_forward(value, shapes, starts, loc, attn, 64)
        ops.ms_deform_attn_backward(torch.empty_like(out), value, shapes, starts, loc, attn, 64, False)
    return out.numel()


def _msda_output_check(where: str):
    def run(library) -> str:
        count = msda_output_past_int32(library.ops(), where)
        return (f"ms_deform_attn forward and backward, output past 2^31 by the {where}: {count} elements, "
                "index arithmetic clean")
    return run


def _compared(what: str, bound: float, past):
    """A check that runs `past(library)` -> (got, want, start) and holds the output to `bound` against the
    oracle; `what` names it in its line."""
    def run(library) -> str:
        from dcnbench.checking.compare import compare

        got, want, start = past(library)
        err = compare("output", got, want, "float32")
        if not err.rel_err < bound:
            raise SystemExit(f"{what}: {err}")
        return f"{what} (its part from element {start}): output against the oracle {err.rel_err:.1e}"
    return run


def _msda_check(where: str):
    return _compared(f"ms_deform_attn forward, value past 2^31 by the {where}", MSDA_BOUND,
                     lambda library: msda_past_int32(library.ms_deform_attn, where))


def _roi_check(op: str, where: str):
    return _compared(f"{op} forward, input past 2^31 by the {where}", ROI_BOUND,
                     lambda library: roi_past_int32(getattr(library, op), op, where))


def _conv_check(library) -> str:
    count = conv_past_int32(library.ops())
    return f"deform_conv2d forward: {count} column elements (past 2^31 = {INT32_MAX + 1}): index arithmetic clean"


_conv_cpu_check = _compared("deform_conv2d forward, channels-last input past 2^31 by the batch", CONV_CPU_BOUND,
                            lambda library: conv_cpu_past_int32(library.deform_conv2d))
_dcnv3_check = _compared("dcnv3 forward, input past 2^31 by the batch", DCNV3_BOUND,
                         lambda library: dcnv3_past_int32(library.dcnv3))


# name -> (the .cu file it calls, the check on an OpLibrary)
CHECKS = {"deform_conv2d": ("deform_conv2d.cu", _conv_check),
          "msda-batch": ("ms_deform_attn.cu", _msda_check("batch")),
          "msda-level": ("ms_deform_attn.cu", _msda_check("level")),
          "msda-output-queries": ("ms_deform_attn.cu", _msda_output_check("queries")),
          "msda-output-batch": ("ms_deform_attn.cu", _msda_output_check("batch")),
          "roi-batch": ("roi_pool.cu", _roi_check("deform_roi_pool", "batch")),
          "roi-channels": ("roi_pool.cu", _roi_check("deform_roi_pool", "channels")),
          "psroi-batch": ("roi_pool.cu", _roi_check("deform_psroi_pool", "batch")),
          "psroi-channels": ("roi_pool.cu", _roi_check("deform_psroi_pool", "channels"))}


# The checks of ext's CPU kernels, on the real library's CPU build (tests/test_ext.py and the other op tests
# call the functions above) or on a planted copy's (`--cpu`). The value and RoI checks are the emulated ones.
CPU_CHECKS = {"deform_conv2d": _conv_cpu_check, "dcnv3": _dcnv3_check,
              **{name: CHECKS[name][1] for name in ("msda-batch", "msda-level", "roi-batch", "roi-channels",
                                                    "psroi-batch", "psroi-channels")}}


def copy_target(csrc, name: str, cpu: bool = False):
    """The library NAME built from the tree `csrc` (a planted copy): ext's CPU library (`cpu`), or the
    emulated one with the .cu files the checks call alone. One build serves every check."""
    from pathlib import Path

    from dcnbench.backends.ext import build

    if cpu:
        return build.native_copy(name, Path(csrc))
    return build.emulated_copy(name, Path(csrc), tuple(sorted({f for f, _ in CHECKS.values()})))


def _in_child(run, library) -> int:
    """`run(library)` in a forked child, so that a check UBSan stops ends the child only; its exit status
    (the child's stderr holds UBSan's report). Forked after the library is loaded: one import of torch
    and one load serve every check."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: run the check, flush, leave without the parent's exit handlers
        code = 0
        try:
            print(run(library), flush=True)
        except BaseException as exc:  # a failed comparison (SystemExit) or an error: the parent reports it
            print(exc, file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main(argv: list[str]) -> int:
    from dcnbench.backends.ext import build
    from dcnbench.backends.ext.library import OpLibrary

    if not argv:
        library = OpLibrary(build.emulated)
        for _, run in CHECKS.values():
            print(run(library), flush=True)
        return 0
    cpu = argv[0] == "--cpu"
    csrc, name, *names = argv[cpu:]
    target = copy_target(csrc, name, cpu)
    library = OpLibrary(lambda: target)
    library.ops()
    failed = 0
    for check in names:
        print(f"--- {check}", file=sys.stderr, flush=True)
        code = _in_child(CPU_CHECKS[check] if cpu else CHECKS[check][1], library)
        print(f"--- {check}: exit {code}", file=sys.stderr, flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
