"""Non-finite isolation (README "Non-finite values"): a NaN or Inf in the map, an offset, a mask or
the incoming gradient reaches exactly the outputs and gradients that read it, in every backend we own
(the pytorch oracles, ext's CPU kernels, ext's CUDA kernels emulated, both backward modes).

"Reads" is modelled here independently of any kernel: a sample reads the in-map corners of its
bilinear cell (RoIAlign's and MXNet's clamped corners for the pooling ops); a sample whose point
is not finite reads nothing and is NaN; each output reads its samples, each gradient what the
chain rule multiplies. Every backend's non-finite positions must be the model's, and its finite
values the oracle's (on the map with the bad pixels zeroed, where only pixels are bad).
"""

import contextlib
import os

import pytest
import torch

from dcnbench.backends import get
from dcnbench.ops.deform_conv2d.contract import ConvGeometry
from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as conv_oracle, sampling_points
from dcnbench.ops.deform_psroi_pool.contract import check_call as psroi_check
from dcnbench.ops.deform_psroi_pool.oracle import deform_psroi_pool as psroi_oracle
from dcnbench.ops.deform_psroi_pool.points import psroi_bins, psroi_pool_samples
from dcnbench.ops.deform_roi_pool.contract import check_call as roi_check
from dcnbench.ops.deform_roi_pool.oracle import deform_roi_pool as roi_oracle
from dcnbench.ops.deform_roi_pool.points import roi_pool_samples

NAN, INF = float("nan"), float("inf")
F64 = torch.float64


@contextlib.contextmanager
def deterministic(flag: str):
    before = os.environ.get("DCNBENCH_EXT_DETERMINISTIC")
    os.environ["DCNBENCH_EXT_DETERMINISTIC"] = flag
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DCNBENCH_EXT_DETERMINISTIC")
        else:
            os.environ["DCNBENCH_EXT_DETERMINISTIC"] = before


@pytest.fixture(scope="module")
def kernels():
    """name -> (op name -> callable, mode flag) for every backend we own."""
    ext, emu = get("ext"), get("ext-cuda-emu")
    assert ext.check() is None and emu.check() is None
    oracles = {"deform_conv2d": conv_oracle, "deform_roi_pool": roi_oracle, "deform_psroi_pool": psroi_oracle}
    return {"oracle": (oracles, "0"), "ext": (ext.ops, "0"), "ext-cuda-emu atomic": (emu.ops, "0"),
            "ext-cuda-emu deterministic": (emu.ops, "1")}


def run(fn, tensors: dict, params: dict, differentiable: tuple, cotangent):
    leaves = {k: (v.clone().requires_grad_(True) if k in differentiable and v is not None else v) for k, v in tensors.items()}
    out = fn(**leaves, **params)
    out.backward(cotangent)
    return {"output": out.detach()} | {f"grad_{k}": leaves[k].grad for k in differentiable if leaves[k] is not None}


def check_against_model(kernels, op, tensors, params, differentiable, cotangent, expected, clean=None):
    """Every backend: non-finite exactly where `expected` says, finite values as the oracle's (or `clean`'s)."""
    reference = run(kernels["oracle"][0][op], tensors, params, differentiable, cotangent)
    for name, (ops, flag) in kernels.items():
        with deterministic(flag):
            got = run(ops[op], tensors, params, differentiable, cotangent)
        for q, bad in expected.items():
            assert torch.equal(~torch.isfinite(got[q]), bad), (name, q, (~torch.isfinite(got[q])).sum(), bad.sum())
            ref = (clean or reference)[q]
            assert torch.allclose(got[q][~bad], ref[~bad], rtol=1e-10, atol=1e-12), (name, q)
    return reference


