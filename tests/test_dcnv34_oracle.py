"""The DCNv3/DCNv4 oracles against values worked out by hand and against a scalar transliteration of
the CUDA kernels' indexing; the identities (torchvision's depthwise deform_conv2d, DCNv4 == DCNv3
repacked); the contract's argument checks and shape grammar."""

import math

import pytest
import torch

from dcnbench.errors import UsageError
from dcnbench.ops.dcnv3.contract import float32, kernel_points, parse_shape
from dcnbench.ops.dcnv3.oracle import dcnv3, positions
from dcnbench.ops.dcnv3.references import via_deform_conv2d
from dcnbench.ops.dcnv4.contract import packed_width
from dcnbench.ops.dcnv4.contract import parse_shape as parse_v4
from dcnbench.ops.dcnv4.oracle import dcnv4, pack
from dcnbench.ops.dcnv4.references import as_dcnv3

DT = torch.float64


def ramp(h, w, c=1):
    """x[h, w, :] = 10·h + w: bilinear sampling of it at (y, x) is exactly 10·y + x inside the map."""
    y = torch.arange(h, dtype=DT)[:, None]
    x = torch.arange(w, dtype=DT)[None, :]
    return (10 * y + x)[None, :, :, None].expand(1, h, w, c).contiguous()


def call3(x, off, mask, kh, kw, stride=(1, 1), pad=(0, 0), dil=(1, 1), g=1, os=1.0, rc=0):
    return dcnv3(x, off, mask, kh, kw, *stride, *pad, *dil, g, x.shape[-1] // g, os, 256, rc)


def test_offsets_are_x_first_and_points_x_major():
    x = ramp(4, 5)
    # 1x2 kernel: point 0 is (i=0, j=0), point 1 is (i=1, j=0), one column to the right.
    off = torch.tensor([0.25, 0.5, 0.0, 0.0], dtype=DT).view(1, 1, 1, 4).expand(1, 4, 4, 4).contiguous()
    mask = torch.tensor([1.0, 0.0], dtype=DT).view(1, 1, 1, 2).expand(1, 4, 4, 2).contiguous()
    out = call3(x, off, mask, 1, 2)
    # (dx, dy) = (0.25, 0.5): x moves by 0.25, y by 0.5.
    assert out[0, 1, 2, 0].item() == pytest.approx(10 * 1.5 + 2.25)
    mask = torch.tensor([0.0, 1.0], dtype=DT).view(1, 1, 1, 2).expand(1, 4, 4, 2).contiguous()
    assert call3(x, off, mask, 1, 2)[0, 1, 2, 0].item() == pytest.approx(10 * 1 + 3)
    # 2x2 kernel, zero offsets: point 1 is (i=0, j=1), the tap *below* (torchvision's tap 1 is to the right).
    assert kernel_points(2, 2, False) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    off = torch.zeros(1, 3, 4, 8, dtype=DT)
    mask = torch.zeros(1, 3, 4, 4, dtype=DT)
    mask[..., 1] = 1
    assert call3(x, off, mask, 2, 2)[0, 1, 2, 0].item() == pytest.approx(10 * 2 + 2)


def test_offset_scale_scales_the_grid_around_the_reference_point():
    x = ramp(7, 7)
    off = torch.zeros(1, 5, 5, 18, dtype=DT)
    mask = torch.zeros(1, 5, 5, 9, dtype=DT)
    mask[..., 8] = 1  # point 8 = (i=2, j=2), the bottom-right tap
    # Centre c = 1: position = ho + 1 + (2 - 1)·os, so os = 0.5 puts the tap half-way.
    assert call3(x, off, mask, 3, 3, os=0.5)[0, 2, 3, 0].item() == pytest.approx(10 * 3.5 + 4.5)
    assert call3(x, off, mask, 3, 3, os=1.0)[0, 2, 3, 0].item() == pytest.approx(10 * 4 + 5)
    # The offset is scaled too: (dx, dy) = (1, 0) with os 0.5 moves x by 0.5.
    off[..., 16] = 1.0
    assert call3(x, off, mask, 3, 3, os=0.5)[0, 2, 3, 0].item() == pytest.approx(10 * 3.5 + 5.0)
    # offset_scale reaches the kernels as a C float.
    assert float32(0.1) != 0.1 and float32(0.5) == 0.5


def test_pad_h_pads_rows_and_pad_w_columns():
    x = ramp(3, 4)
    off = torch.zeros(1, 5, 4, 2, dtype=DT)
    mask = torch.ones(1, 5, 4, 1, dtype=DT)
    out = call3(x, off, mask, 1, 1, pad=(1, 0))
    assert out.shape == (1, 5, 4, 1)  # H + 2·pad_h rows, W columns
    assert out[0, 0, 2, 0].item() == 0 and out[0, 1, 2, 0].item() == 2 and out[0, 3, 2, 0].item() == 22


def test_border_band_fades_linearly_and_the_edges_are_excluded():
    x = ramp(3, 3) + 1
    off = torch.zeros(1, 1, 1, 2, dtype=DT, requires_grad=True)
    mask = torch.ones(1, 1, 1, 1, dtype=DT)
    for dy, want in ((-0.25, 0.75 * 1), (-1.0, 0.0), (-1.5, 0.0), (2.5, 0.5 * 21), (3.0, 0.0)):
        o = torch.tensor([0.0, dy], dtype=DT).view(1, 1, 1, 2)
        assert call3(x, o, mask, 1, 1, stride=(3, 3))[0, 0, 0, 0].item() == pytest.approx(want), dy
    # Exactly on y = -1 the kernels' pre-test drops the point: no value, no gradient.
    o = torch.tensor([0.0, -1.0], dtype=DT).view(1, 1, 1, 2).requires_grad_()
    call3(x, o, mask, 1, 1, stride=(3, 3)).sum().backward()
    assert o.grad.abs().sum().item() == 0


def test_remove_center_drops_the_middle_tap_and_nan_offsets_add_nothing():
    x = ramp(5, 5)
    off = torch.zeros(1, 3, 3, 16, dtype=DT)
    mask = torch.ones(1, 3, 3, 8, dtype=DT)
    out = call3(x, off, mask, 3, 3, rc=1)
    assert out[0, 1, 1, 0].item() == pytest.approx(9 * 22 - 22)  # the 3x3 neighbourhood of (2, 2) less its centre
    off[0, 1, 1, 0:2] = float("nan")  # point 0 (the top-left tap, value 11) drops out
    out = call3(x, off, mask, 3, 3, rc=1)
    assert out[0, 1, 1, 0].item() == pytest.approx(9 * 22 - 22 - 11) and not out.isnan().any()


def test_dcnv4_packs_each_group_offsets_then_mask_and_ignores_padding():
    x = torch.cat([ramp(4, 4), 100 + ramp(4, 4)], -1)  # G = 2, D = 1
    om = torch.full((1, 4, 4, 8), float("nan"), dtype=DT)  # 3·G·P = 6 lanes, padded to 8
    om[..., 0:3] = torch.tensor([0.5, 0.0, 2.0], dtype=DT)  # group 0: dx, dy, mask
    om[..., 3:6] = torch.tensor([0.0, 0.25, 3.0], dtype=DT)  # group 1
    out = dcnv4(x, om, 1, 1, 1, 1, 0, 0, 1, 1, 2, 1, 1.0, 256, 0)
    assert out[0, 1, 1].tolist() == pytest.approx([2.0 * (10 + 1.5), 3.0 * (100 + 12.5 + 1)])
    assert packed_width(2, 1) == 8 and packed_width(4, 9) == 112 and packed_width(2, 8) == 48


# ---- a scalar transliteration of the CUDA kernels' loops --------------------------------------


def loop_dcnv3(x, off, mask, kh, kw, stride, pad, dil, g, os, rc):
    """The im2col loops of dcnv3_im2col_cuda.cuh as plain Python (one output element at a time)."""
    n, h, w, c = x.shape
    d = c // g
    ho, wo = off.shape[1:3]
    os = float32(os)
    out = torch.zeros(n, ho, wo, c, dtype=DT)
    cx, cy = (dil[1] * (kw - 1)) // 2, (dil[0] * (kh - 1)) // 2
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for gi in range(g):
                    p0x = cx - pad[1] + ox * stride[1] - cx * os
                    p0y = cy - pad[0] + oy * stride[0] - cy * os
                    k = 0
                    for i in range(kw):
                        for j in range(kh):
                            if rc and i == kw // 2 and j == kh // 2:
                                continue
                            dx, dy = float(off[b, oy, ox, (gi * off.shape[-1] // (2 * g) + k) * 2]), \
                                float(off[b, oy, ox, (gi * off.shape[-1] // (2 * g) + k) * 2 + 1])
                            px, py = p0x + (i * dil[1] + dx) * os, p0y + (j * dil[0] + dy) * os
                            m = float(mask[b, oy, ox, gi * mask.shape[-1] // g + k])
                            k += 1
                            if not (py > -1 and px > -1 and py < h and px < w):
                                continue
                            y0, x0 = math.floor(py), math.floor(px)
                            for yy, xx, wt in ((y0, x0, (1 - (py - y0)) * (1 - (px - x0))),
                                               (y0, x0 + 1, (1 - (py - y0)) * (px - x0)),
                                               (y0 + 1, x0, (py - y0) * (1 - (px - x0))),
                                               (y0 + 1, x0 + 1, (py - y0) * (px - x0))):
                                if 0 <= yy < h and 0 <= xx < w:
                                    out[b, oy, ox, gi * d:(gi + 1) * d] += m * wt * x[b, yy, xx, gi * d:(gi + 1) * d]
    return out


@pytest.mark.any_cpu
@pytest.mark.parametrize("kh,kw,stride,pad,dil,g,d,os,rc", [
    (3, 5, (2, 1), (1, 2), (1, 2), 2, 3, 0.5, 0),
    (5, 3, (1, 2), (2, 0), (2, 1), 1, 2, 1.5, 0),
    (2, 4, (1, 1), (0, 1), (1, 2), 2, 1, 0.75, 0),
    (3, 3, (1, 1), (1, 1), (1, 1), 3, 2, 1.0, 1),
])
def test_oracle_matches_a_scalar_transliteration_of_the_cuda_loops(kh, kw, stride, pad, dil, g, d, os, rc):
    gen = torch.Generator().manual_seed(kh * 100 + kw)
    h, w = 6, 7
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    p = kh * kw - rc
    x = torch.randn(2, h, w, g * d, generator=gen, dtype=DT)
    off = 4 * torch.rand(2, ho, wo, g * p * 2, generator=gen, dtype=DT) - 2
    mask = torch.rand(2, ho, wo, g * p, generator=gen, dtype=DT)
    want = loop_dcnv3(x, off, mask, kh, kw, stride, pad, dil, g, os, rc)
    got = call3(x, off, mask, kh, kw, stride, pad, dil, g, os, rc)
    assert (got - want).abs().max().item() < 1e-13
    # DCNv4 on the same tensors packed (NaN in the padding lanes), and with the softmax flag.
    om = pack(off, mask, g, fill=float("nan"))
    assert torch.equal(dcnv4(x, om, kh, kw, *stride, *pad, *dil, g, d, os, 256, rc), got)
    soft = torch.softmax(mask.view(2, ho, wo, g, p), -1).view(mask.shape)
    assert (dcnv4(x, om, kh, kw, *stride, *pad, *dil, g, d, os, 256, rc, softmax=True)
            - loop_dcnv3(x, off, soft, kh, kw, stride, pad, dil, g, os, rc)).abs().max().item() < 1e-13


# ---- identities ------------------------------------------------------------------------------


def _grads(fn, tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(torch.cos(torch.arange(out.numel(), dtype=DT)).view(out.shape))
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("os,rc", [(1.0, 0), (0.5, 0), (0.75, 1)])
def test_dcnv3_is_a_depthwise_deform_conv2d_with_ones_after_the_layout_conversions(os, rc):
    gen = torch.Generator().manual_seed(5)
    g, d, kh, kw, stride, pad, dil = 3, 2, 3, 5, (2, 1), (1, 2), (1, 2)
    ho, wo, p = 4, 7, kh * kw - rc
    x = torch.randn(2, 7, 11, g * d, generator=gen, dtype=DT)
    off = 6 * torch.rand(2, ho, wo, g * p * 2, generator=gen, dtype=DT) - 3
    mask = torch.softmax(torch.randn(2, ho, wo, g, p, generator=gen, dtype=DT), -1).reshape(2, ho, wo, g * p)
    args = (kh, kw, *stride, *pad, *dil, g, d, os, 256, rc)
    ours = _grads(lambda a, b, c: dcnv3(a, b, c, *args), (x, off, mask))
    theirs = _grads(lambda a, b, c: via_deform_conv2d(a, b, c, *args), (x, off, mask))
    assert all((a - b).abs().max().item() < 1e-12 for a, b in zip(ours, theirs))


def test_the_naive_deform_conv2d_call_of_internimage_107_is_not_dcnv3():
    """Raw DCNv3 tensors permuted to NCHW miss twice: torchvision reads (dy, dx) row-major taps."""
    from torchvision.ops import deform_conv2d

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 6, 6, 8, generator=gen, dtype=DT)
    off = torch.zeros(1, 6, 6, 4 * 9 * 2, dtype=DT)
    mask = torch.softmax(torch.randn(1, 6, 6, 4, 9, generator=gen, dtype=DT), -1).reshape(1, 6, 6, 36)
    ours = dcnv3(x, off, mask, 3, 3, 1, 1, 1, 1, 1, 1, 4, 2, 1.0, 256, 0)
    naive = deform_conv2d(x.permute(0, 3, 1, 2), off.permute(0, 3, 1, 2), torch.ones(8, 1, 3, 3, dtype=DT), None, 1, 1, 1,
                          mask.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    # Even with zero offsets the masks land on transposed taps.
    assert (naive - ours).abs().max().item() > 0.5


def test_dcnv4_equals_dcnv3_on_the_lanes_it_packs_with_zero_gradient_on_padding():
    gen = torch.Generator().manual_seed(7)
    g, d, p = 3, 4, 9
    x = torch.randn(1, 6, 6, g * d, generator=gen, dtype=DT)
    off = 4 * torch.rand(1, 6, 6, g * p * 2, generator=gen, dtype=DT) - 2
    mask = torch.randn(1, 6, 6, g * p, generator=gen, dtype=DT)
    om = pack(off, mask, g, width=96, fill=float("nan"))  # 81 lanes used, 15 padding
    args = (3, 3, 1, 1, 1, 1, 1, 1, g, d, 0.5, 256, 0)
    for softmax in (False, True):
        ours = _grads(lambda a, b: dcnv4(a, b, *args, softmax=softmax), (x, om))
        ident = _grads(lambda a, b: as_dcnv3(a, b, *args, softmax=softmax), (x, om))
        assert all(torch.allclose(a, b, atol=1e-13, rtol=0) for a, b in zip(ours, ident))
        assert ours[2][..., 81:].abs().sum().item() == 0 and not ours[0].isnan().any()


# ---- contract --------------------------------------------------------------------------------


def test_bad_calls_say_what_they_got_and_expected():
    x = torch.zeros(1, 5, 5, 8)
    with pytest.raises(ValueError, match=r"input has 8 channels, expected group\*group_channels = 3\*2"):
        dcnv3(x, torch.zeros(1, 5, 5, 54), torch.zeros(1, 5, 5, 27), 3, 3, 1, 1, 1, 1, 1, 1, 3, 2, 1.0, 256, 0)
    with pytest.raises(ValueError, match=r"offset has shape \(1, 5, 5, 18\), expected \(1, 5, 5, 36\)"):
        dcnv3(x, torch.zeros(1, 5, 5, 18), torch.zeros(1, 5, 5, 18), 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 256, 0)
    with pytest.raises(ValueError, match=r"offset_mask has 60 lanes, expected a multiple of 8 >= G\*P\*3 = 54"):
        dcnv4(x, torch.zeros(1, 5, 5, 60), 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 256, 0)
    with pytest.raises(ValueError, match=r"offset_mask has 48 lanes"):
        dcnv4(x, torch.zeros(1, 5, 5, 48), 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 256, 0)
    with pytest.raises(ValueError, match="remove_center is 2, expected 0 or 1"):
        dcnv3(x, torch.zeros(1, 5, 5, 32), torch.zeros(1, 5, 5, 16), 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 256, 2)


def test_shape_grammar():
    geo = parse_shape("64,56,56,4,32:3,3")
    assert (geo.c, geo.ho, geo.wo, geo.padding, geo.offset_scale, geo.im2col_step) == (128, 56, 56, (1, 1), 1.0, 256)
    geo = parse_v4("2,9,11,3,8:3,5:2x1,1x2,1x2,0.5,1,2")
    assert (geo.stride, geo.padding, geo.dilation, geo.offset_scale, geo.remove_center, geo.im2col_step) == \
        ((2, 1), (1, 2), (1, 2), 0.5, True, 2)
    assert geo.points == 14 and geo.cpad == 3 * 14 * 3 + 2 and geo.op == "dcnv4"
    assert parse_shape(geo.shape_text).shape_text == geo.shape_text
    for bad, message in (("64,56,56,4:3,3", "N,H,W,G,D needs 5"), ("1,5,5,2,2:7,7:1,0,1", "does not fit"),
                         ("1,5,5,2,2:3,3:1,1,1,1.0,2", "remove_center must be 0 or 1"),
                         ("1,5,5,2,2:1,1:1,0,1,1.0,1", "no point")):
        with pytest.raises(UsageError, match=message):
            parse_shape(bad)


def test_positions_follow_the_kernels_order_of_evaluation():
    geo = parse_shape("1,6,6,1,1:3,3:1,1,1,0.75")
    off = torch.zeros(1, 6, 6, 1, 9, 2, dtype=DT)
    y, x = positions(off, geo)
    # Tap (i, j) = (2, 0) at output (0, 0): x = (1 - 1 - 0.75) + (2 + 0)·0.75, y = (1 - 1 - 0.75) + 0.
    assert x[0, 0, 0, 0, 6].item() == 0.75 and y[0, 0, 0, 0, 6].item() == -0.75
