"""ext's DCNv3/DCNv4 CPU kernels beyond the suite (which test_ext.py runs): a NaN pixel reaches only
the outputs that read it, results do not depend on the thread count, arguments are checked before
any kernel runs; and `speed` times them next to the oracle and the reference rows."""

import dataclasses
import json

import pytest
import torch

from dcnbench.backends import ext, get
from dcnbench.ops.dcnv3.contract import GroupGeometry
from dcnbench.ops.dcnv3.oracle import dcnv3 as oracle_v3
from dcnbench.ops.dcnv3.suite import group_geometry
from dcnbench.ops.dcnv3.workloads import Dcnv3Case, grid
from dcnbench.ops.dcnv4.contract import Dcnv4Geometry
from dcnbench.ops.dcnv4.oracle import dcnv4 as oracle_v4
from dcnbench.checking.compare import compare
from dcnbench.ops.dcnv4.oracle import pack
from dcnbench.ops.dcnv4.workloads import Dcnv4Case
from tests.conftest import invoke


@pytest.fixture(scope="module", autouse=True)
def built():
    b = get("ext")
    assert b.check() is None, b.check()
    return b


def _grads(fn, case, t):
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    out = case.call(fn, leaves)
    out.backward(torch.ones_like(out).cos())
    return [out.detach()] + [leaves[k].grad for k in sorted(leaves)]


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_a_bad_pixel_reaches_only_the_outputs_that_read_it(op):
    # Every point samples the last row's band (H-1 < y < H), so its lower corners are off the map:
    # a kernel that clamps their index and multiplies by a zero weight reads pixel (0, 0).
    geo = group_geometry(n=1, h=6, w=7, g=2, d=8)
    t = Dcnv3Case(name="bad-pixel", geometry=geo, offsets="interior").inputs()
    gy, _, os_ = grid(geo)
    off = t["offset"].view(1, geo.ho, geo.wo, geo.group, geo.points, 2)
    target = geo.h - 0.8 + 0.6 * torch.rand(off[..., 1].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    off[..., 1] = (target - gy) / os_
    t["input"][0, 0, 0, :] = float("nan")  # read by no point
    t["input"][0, 5, 3, 8:] = float("inf")  # on the last row: read, by group 1 only
    if op == "dcnv4":
        case = Dcnv4Case(name="bad-pixel", geometry=Dcnv4Geometry(**vars(geo)))
        t = {"input": t["input"], "offset_mask": pack(t["offset"], t["mask"], geo.group, fill=float("nan"))}
    else:
        case = Dcnv3Case(name="bad-pixel", geometry=geo)
    got = _grads(getattr(ext, op), case, t)
    want = _grads(oracle_v4 if op == "dcnv4" else oracle_v3, case, t)
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
        assert torch.allclose(a.nan_to_num(0, 0, 0), b.nan_to_num(0, 0, 0), atol=1e-12, rtol=0)
    out = got[0]
    assert out[..., :8].isfinite().all()  # group 0 never reads the infinite channels, nobody reads (0, 0)
    assert (~out[..., 8:].isfinite()).any()


@pytest.mark.any_cpu
@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_results_are_bitwise_the_same_on_one_and_two_threads(op):
    cls, gcls = (Dcnv4Case, Dcnv4Geometry) if op == "dcnv4" else (Dcnv3Case, GroupGeometry)
    geo = group_geometry(gcls, n=3, h=12, w=11, g=2, d=32, stride=(2, 1), os=0.5)
    case = cls(name="threads", geometry=geo, dtype="float32", offset_scale=3.0)
    t = case.inputs()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grads(getattr(ext, op), case, t)
        torch.set_num_threads(2)
        two, again = _grads(getattr(ext, op), case, t), _grads(getattr(ext, op), case, t)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(one, two, again))


def _by_group(op, geo, t, groups, threads):
    """ext's output and gradients of the groups [lo, hi) of each slice in `groups`, each slice run as
    a call of its own, joined along the channels (DCNv4: along each group's offset and mask lanes)."""
    p, d = geo.points, geo.group_channels
    outs, grads = [], []
    for lo, hi in groups:
        part = dataclasses.replace(geo, group=hi - lo)
        inputs = {"input": t["input"][..., lo * d:hi * d], "offset": t["offset"][..., lo * 2 * p:hi * 2 * p],
                  "mask": t["mask"][..., lo * p:hi * p]}
        if op == "dcnv4":
            inputs = {"input": inputs["input"], "offset_mask": pack(inputs["offset"], inputs["mask"], hi - lo)}
            case = Dcnv4Case(name="groups", geometry=Dcnv4Geometry(**vars(part)))
        else:
            case = Dcnv3Case(name="groups", geometry=part)
        leaves = {k: v.contiguous().requires_grad_(True) for k, v in inputs.items()}
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            out = case.call(getattr(ext, op), leaves)
            out.backward(torch.ones_like(out).cos())
        finally:
            torch.set_num_threads(before)
        outs.append(out.detach())
        # per group: the input gradient's channels, then (DCNv4) the group's 3P lanes or (DCNv3) 2P offset and P mask
        for g in range(hi - lo):
            row = [leaves["input"].grad[..., g * d:(g + 1) * d]]
            if op == "dcnv4":
                row.append(leaves["offset_mask"].grad[..., g * 3 * p:(g + 1) * 3 * p])
            else:
                row += [leaves["offset"].grad[..., g * 2 * p:(g + 1) * 2 * p], leaves["mask"].grad[..., g * p:(g + 1) * p]]
            grads.append(row)
    return torch.cat(outs, -1), grads