def onehot(index: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(index.clamp(0, size - 1), size).bool()


# ---- deform_conv2d ---------------------------------------------------------------------------------

GEO = ConvGeometry(n=2, c=4, h=6, w=7, o=4, kh=3, kw=3, padding=(1, 1), groups=2, offset_groups=2)


def conv_reads(offset: torch.Tensor) -> torch.Tensor:
    """(N, G, K, L, H*W): sample (n, g, k, l) reads pixel q (an in-map corner of its cell, finite point)."""
    py, px = (p.flatten(3) for p in sampling_points(offset, GEO))
    finite = torch.isfinite(py) & torch.isfinite(px)
    y0 = torch.nan_to_num(py).clamp(-3, GEO.h + 3).floor().long()
    x0 = torch.nan_to_num(px).clamp(-3, GEO.w + 3).floor().long()
    reads = torch.zeros(*py.shape, GEO.h * GEO.w, dtype=torch.bool)
    for dy in (0, 1):
        for dx in (0, 1):
            yi, xi = y0 + dy, x0 + dx
            inside = finite & (yi >= 0) & (yi < GEO.h) & (xi >= 0) & (xi < GEO.w)
            reads |= onehot(yi * GEO.w + xi, GEO.h * GEO.w) & inside[..., None]
    return reads


def conv_model(offset, bad_pixel, bad_offset, bad_mask, bad_cot) -> dict[str, torch.Tensor]:
    """Which outputs and gradients must be non-finite (README "Non-finite values")."""
    g = GEO
    n, groups, og, k, l = g.n, g.groups, g.offset_groups, g.taps, g.ho * g.wo
    cpg, cg, opg = g.c // og, g.c // groups, g.o // groups
    reads = conv_reads(offset)
    rc = reads.repeat_interleave(cpg, 1)  # per input channel: (N, C, K, L, HW)
    sample_bad = bad_offset.reshape(n, og, k, 2, l).any(3)  # a coordinate not finite: (N, G, K, L)
    reads_bad = (rc & bad_pixel.flatten(2)[:, :, None, None, :]).any(-1)  # (N, C, K, L)
    cols_bad = sample_bad.repeat_interleave(cpg, 1) | bad_mask.reshape(n, og, k, l).repeat_interleave(cpg, 1) | reads_bad
    out_bad = cols_bad.reshape(n, groups, cg, k, l).any(2).any(2).repeat_interleave(opg, 1)  # (N, O, L)
    cot_bad = bad_cot.flatten(2)
    gcols_bad = cot_bad.reshape(n, groups, opg, l).any(2).repeat_interleave(cg, 1)[:, :, None, :].expand(n, g.c, k, l)
    mask_c = bad_mask.reshape(n, og, k, l).repeat_interleave(cpg, 1)
    grad_input = (rc & (gcols_bad | mask_c)[..., None]).any(2).any(2)
    per_group = (gcols_bad | reads_bad).reshape(n, og, cpg, k, l).any(2)
    grad_mask = sample_bad | per_group
    grad_offset = grad_mask | bad_mask.reshape(n, og, k, l)
    cot_any, cols_any = cot_bad.any(2).any(0), cols_bad.any(3).any(0)  # (O,), (C, K)
    grad_weight = cols_any.reshape(groups, cg, k).repeat_interleave(opg, 0) | cot_any[:, None, None]
    return {"output": out_bad.reshape(n, g.o, g.ho, g.wo), "grad_input": grad_input.reshape(n, g.c, g.h, g.w),
            "grad_offset": grad_offset[:, :, :, None, :].expand(n, og, k, 2, l).reshape(n, 2 * og * k, g.ho, g.wo),
            "grad_mask": grad_mask.reshape(n, og * k, g.ho, g.wo),
            "grad_weight": grad_weight.reshape(g.o, cg, g.kh, g.kw), "grad_bias": cot_any}


def conv_tensors(spread: float, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    g = GEO
    shapes = g.shapes(mask=True, bias=True)
    t = {name: torch.randn(*shape, generator=gen, dtype=F64) for name, shape in shapes.items()}
    t["offset"] = (torch.rand(*shapes["offset"], generator=gen, dtype=F64) * 2 - 1) * spread
    t["mask"] = torch.rand(*shapes["mask"], generator=gen, dtype=F64)
    return t


CONV_PARAMS = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}
CONV_GRADS = ("input", "offset", "weight", "bias", "mask")


def conv_case(kernels, t, cot, clean=None):
    bad = {k: ~torch.isfinite(v) for k, v in t.items()}
    expected = conv_model(t["offset"], bad["input"], bad["offset"], bad["mask"], ~torch.isfinite(cot))
    check_against_model(kernels, "deform_conv2d", t, CONV_PARAMS, CONV_GRADS, cot, expected, clean)
    return expected


def cotangent(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def with_pixels(t, pixels):
    x = t["input"].clone()
    for (n, c, y, x_), v in pixels:
        x[n, c, y, x_] = v
    return t | {"input": x}


# Bad pixels in a corner, on an edge, inside; NaN, +Inf and -Inf.
PIXELS = [((0, 0, 0, 0), INF), ((1, 3, 2, 4), NAN), ((0, 1, 5, 6), -INF), ((1, 2, 0, 3), INF)]


@pytest.mark.parametrize("spread", [2.5, 100.0, 0.0], ids=["offsets-2.5px", "image-1-far-away", "zero-offsets"])
def test_a_bad_pixel_reaches_exactly_the_outputs_and_gradients_that_read_it(kernels, spread):
    t = conv_tensors(2.5 if spread == 100.0 else spread)
    if spread == 100.0:  # every sample of image 1 lands outside the map: its bad pixels are read by no one
        t["offset"][1] += spread
    cot = cotangent(GEO.output_shape)
    bad_t = with_pixels(t, PIXELS)
    zeroed = with_pixels(t, [(p, 0.0) for p, _ in PIXELS])
    clean = run(conv_oracle, zeroed, CONV_PARAMS, CONV_GRADS, cot)
    expected = conv_case(kernels, bad_t, cot, clean)
    read = expected["output"].any()
    unread = not all(conv_reads(t["offset"]).any(2).any(2).any(1)[n, y * GEO.w + x].item() for (n, _, y, x), _ in PIXELS)
    assert read and (spread != 100.0 or (unread and not expected["output"][1].any()))


def test_samples_at_exactly_minus_one_read_row_zero(kernels):
    # Zero offsets and padding 1: the top taps sample exactly y = -1, whose cell holds row 0 (weight 0).
    t = with_pixels(conv_tensors(0.0), [((0, 0, 0, 3), INF)])
    cot = cotangent(GEO.output_shape)
    expected = conv_case(kernels, t, cot)
    assert expected["output"][0, :, 0].any() and expected["grad_offset"].any()


def test_bad_offsets_make_exactly_their_samples_nan(kernels):
    t = conv_tensors(2.5)
    off = t["offset"].clone()
    off[0, 5, 2, 3], off[1, 0, 0, 0], off[1, 20, 5, 6], off[0, 30, 1, 1] = NAN, INF, -INF, 1e300  # the last: far away, finite
    expected = conv_case(kernels, t | {"offset": off}, cotangent(GEO.output_shape))
    assert expected["output"].any() and not expected["grad_input"].any()


def test_a_bad_mask_poisons_its_sample_not_its_mask_gradient(kernels):
    t = conv_tensors(2.5)
    mask = t["mask"].clone()
    mask[0, 3, 1, 1], mask[1, 10, 4, 4], mask[1, 17, 0, 6] = INF, NAN, -INF
    expected = conv_case(kernels, t | {"mask": mask}, cotangent(GEO.output_shape))
    assert expected["grad_offset"].any() and not expected["grad_mask"].any()


def test_a_bad_incoming_gradient_reaches_exactly_what_it_multiplies(kernels):
    t = conv_tensors(2.5)
    cot = cotangent(GEO.output_shape)
    cot[0, 2, 3, 3], cot[1, 1, 0, 6] = INF, NAN
    expected = conv_case(kernels, t, cot)
    assert not expected["output"].any() and expected["grad_input"].any() and not expected["grad_input"].all()


# ---- the pooling ops --------------------------------------------------------------------------------

N, C, H, W = 2, 8, 9, 10
ROIS = torch.tensor([[0, 1, 1, 12, 10], [1, -3, 2, 6, 14], [0, 4, 4, 30, 30], [1, 0, 0, 3, 3], [0, -20, -20, -10, -10]],
                    dtype=F64)
K = ROIS.shape[0]
ROI_PARAMS = {"output_size": 3, "spatial_scale": 0.5, "gamma": 0.1}
PS_PARAMS = {"spatial_scale": 0.5, "output_dim": 2, "group_size": 2, "pooled_size": 3, "part_size": 3,
             "sample_per_part": 2, "trans_std": 0.1}


def corner_reads(y, x, clamp_corners):
    """(..., H*W) reads of points (y, x) under a pooling op's corner rule."""
    reads = torch.zeros(*y.shape, H * W, dtype=torch.bool)
    for yi, xi in clamp_corners(torch.nan_to_num(y), torch.nan_to_num(x)):
        reads |= onehot(yi * W + xi, H * W)
    return reads


def roialign_corners(y, x):
    """RoIAlign's corners of a point inside [-1, size]: clamped into the map (they may coincide)."""
    def axis(p, size):
        p = p.clamp(min=0)
        low = p.floor().long().clamp(max=size - 1)
        return low, torch.where(low >= size - 1, low, low + 1)
    (y0, y1), (x0, x1) = axis(y, H), axis(x, W)
    return [(a, b) for a in (y0, y1) for b in (x0, x1)]


def mxnet_corners(y, x):
    """MXNet's floor and ceil corners of a kept point, clamped into the map."""
    y, x = y.clamp(0, H - 1), x.clamp(0, W - 1)
    return [(a.long(), b.long()) for a in (y.floor(), y.ceil()) for b in (x.floor(), x.ceil())]


def roi_model(offset, bad_pixel, bad_cot, sampling_ratio):
    geo = roi_check(torch.zeros(N, C, H, W, dtype=F64), ROIS, offset, 3, 0.5, sampling_ratio, 0.1)
    points, _ = roi_pool_samples(ROIS, offset, geo)
    reads, poisoned, active_any = [], torch.zeros(K, 3, 3, dtype=torch.bool), torch.zeros(K, 3, 3, dtype=torch.bool)
    for pt in points:  # (K, 3, 3) each
        active = torch.ones_like(pt.y, dtype=torch.bool) if pt.active is None else pt.active.expand_as(pt.y)
        finite = torch.isfinite(pt.y) & torch.isfinite(pt.x)
        inside = finite & active & (pt.y >= -1) & (pt.y <= H) & (pt.x >= -1) & (pt.x <= W)
        reads.append(corner_reads(pt.y, pt.x, roialign_corners) & inside[..., None])
        poisoned |= active & ~finite
        active_any |= active
    read = torch.stack(reads).any(0).flatten(1, 2)  # (K, bins, HW)
    batch = ROIS[:, 0].long()
    pix = bad_pixel.flatten(2)[batch]  # (K, C, HW)
    reads_bad = (read[:, None] & pix[:, :, None]).any(-1)  # (K, C, bins)
    cot = bad_cot.flatten(2)
    out = poisoned.flatten(1)[:, None] | reads_bad
    grad_input = torch.zeros(N, C, H * W, dtype=torch.bool)
    for kk in range(K):
        grad_input[batch[kk]] |= (read[kk][None] & cot[kk][:, :, None]).any(1)
    grad_offset = poisoned.flatten(1) | (active_any.flatten(1) & (cot.any(1) | reads_bad.any(1)))
    return {"output": out.reshape(K, C, 3, 3), "grad_input": grad_input.reshape(N, C, H, W),
            "grad_offset": grad_offset[:, None].expand(K, 2, 9).reshape(K, 2, 3, 3)}


def psroi_model(trans, bad_pixel, bad_cot):
    geo = psroi_check(torch.zeros(N, C, H, W, dtype=F64), ROIS, trans, **PS_PARAMS)
    p, classes, per_class = geo.pooled_size, geo.classes, geo.output_dim // geo.classes
    reads, poisoned, kept_any = [], torch.zeros(K, classes, p, p, dtype=torch.bool), torch.zeros(K, classes, p, p, dtype=torch.bool)
    for pt in psroi_pool_samples(ROIS, trans, geo, no_trans=False):  # (K, classes, p, p) each
        finite = torch.isfinite(pt.y) & torch.isfinite(pt.x)
        kept = finite & (pt.x >= -0.5) & (pt.x <= W - 0.5) & (pt.y >= -0.5) & (pt.y <= H - 0.5)
        reads.append(corner_reads(pt.y, pt.x, mxnet_corners) & kept[..., None])
        poisoned |= ~finite
        kept_any |= kept | ~finite
    read = torch.stack(reads).any(0).flatten(2, 3)  # (K, classes, bins, HW)
    _, gp = psroi_bins(geo)
    bins_group = (gp[:, None] * geo.group_size + gp[None, :]).flatten()  # (bins,)
    d = torch.arange(geo.output_dim)
    channel = d[:, None] * geo.group_size ** 2 + bins_group[None, :]  # (D, bins)
    cls = d // per_class
    batch = ROIS[:, 0].long()
    pix = bad_pixel.flatten(2)[batch][:, channel]  # (K, D, bins, HW)
    rd = read[:, cls]  # (K, D, bins, HW)
    reads_bad = (rd & pix).any(-1)
    out = poisoned.flatten(2)[:, cls] | reads_bad
    cot = bad_cot.flatten(2)  # (K, D, bins)
    grad_input = torch.zeros(N, C, H * W, dtype=torch.bool)
    for kk in range(K):
        hit = rd[kk] & cot[kk][..., None]  # (D, bins, HW)
        for di in range(geo.output_dim):
            for b in range(p * p):
                grad_input[batch[kk], channel[di, b]] |= hit[di, b]
    per_bin = kept_any.flatten(2)[:, cls] & (poisoned.flatten(2)[:, cls] | cot | reads_bad)  # (K, D, bins)
    part, _ = psroi_bins(geo)
    cell = (part[:, None] * geo.part_size + part[None, :]).flatten()
    grad_trans = torch.zeros(K, classes, geo.part_size ** 2, dtype=torch.bool)
    for di in range(geo.output_dim):
        for b in range(p * p):
            grad_trans[:, cls[di], cell[b]] |= per_bin[:, di, b]
    return {"output": out.reshape(K, geo.output_dim, p, p), "grad_input": grad_input.reshape(N, C, H, W),
            "grad_trans": grad_trans[:, :, None].expand(K, classes, 2, geo.part_size ** 2).reshape(K, 2 * classes, 3, 3)}


def pool_tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(N, C, H, W, generator=gen, dtype=F64), (torch.rand(K, 2, 3, 3, generator=gen, dtype=F64) - 0.5) * 4,
            (torch.rand(K, 4, 3, 3, generator=gen, dtype=F64) - 0.5) * 2)


POOL_PIXELS = [((0, 0, 0, 0), INF), ((1, 3, 3, 4), NAN), ((0, 1, 8, 9), -INF), ((0, 6, 4, 4), INF)]


def bad_inputs(kind, x, off, cot):
    if kind == "pixels":
        x = x.clone()
        for (n, c, y, x_), v in POOL_PIXELS:
            x[n, c, y, x_] = v
    elif kind == "offsets":
        off = off.clone()
        off[0, 0, 1, 1], off[1, 1, 0, 0], off[2, 0, 2, 2] = NAN, INF, -INF
    else:
        cot = cot.clone()
        cot[0, 1, 1, 1], cot[2, cot.shape[1] - 1, 0, 0] = INF, NAN
    return x, off, cot


@pytest.mark.parametrize("kind", ["pixels", "offsets", "cotangent"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_deform_roi_pool_isolates_non_finite_values(kernels, kind, sampling_ratio):
    x, off, _ = pool_tensors()
    x, off, cot = bad_inputs(kind, x, off, cotangent((K, C, 3, 3)))
    expected = roi_model(off, ~torch.isfinite(x), ~torch.isfinite(cot), sampling_ratio)
    params = ROI_PARAMS | {"sampling_ratio": sampling_ratio}
    check_against_model(kernels, "deform_roi_pool", {"input": x, "rois": ROIS, "offset": off}, params, ("input", "offset"),
                        cot, expected)
    assert any(v.any() for v in expected.values()) and not all(v.all() for v in expected.values())


@pytest.mark.parametrize("kind", ["pixels", "offsets", "cotangent"])
def test_deform_psroi_pool_isolates_non_finite_values(kernels, kind):
    x, _, trans = pool_tensors()
    x, trans, cot = bad_inputs(kind, x, trans, cotangent((K, 2, 3, 3)))
    expected = psroi_model(trans, ~torch.isfinite(x), ~torch.isfinite(cot))
    check_against_model(kernels, "deform_psroi_pool", {"input": x, "rois": ROIS, "trans": trans}, PS_PARAMS,
                        ("input", "trans"), cot, expected)
    assert any(v.any() for v in expected.values()) and not all(v.all() for v in expected.values())


def leaky_conv(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """The leak the issue found in ext: corners outside the map read pixel (0, 0) with weight 0."""
    out = conv_oracle(input, offset, weight, bias, stride, padding, dilation, mask)
    return out + 0 * input[:, :1, :1, :1]


def test_the_check_catches_a_kernel_that_leaks(kernels):
    t = with_pixels(conv_tensors(2.5), PIXELS)
    leaky = {"oracle": kernels["oracle"], "leaky": ({"deform_conv2d": leaky_conv}, "0")}
    with pytest.raises(AssertionError, match="leaky"):
        conv_case(leaky, t, cotangent(GEO.output_shape))
