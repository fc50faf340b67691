"""Index arithmetic past 2^31 elements (failure class "32-bit index overflow": torchvision #2598, #4269,
#8744), without the memory such tensors need.

Both checks lean on Linux giving memory on first write: a tensor from `torch.empty` that is never
written costs address space, not RAM, and reads as zeros.

- CUDA kernels, emulated: `conv_past_int32(ops)` calls deform_conv2d's forward on one image whose
  column buffer holds more than 2^31 elements (64 channels, 3x3, 1940x1940: 2.17e9, 8.7 GB of address
  space), with DCNBENCH_EMU_SAMPLE_BLOCKS=1: only block 0 of each launch runs, and its grid-stride
  loop walks the whole index range. The emulated library is compiled with
  -fsanitize=signed-integer-overflow (build.py): a kernel computing an index in a 32-bit int stops
  with UBSan's "signed integer overflow" and its file and line. Nothing is compared: the run proves
  the index arithmetic, not the values (block 0 writes 33 thousand of the 2.17e9 columns).
- CPU kernels: `dcnv3_past_int32(fn)` runs DCNv3 (DCNv4 shares the kernel) on a channels-last input
  of more than 2^31 elements whose last image alone holds values, and compares that image's output,
  all of it past element 2^31, with the float64 oracle on that image alone (tests/test_ext_emu.py).

`python -m dcnbench.backends.ext.overflow [CSRC NAME]` runs the emulated check on the built library
(or on the library NAME built from the tree CSRC, its deform_conv2d.cu alone: how the test runs a planted
copy in a child process).
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


def main(argv: list[str]) -> int:
    from dcnbench.backends.ext import build
    from dcnbench.backends.ext.library import OpLibrary

    if argv:
        from pathlib import Path

        target = build.emulated_copy(argv[1], Path(argv[0]), ("deform_conv2d.cu",))  # the one kernel the check calls
    else:
        target = build.emulated()
    count = conv_past_int32(OpLibrary(lambda: target).ops())
    print(f"deform_conv2d forward: {count} column elements (past 2^31 = {INT32_MAX + 1}): index arithmetic clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