@pytest.mark.any_cpu
@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_group_comes_out_the_same_whatever_groups_are_beside_it(op, dtype):
    # 16 groups of 32 channels make rows of 2 KiB (float32) or 4 KiB (float64): the kernels then keep
    # each image group-major (dcnv34.cpp's pack_images). Four groups per call make rows of 512 B or 1 KiB,
    # read in place. Every group must come out bit for bit the same either way, on one thread and on two
    # (their task ranges split an image: the forward's at a position, the backward's at a group).
    geo = group_geometry(n=3, h=5, w=6, g=16, d=32, stride=(2, 1), os=0.75)
    t = Dcnv3Case(name="groups", geometry=geo, dtype=dtype, offset_scale=2.0).inputs()
    for threads in (1, 2):
        whole, whole_grads = _by_group(op, geo, t, [(0, 16)], threads)
        parts, parts_grads = _by_group(op, geo, t, [(0, 4), (4, 8), (8, 12), (12, 16)], threads)
        assert torch.equal(whole, parts), (threads, (whole - parts).abs().max())
        for g, (a, b) in enumerate(zip(whole_grads, parts_grads)):
            assert all(torch.equal(x, y) for x, y in zip(a, b)), (threads, g)


def test_arguments_are_checked_before_any_kernel_runs():
    x = torch.zeros(1, 5, 5, 8)
    with pytest.raises(ValueError, match=r"mask has shape \(1, 5, 5, 9\), expected \(1, 5, 5, 18\)"):
        ext.dcnv3(x, torch.zeros(1, 5, 5, 36), torch.zeros(1, 5, 5, 9), 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 256, 0)
    with pytest.raises(ValueError, match="offset is torch.float64 on cpu, expected torch.float32"):
        ext.dcnv3(x, torch.zeros(1, 5, 5, 36, dtype=torch.float64), torch.zeros(1, 5, 5, 18), 3, 3, 1, 1, 1, 1, 1, 1, 2, 4,
                  1.0, 256, 0)
    with pytest.raises(ValueError, match=r"offset_mask has 54 lanes, expected a multiple of 8"):
        ext.dcnv4(x, torch.zeros(1, 5, 5, 54), 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 256, 0)


@pytest.mark.any_cpu
def test_im2col_step_changes_nothing():
    geo = group_geometry(n=5, h=6, w=6, g=2, d=8)
    case = Dcnv3Case(name="steps", geometry=geo, dtype="float64")
    t = case.inputs()
    base = case.call(ext.dcnv3, t)
    for step in (1, 2, 3, 64):
        args = list(geo.args())
        args[11] = step
        assert torch.equal(ext.dcnv3(t["input"], t["offset"], t["mask"], *args), base)


def test_speed_times_ext_the_oracle_and_both_reference_rows(tmp_path):
    out = tmp_path / "speed.json"
    res = invoke("speed", "--op", "dcnv4", "--shape", "2,10,10,2,16:3,3", "--backend", "ext", "--backend", "pytorch",
                 "--backend", "conv2d",
                 "--backend", "torchvision", "--repeat", "2", "--warmup", "0", "--no-memory", "--direction", "fwd",
                 "--json", str(out), "--csv", str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stdout + res.stderr
    records = json.loads(out.read_text())["records"]
    assert {r["backend"]: r["status"] for r in records} == {"ext": "ok", "pytorch": "ok", "torchvision": "ok", "conv2d": "ok"}
    assert all(r["baseline"] == "conv2d" and r["ratio_to_baseline"] > 0 for r in records)
    assert {r["op"] for r in records} == {"dcnv4"} and "x conv2d" in res.stdout


def test_the_cpu_kernel_indexes_an_input_past_2_31_elements():
    """Failure class "32-bit index overflow" on ext's CPU kernels (DCNv4 shares DCNv3's): an input of more
    than 2^31 elements, only its last image written (the rest is address space that reads as zeros,
    backends/ext/overflow.py); that image's output, all past element 2^31, against the oracle."""
    from dcnbench.backends.ext.overflow import DCNV3_BOUND, INT32_MAX, dcnv3_past_int32

    got, want, start = dcnv3_past_int32(get("ext").ops["dcnv3"])
    assert start > INT32_MAX and float(want.norm()) > 0
    err = compare("output", got, want, "float32")
    assert err.rel_err < DCNV3_BOUND, err


@pytest.mark.parametrize("call", ["dcnv3_forward", "dcnv3_backward", "dcnv4_forward", "dcnv4_backward"])
def test_a_map_of_more_pixels_than_the_plans_int32_indices_is_refused_before_any_work(call):
    """The CPU kernels plan pixel indices y·W + x in int32 lanes (dcnv34.cpp plan_lanes): a map of
    2^31 - 4 pixels or more is refused, before any output is allocated (the input is address space
    only, backends/ext/overflow.py: 46341 x 46341 x 1 float32, 8.6 GB never written)."""
    x = torch.empty(1, 46341, 46341, 1)
    geo = (1, 1, 46340, 46340, 0, 0, 1, 1, 1, 1, 1.0, False)  # 1x1 taps, stride 46340: 2x2 outputs
    ops = ext.LIBRARY.ops()
    if call.startswith("dcnv3"):
        off, mask = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 1)
        args = (x, off, mask, *geo) if call.endswith("forward") else (torch.ones(1, 2, 2, 1), x, off, mask, *geo)
    else:
        om = torch.zeros(1, 2, 2, 8)
        args = (x, om, *geo, False) if call.endswith("forward") else (torch.ones(1, 2, 2, 1), x, om, *geo, False)
    with pytest.raises(RuntimeError, match=r"at most 2147483643 pixels \(H\*W\), got 46341x46341"):
        getattr(ops, call)(*args)
