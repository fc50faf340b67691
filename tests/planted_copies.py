"""What the planted int32 copies of ext's kernels share (tests/test_ext_emu.py: the emulated CUDA
kernels; tests/test_ext_cpu_overflow.py: the CPU kernels): below 2^31 elements a planted index is
right, so a copy must match ext on small inputs; its bugs are only past 2^31."""

import torch

from dcnbench.backends.ext import LIBRARY


def assert_matches_ext_below_2_31(planted, conv_rtol: float = 1e-5, dcnv3: bool = False) -> None:
    """Each op of the OpLibrary `planted` (DCNv3 too with `dcnv3`: the CPU kernels alone have it) against
    ext's own on small inputs, to rtol 1e-5 (deform_conv2d to `conv_rtol`: the emulated copy sums its
    columns in another order than ext's CPU GEMM); not bitwise, the copies are built with other flags."""
    close = dict(rtol=1e-5, atol=1e-6)
    gen = torch.Generator().manual_seed(3)
    value, loc, attn = torch.randn(3, 6 + 20, 2, 5, generator=gen), torch.rand(3, 7, 2, 2, 3, 2, generator=gen), \
        torch.rand(3, 7, 2, 2, 3, generator=gen)
    msda = (value, torch.tensor([[2, 3], [4, 5]]), torch.tensor([0, 6]), loc, attn, 64)
    assert torch.allclose(planted.ms_deform_attn(*msda), LIBRARY.ms_deform_attn(*msda), **close)
    x, offset, weight = torch.randn(2, 3, 9, 8, generator=gen), torch.randn(2, 18, 9, 8, generator=gen), \
        torch.randn(4, 3, 3, 3, generator=gen)
    assert torch.allclose(planted.deform_conv2d(x, offset, weight, padding=1),
                          LIBRARY.deform_conv2d(x, offset, weight, padding=1), rtol=conv_rtol, atol=conv_rtol / 10)
    x, rois = torch.randn(2, 9, 8, 7, generator=gen), torch.tensor([[1.0, 0.5, 1.0, 6.0, 5.5], [0.0, 2.0, 0.0, 4.0, 7.0]])
    offset = 0.2 * torch.rand(2, 2, 3, 3, generator=gen) - 0.1
    for op, args in (("deform_roi_pool", (x, rois, offset, (3, 3), 1.0, 2, 0.1)),
                     ("deform_psroi_pool", (x, rois, offset, 1.0, 1, 3, 3, 3, 2, 0.1, False))):
        assert torch.allclose(getattr(planted, op)(*args), getattr(LIBRARY, op)(*args), **close), op
    if dcnv3:
        x, off, mask = torch.randn(2, 6, 5, 8, generator=gen), torch.rand(2, 6, 5, 36, generator=gen), \
            torch.rand(2, 6, 5, 18, generator=gen)
        args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 64, 0)
        assert torch.allclose(planted.dcnv3(x, off, mask, *args), LIBRARY.dcnv3(x, off, mask, *args), **close)
