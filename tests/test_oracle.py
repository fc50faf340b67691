"""The pytorch backend (the oracle) against bilinear values worked out by hand, and identities."""

import pytest
import torch
import torch.nn.functional as F

from dcnbench.ops.deform_conv2d.oracle import deform_conv2d

H, W = 3, 4


def _sample(py: float, px: float, mask: float | None = None, requires_grad: bool = False):
    """Sample x[h, w] = 10h + w + 1 at (py, px) with a 1x1 kernel of weight 1 at output (0, 0)."""
    x = (10 * torch.arange(H, dtype=torch.float64)[:, None] + torch.arange(W, dtype=torch.float64) + 1).reshape(1, 1, H, W)
    offset = torch.zeros(1, 2, H, W, dtype=torch.float64)
    offset[0, 0, 0, 0], offset[0, 1, 0, 0] = py, px  # output (0, 0) has base (0, 0): offset = point
    offset.requires_grad_(requires_grad)
    m = None if mask is None else torch.full((1, 1, H, W), mask, dtype=torch.float64)
    out = deform_conv2d(x, offset, torch.ones(1, 1, 1, 1, dtype=torch.float64), mask=m)
    return out[0, 0, 0, 0], offset


@pytest.mark.parametrize("py, px, expected", [
    (0.25, 1.5, 0.75 * 2.5 + 0.25 * 12.5),  # interior: rows 0-1, columns 1-2
    (1.0, 2.0, 13.0),                          # on a pixel
    (-0.25, 1.0, 0.75 * 2.0),                  # band -1 < y < 0: fades from row 0 (rule Z)
    (2.25, 0.0, 0.75 * 21.0),                  # band H-1 < y < H: fades from row H-1
    (0.0, -0.5, 0.5 * 1.0),                    # band -1 < x < 0
    (1.0, 3.5, 0.5 * 14.0),                    # band W-1 < x < W
    (-0.5, -0.5, 0.25 * 1.0),                  # corner: both bands
    (-1.0, 1.0, 0.0),                          # exactly -1: zero
    (-1.5, 1.0, 0.0),                          # outside
    (3.0, 1.0, 0.0),                           # exactly H: zero
    (1.0, 4.2, 0.0),                           # outside right
])
def test_bilinear_values_by_hand(py, px, expected):
    value, _ = _sample(py, px)
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_mask_scales_the_sample():
    value, _ = _sample(0.25, 1.5, mask=0.5)
    assert value.item() == pytest.approx(0.5 * (0.75 * 2.5 + 0.25 * 12.5))


@pytest.mark.parametrize("py, px, d_dy, d_dx", [
    (0.25, 1.5, 10.0, 1.0),   # interior of a linear ramp: the slopes
    (-0.25, 1.5, 2.5, 0.75),  # low band: value (1 + py) * x[0, px] -> d/dpy = x[0, px]
    (2.25, 0.5, -21.5, 0.75), # high band: value (H - py) * x[2, px] -> d/dpy = -x[2, px]
    (-1.5, 1.5, 0.0, 0.0),    # outside: no gradient
])
def test_offset_gradient_by_hand(py, px, d_dy, d_dx):
    value, offset = _sample(py, px, requires_grad=True)
    value.backward()
    assert offset.grad[0, 0, 0, 0].item() == pytest.approx(d_dy, abs=1e-12)
    assert offset.grad[0, 1, 0, 0].item() == pytest.approx(d_dx, abs=1e-12)


def test_zero_offsets_unit_mask_equal_conv2d():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 7, 9, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    stride, pad, dil = (2, 1), (1, 2), (2, 1)
    ref = F.conv2d(x, w, b, stride, pad, dil, groups=2)
    off = torch.zeros(2, 2 * 3 * 6, *ref.shape[2:], dtype=torch.float64)
    mask = torch.ones(2, 3 * 6, *ref.shape[2:], dtype=torch.float64)
    out = deform_conv2d(x, off, w, b, stride, pad, dil, mask=mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_offset_group_owns_its_channel_block():
    """Channel c belongs to offset group c // (C/G): moving group 1's points moves only channels 2-3."""
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    w = torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    w[:, 0, 0, 0] = 1  # depthwise identity: output channel c = sampled channel c
    off = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
    off[:, 2] = 1.0  # group 1, tap 0, dy = 1
    out = deform_conv2d(x, off, w, None, 1, 0, 1)
    torch.testing.assert_close(out[:, :2], x[:, :2])
    torch.testing.assert_close(out[:, 2:, :5], x[:, 2:, 1:])
    assert torch.all(out[:, 2:, 5] == 0)


def test_half_types_compute_in_float32():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 64, 8, 8, generator=g)
    w = torch.randn(8, 64, 3, 3, generator=g) / 24
    off = torch.rand(1, 18, 8, 8, generator=g) * 4 - 2
    exact = deform_conv2d(x.bfloat16().double(), off.bfloat16().double(), w.bfloat16().double(), padding=1)
    got = deform_conv2d(x.bfloat16(), off.bfloat16(), w.bfloat16(), padding=1)
    assert got.dtype == torch.bfloat16
    # Only the final rounding to bfloat16 (relative 2^-9) separates them.
    assert torch.linalg.vector_norm(got.double() - exact) / torch.linalg.vector_norm(exact) < 4e-3


def test_validation_messages():
    x = torch.zeros(1, 4, 5, 5)
    with pytest.raises(ValueError, match="offset has shape"):
        deform_conv2d(x, torch.zeros(1, 18, 4, 4), torch.zeros(2, 4, 3, 3), padding=1)
    with pytest.raises(ValueError, match="must divide"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.zeros(2, 3, 3, 3), padding=1)
