"""Verification of the RoI pooling ops: the oracle passes, planted bugs are caught, the suite covers the issue."""

import pytest
import torch

from dcnbench.plugins import load_plugin
from dcnbench.backends import get
from dcnbench.ops.deform_psroi_pool.points import psroi_pool_samples
from dcnbench.ops.deform_roi_pool.points import roi_pool_samples

OP_DEFORM_ROI_POOL, OP_DEFORM_PSROI_POOL = "deform_roi_pool", "deform_psroi_pool"
from dcnbench.checking.runs import cotangents
from dcnbench.checking.verify import default_suite
from dcnbench.checking.verify import failed, run_verify
from tests.conftest import one_dtype_per_geometry
from tests.plugins.planted_roi_bugs import BUGS, OVERFLOW_BUGS

SUITE = default_suite(op_names=["deform_roi_pool", "deform_psroi_pool"])
PLANTED = "tests/plugins/planted_roi_bugs.py"


@pytest.fixture(scope="module")
def results():
    return run_verify(backends=[get("pytorch"), get("torchvision")], cases=SUITE)


def test_oracle_passes_every_pooling_case_and_torchvision_says_why_not(results):
    bad = [(r.case.case_id, r.backend, r.status, r.message) for r in results
           if r.backend == "pytorch" and r.status != "pass" and r.case.check != "compile"]
    assert not bad
    # The oracles' sampling loops depend on the RoIs' values: torch.compile cannot trace them whole.
    compiled = [r for r in results if r.backend == "pytorch" and r.case.check == "compile"]
    assert len(compiled) == 2 and all(r.status == "unsupported" and "cannot trace" in r.message for r in compiled)
    tv = [r for r in results if r.backend == "torchvision"]
    assert tv and all(r.status == "unsupported" and "no deformable RoI pooling" in r.message for r in tv)
    assert not failed(results)


def test_identity_and_no_offset_cases_compare_output_and_input_gradient(results):
    for r in results:
        base = {q.quantity for q in r.quantities if "@" not in q.quantity}
        if r.backend == "pytorch" and r.case.check in ("roi_align", "ps_roi_align", "no_offset"):
            assert base == {"output", "grad_input"}, r.case.case_id
        elif r.backend == "pytorch" and r.case.check == "oracle":
            assert base == {"output", "grad_input", "grad_offset"}, r.case.case_id
            if r.case.geometry.rois > 1:  # and each gradient again under every cotangent layout its shape allows
                layouts = set(cotangents(r.case)) - {"random"}
                wanted = {"grad_input@expanded", "grad_offset@transposed", "grad_offset@channels_last"}
                assert "expanded" in layouts
                assert {q for q in wanted if q.partition("@")[2] in layouts} <= {q.quantity for q in r.quantities}, \
                    r.case.case_id


def test_suite_covers_what_the_issue_lists():
    ops = {c.op for c in SUITE}
    assert ops == {OP_DEFORM_ROI_POOL, OP_DEFORM_PSROI_POOL}
    for op in ops:
        mine = [c for c in SUITE if c.op == op]
        assert {"inside", "border", "outside", "tiny", "large", "mixed"} <= {c.rois for c in mine}
        assert {"float64", "float32"} <= {c.dtype for c in mine}
        assert any(c.offsets == "zero" for c in mine) and {0.1, 3.0} <= {c.offset_scale for c in mine}
        assert any(c.no_offset and c.check == "no_offset" for c in mine) and any(not c.contiguous for c in mine)
        assert any(c.geometry.n >= 3 and c.geometry.rois >= 50 for c in mine)
        assert any(c.check == "gradcheck" for c in mine)
    assert {"roi_align", "ps_roi_align"} <= {c.check for c in SUITE}
    assert any(c.op == OP_DEFORM_PSROI_POOL and c.geometry.group_size == 1 for c in SUITE)
    assert any(c.op == OP_DEFORM_PSROI_POOL and c.geometry.classes > 1 for c in SUITE)
    assert any(c.op == OP_DEFORM_ROI_POOL and c.geometry.sampling_ratio == 0 for c in SUITE)
    assert len({c.case_id for c in SUITE}) == len(SUITE)


def test_rois_land_where_their_kind_says():
    by_name = {c.name: c for c in SUITE if c.dtype == "float64"}
    for name in ("roi-outside", "psroi-outside"):
        case = by_name[name]
        rois, scale = case.inputs()["rois"], case.geometry.spatial_scale
        h, w = case.geometry.h / scale, case.geometry.w / scale
        wholly = (rois[:, 1] > w) | (rois[:, 3] < 0) | (rois[:, 2] > h) | (rois[:, 4] < 0)
        partly = ~wholly & ((rois[:, 1] < 0) | (rois[:, 3] > w) | (rois[:, 2] < 0) | (rois[:, 4] > h))
        assert wholly.any() and partly.any(), name
    tiny = by_name["roi-tiny-degenerate"].inputs()["rois"]
    assert ((tiny[:, 3] == tiny[:, 1]) | (tiny[:, 4] == tiny[:, 2])).any()
    assert ((tiny[:, 3] - tiny[:, 1]) < 1).all()
    many = by_name["roi-many-3-images"].inputs()["rois"]
    assert set(many[:, 0].tolist()) == {0.0, 1.0, 2.0}
    large = by_name["roi-large-adaptive"]
    lr, s = large.inputs()["rois"], large.geometry.spatial_scale
    assert ((lr[:, 1] < 0) & (lr[:, 3] > large.geometry.w / s)).all()


@pytest.mark.parametrize("case", [c for c in SUITE if c.kink_margin is not None and c.dtype == "float32"], ids=lambda c: c.case_id)
def test_sampling_points_keep_their_margin_from_kinks(case):
    t = {k: v.double() for k, v in case.inputs().items()}
    margin = case.kink_margin
    if case.op == OP_DEFORM_ROI_POOL:
        points, _ = roi_pool_samples(t["rois"], t.get("offset"), case.geometry)
        coords = [(p.y, p.active) for p in points] + [(p.x, p.active) for p in roi_pool_samples(t["rois"], t.get("offset"), case.geometry)[0]]
        for c, active in coords:
            frac = (c - c.round()).abs()
            assert (frac[(active if active is not None else torch.ones_like(c, dtype=torch.bool)).expand_as(c)] >= margin).all()
    else:
        for p in psroi_pool_samples(t["rois"], t["offset"], case.geometry, case.no_offset):
            for c in (p.x, p.y):
                assert ((c - c.round()).abs() >= margin).all()


@pytest.fixture(scope="module")
def planted():
    """Every planted bug on its operator's suite, each geometry in one dtype (one_dtype_per_geometry), in
    one run, so each case's reference is computed once."""
    plugins = [load_plugin(f"{PLANTED}:{bug}") for bug in sorted(BUGS)]
    # The grid-limit cases (65600 RoIs) test launches, not arithmetic a planted bug gets wrong, and the
    # large-values ones the half types' range (their own test below): left out.
    cases = [c for c in SUITE if "-grid-" not in c.name and c.values is None]
    return plugins, run_verify(backends=plugins, cases=one_dtype_per_geometry(cases))


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_roi_bug_is_caught(planted, bug):
    op, expected = BUGS[bug]
    plugins, found = planted
    assert set(next(p for p in plugins if p.name == bug).ops) == {op}
    results = [r for r in found if r.backend == bug and r.case.op == op]
    assert results and failed(results)
    assert not [r for r in results if r.status == "error"], [r.message for r in results if r.status == "error"]
    failing = {q.quantity for r in results for q in r.failing}
    assert expected <= failing, f"{bug}: expected {expected} to fail, got {failing}"
    catching = {r.case.name for r in results if r.status != "pass"}
    assert len(catching) >= 2, f"{bug}: caught only by {catching}"  # one edit to the suite must not let it through


@pytest.mark.parametrize("bug", sorted(OVERFLOW_BUGS))
def test_an_overflow_in_a_half_type_is_caught_and_named_by_the_large_values_cases_only(bug):
    """A bin's sum kept in float16 passes 65504 on the op's two large-values geometries, in float16 and
    bfloat16, where the float64 average is finite and in range (the oracle passes them: `results`), and
    on no other half-type case, covering array included (float32 and float64 never reach the bug)."""
    op, expected = OVERFLOW_BUGS[bug]
    half = [c for c in SUITE if c.op == op and c.dtype in ("float16", "bfloat16") and c.check == "oracle"]
    found = run_verify(backends=[load_plugin(f"{PLANTED}:{bug}")], cases=half)
    caught = {r.case.case_id for r in found if r.status != "pass"}
    assert caught == {c.case_id for c in half if c.values == "large"}
    assert len({c.name for c in half if c.values == "large"}) == 2
    assert all(expected <= {q.quantity for q in r.failing} for r in found if r.status != "pass")


def test_mxnet_runs_the_psroi_suite_and_declines_mmcv_pooling_with_a_reason():
    mx = get("mxnet")
    assert mx.unavailable is None, mx.unavailable
    found = run_verify(backends=[mx], cases=SUITE)
    psroi = [r for r in found if r.case.op == OP_DEFORM_PSROI_POOL and r.case.check != "compile"]
    # Every case in the dtypes it runs passes; the covering array's float16/bfloat16 cases are declined.
    ran = [r for r in psroi if r.case.dtype in ("float64", "float32")]
    assert ran and all(r.status == "pass" for r in ran), [(r.case.case_id, r.status, r.message) for r in ran if r.status != "pass"]
    assert all(r.status == "unsupported" and "MXNet" in r.message for r in psroi if r not in ran)
    assert any(q.quantity == "grad_offset" for r in psroi for q in r.quantities)  # the CPU backward is checked
    roi = [r for r in found if r.case.op == OP_DEFORM_ROI_POOL]
    assert roi and all(r.status == "unsupported" and "no mmcv-style deform_roi_pool" in r.message for r in roi)


@pytest.mark.parametrize("op, where", [(OP_DEFORM_ROI_POOL, "batch"), (OP_DEFORM_PSROI_POOL, "channels")])
def test_ext_reads_an_input_past_2_31_elements(op, where):
    """Failure class "32-bit index overflow" on ext's CPU kernels: an input of more than 2^31 elements, past
    by the batch or by the channels, only its last part written (the rest is address space that reads as
    zeros, backends/ext/overflow.py); that part's output against the oracle on it alone. The emulated CUDA
    kernels run all four ways in tests/test_ext_emu.py, where a planted int32 channel plane is stopped."""
    from dcnbench.backends.ext.overflow import INT32_MAX, ROI_BOUND, roi_past_int32
    from dcnbench.checking.compare import compare

    got, want, start = roi_past_int32(get("ext").ops[op], op, where)
    assert start > INT32_MAX and float(want.norm()) > 0
    err = compare("output", got, want, "float32")
    assert err.rel_err < ROI_BOUND, err
