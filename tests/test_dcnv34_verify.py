"""Verification of DCNv3 and DCNv4: the oracle and torchvision's identity pass the suite, the suite
covers what the issue lists, planted bugs are caught, official-signature plugins run, and a zero
reference never gives a NaN relative error. (ext runs the whole suite in test_ext.py.)"""

import textwrap
from contextlib import contextmanager

import pytest
import torch

from dcnbench.backends import get
from dcnbench.ops.dcnv3.oracle import positions
from dcnbench.ops.dcnv4.oracle import unpack
from dcnbench.plugins import load_plugin
from dcnbench.checking.compare import compare
from dcnbench.checking.verify import default_suite, failed, run_verify
from tests.conftest import invoke
from tests.plugins.planted_dcnv34_bugs import BUGS, IM2COL_BUGS, ISSUE_BUGS, OVERFLOW_BUGS

SUITE = default_suite(op_names=["dcnv3", "dcnv4"])
PLANTED = "tests/plugins/planted_dcnv34_bugs.py"


@contextmanager
def threads(count: int):
    """Tiny tensors: one thread spares OpenMP barriers that cost more than they save on a shared
    machine. Determinism across threads is checked on its own (below)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def results():
    with threads(1):
        return run_verify(backends=[get("pytorch"), get("torchvision")], cases=SUITE)


def test_the_oracle_is_deterministic_on_two_threads():
    # The cases whose gathers are large enough for torch to parallelise their backward (a gather by
    # advanced indexing scatters its gradient with atomic adds there: caught here, now index_select).
    cases = [c for c in SUITE if c.name in ("v3-d16-g4", "v4-d32-g2") and c.dtype == "float32"]
    with threads(2):
        found = run_verify(backends=[get("pytorch")], cases=cases)
    assert len(found) == 2 and all(r.status == "pass" for r in found), [(r.case.case_id, r.status) for r in found]


def test_oracle_and_the_torchvision_identity_pass_every_case(results):
    bad = [(r.case.case_id, r.backend, r.status, r.message) for r in results if r.status not in ("pass", "unsupported")]
    assert not bad and not failed(results)
    assert not [r for r in results if r.backend == "pytorch" and r.status != "pass"]
    skipped = {r.case.dtype for r in results if r.status == "unsupported"}
    assert skipped == {"bfloat16"}  # torchvision has no bfloat16 kernel
    # Float64 agreement of the identity is at rounding level (InternImage#107, README).
    worst = max(q.rel_err for r in results if r.backend == "torchvision" and r.case.dtype == "float64"
                for q in r.quantities if q.rel_err is not None)
    assert worst < 1e-13


def test_quantities_are_the_output_and_every_differentiable_argument(results):
    for r in results:
        if r.case.check in ("oracle", "deform_conv2d", "dcnv3") and r.status == "pass":
            want = {"output", "grad_input", "grad_offset", "grad_mask"} if r.case.op == "dcnv3" else \
                {"output", "grad_input", "grad_offset_mask"}
            assert {q.quantity for q in r.quantities if "@" not in q.quantity} == want, r.case.case_id


def test_suite_covers_what_the_issue_lists():
    v3 = [c for c in SUITE if c.op == "dcnv3"]
    v4 = [c for c in SUITE if c.op == "dcnv4"]
    assert {1, 16, 30, 32, 64, 71} <= {c.geometry.group_channels for c in v3}
    assert max(c.geometry.group_channels for c in v3) > 1024
    assert set(range(1, 9)) <= {c.geometry.group for c in v3} and {1, 2, 3, 4, 8} <= {c.geometry.group for c in v4}
    for mine in (v3, v4):
        geos = [c.geometry for c in mine]
        assert any(g.kh != g.kw for g in geos) and any(g.stride[0] != g.stride[1] for g in geos)
        assert any(g.padding[0] != g.padding[1] for g in geos) and any(g.dilation[0] != g.dilation[1] for g in geos)
        assert any(g.offset_scale != 1 for g in geos) and any(g.remove_center for g in geos)
        assert {"border", "interior"} <= {c.offsets for c in mine} and any(not c.contiguous for c in mine)
        assert {0, 1} <= {g.n for g in geos}
        assert any(g.n > g.im2col_step and g.n % g.im2col_step for g in geos)
        assert {"float64", "float32", "float16", "bfloat16"} == {c.dtype for c in mine}
        assert sum(c.check == "gradcheck" for c in mine) >= 2 and any(c.check not in ("oracle", "gradcheck") for c in mine)
    assert any(c.geometry.softmax for c in v4) and any(c.pad_lanes == "zero" for c in v4)
    assert all(c.geometry.points in (8, 9) and c.geometry.group_channels % 8 == 0 for c in v4 if c.check != "gradcheck")
    assert len({c.case_id for c in SUITE}) == len(SUITE)


def test_packed_padding_lanes_hold_nan_and_most_cases_have_some():
    with_lanes = 0
    for c in (c for c in SUITE if c.op == "dcnv4" and c.dtype == "float64"):
        om = c.inputs()["offset_mask"]
        used = c.geometry.group * c.geometry.points * 3
        assert not om[..., :used].isnan().any()
        if om.shape[-1] > used and om.numel():
            with_lanes += 1
            assert om[..., used:].isnan().all() == (c.pad_lanes == "nan"), c.case_id
    assert with_lanes >= 10


@pytest.mark.parametrize("case", [c for c in SUITE if c.kink_margin is not None and c.dtype != "float64"],
                         ids=lambda c: c.case_id)
def test_sampling_points_keep_their_margin_from_kinks_in_the_dtype_they_are_given(case):
    t = {k: v.double() for k, v in case.inputs().items()}
    geo = case.geometry
    if case.op == "dcnv3":
        off = t["offset"].reshape(geo.n, geo.ho, geo.wo, geo.group, geo.points, 2)
    else:
        off, _ = unpack(t["offset_mask"], geo)
    for p in positions(off, geo):
        assert ((p - p.round()).abs() >= case.kink_margin * 0.999).all()


def test_mostly_outside_case_has_exact_zero_outputs_like_internimage_test_py():
    case = next(c for c in SUITE if c.case_id == "v3-mostly-outside/float64")
    out = case.call(get("pytorch").ops["dcnv3"], case.inputs())
    assert (out == 0).float().mean().item() > 0.3  # InternImage#64: its elementwise max_rel_err is 0/0 there


def test_a_zero_reference_gives_the_max_abs_error_never_nan():
    zero = torch.zeros(3, 4, dtype=torch.float64)
    assert compare("output", zero, zero, "float64").rel_err == 0.0
    off = compare("output", zero + 1e-30, zero, "float64")
    assert off.rel_err == 1e-30 and not off.ok and "max abs error" in off.note
    # Elementwise zeros do not matter: the error is normwise.
    ref = torch.tensor([0.0, 2.0], dtype=torch.float64)
    assert compare("output", torch.tensor([0.0, 2.0 + 2e-11], dtype=torch.float64), ref, "float64").rel_err == \
        pytest.approx(1e-11)


# ---- planted bugs --------------------------------------------------------------------------------


ALL_BUGS = BUGS | ISSUE_BUGS | IM2COL_BUGS


@pytest.fixture(scope="module")
def planted():
    """Every planted kernel on its op's hand-written float64 cases, in one run per op (one reference per
    case); the issue's bugs and the im2col_step ones also on the op's whole covering array (every dtype)."""
    found = {}
    with threads(1):
        for op in ("dcnv3", "dcnv4"):
            plugins = [load_plugin(f"{PLANTED}:{bug}") for bug, (o, _) in ALL_BUGS.items() if o == op]
            assert all(set(p.ops) == {op} for p in plugins)
            hand = [c for c in SUITE if c.op == op and c.dtype == "float64" and c.check != "gradcheck" and "-pairs" not in c.name]
            pairs = [c for c in SUITE if c.op == op and "-pairs" in c.name]
            found[op] = run_verify(backends=plugins, cases=hand) + run_verify(
                backends=[p for p in plugins if p.name in ISSUE_BUGS | IM2COL_BUGS], cases=pairs)
    return found


def catching(results, pairs: bool | None = None) -> set[str]:
    """The distinct cases (a case's dtypes count once) that failed; of the covering array only, or
    of the hand-written cases only, when `pairs` says so."""
    return {r.case.name for r in results if r.status != "pass" and (pairs is None or ("-pairs" in r.case.name) == pairs)}


@pytest.mark.parametrize("bug", sorted(ALL_BUGS))
def test_planted_bug_is_caught(planted, bug):
    op, expected = ALL_BUGS[bug]
    mine = [r for r in planted[op] if r.backend == bug]
    assert failed(mine)
    assert not [r for r in mine if r.status == "error"], [r.message for r in mine if r.status == "error"]
    failing = {q.quantity for r in mine for q in r.failing}
    assert expected <= failing, f"{bug}: expected {expected} to fail, got {failing}"
    assert len(catching(mine)) >= 2, f"{bug}: caught only by {catching(mine)}"  # one suite edit must not let it through


@pytest.mark.parametrize("bug", sorted(ISSUE_BUGS))
def test_the_covering_array_catches_what_one_hand_written_geometry_did(planted, bug):
    """The issue's DCNv3/DCNv4 bugs, rebuilt: the hand-written cases catch remove_center_axes_swapped
    nowhere (every remove_center case has a square kernel) and each other one with one geometry (the
    softmax one with the two softmax cases that have more than one group); the covering array alone
    catches each with two or more."""
    mine = [r for r in planted[ISSUE_BUGS[bug][0]] if r.backend == bug]
    assert len(catching(mine, pairs=True)) >= 2, catching(mine, pairs=True)
    if bug == "remove_center_axes_swapped":
        assert not catching(mine, pairs=False)


@pytest.mark.parametrize("bug", sorted(IM2COL_BUGS))
def test_a_step_that_does_not_divide_the_batch_catches_a_dropped_remainder(planted, bug):
    mine = [r for r in planted[IM2COL_BUGS[bug][0]] if r.backend == bug]
    for r in mine:
        geo = r.case.geometry
        step = max(1, min(geo.n, geo.im2col_step))
        assert (r.status == "fail") == bool(geo.n % step), (r.case.case_id, r.status)


@pytest.mark.parametrize("bug", sorted(OVERFLOW_BUGS))
def test_an_overflow_in_a_half_type_is_caught_and_named_by_the_large_values_cases_only(bug):
    """Point sums kept in float16 pass 65504 on the two large-values geometries of the op, in float16 and
    bfloat16, where the float64 result is finite and in range (the oracle passes them: `results`), and
    on no other half-type case, covering array included (float32 and float64 never reach the bug)."""
    op, expected = OVERFLOW_BUGS[bug]
    half = [c for c in SUITE if c.op == op and c.dtype in ("float16", "bfloat16")]
    with threads(1):
        found = run_verify(backends=[load_plugin(f"{PLANTED}:{bug}")], cases=half)
    caught = {r.case.case_id for r in found if r.status != "pass"}
    large = {c.case_id for c in half if c.values == "large"}
    assert caught == large and len({c.name for c in half if c.values == "large"}) == 2
    assert all(expected <= {q.quantity for q in r.failing} for r in found if r.status != "pass")


def test_the_new_ops_reach_the_report(results, tmp_path):
    from dcnbench.results import environment, write_json

    chosen = [r for r in results if r.case.name in ("v3-default", "v4-default")]
    write_json(tmp_path / "v.json", "verify", environment(device="cpu", seed=0, backends=[get("pytorch")]), chosen)
    res = invoke("report", str(tmp_path / "v.json"), "-o", str(tmp_path / "report"))
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "grad_offset_mask" in md and "grad_mask" in md and (tmp_path / "report" / "plots" / "error-matrix.png").exists()


def test_reading_padding_lanes_is_caught_by_the_nan_and_only_by_it(planted):
    status = {r.case.name: r.status for r in planted["dcnv4"] if r.backend == "padding_lanes_read"}
    assert status["v4-zero-lanes"] == "pass"  # finite lanes times 0: invisible
    assert status["v4-default"] == "fail" and status["v4-remove-center"] == "pass"  # P = 8 packs no padding


# ---- plugins with the official signatures ----------------------------------------------------------


@pytest.fixture
def official(tmp_path):
    path = tmp_path / "official.py"
    path.write_text(textwrap.dedent('''
        from dcnbench.ops.dcnv3.oracle import dcnv3 as _v3
        from dcnbench.ops.dcnv4.oracle import dcnv4 as _v4

        def dcnv3_apply(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                        dilation_w, group, group_channels, offset_scale, im2col_step, remove_center):
            return _v3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                       dilation_w, group, group_channels, offset_scale, im2col_step, remove_center)
        dcnv3_apply.dcnbench_op = "dcnv3"

        def dcnv4_apply(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                        dilation_w, group, group_channels, offset_scale, im2col_step, remove_center):
            return _v4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                       dilation_w, group, group_channels, offset_scale, im2col_step, remove_center)
        dcnv4_apply.dcnbench_op = "dcnv4"

        def nchw(input, offset, mask, *args):
            return input.permute(0, 3, 1, 2)
        nchw.dcnbench_op = "dcnv3"
    '''))
    return path


def test_plugins_with_the_official_signatures_run_and_skip_the_softmax_flag(official):
    v3 = load_plugin(f"{official}:dcnv3_apply")
    v4 = load_plugin(f"{official}:dcnv4_apply")
    cases = [c for c in SUITE if c.dtype == "float32" and c.check == "oracle" and c.geometry.n < 3]
    with threads(1):
        found = run_verify(backends=[v3, v4], cases=cases)
    assert not failed(found)
    skipped = [r for r in found if r.status == "unsupported" and r.case.op in r.backend]  # each runs its own op
    assert skipped and all(r.case.geometry.softmax and "takes no softmax argument" in r.message for r in skipped)
    assert {r.case.op for r in found if r.status == "pass"} == {"dcnv3", "dcnv4"}


def test_a_plugin_returning_the_wrong_layout_fails_its_probe_with_the_signature(official):
    res = invoke("verify", "--impl", f"{official}:nchw")
    assert res.returncode == 2 and "failed its probe call as dcnv3" in res.stderr
    assert "offset_scale, im2col_step, remove_center" in res.stderr and "(N, Ho, Wo, group*group_channels)" in res.stderr


def test_cli_lists_and_filters_the_new_ops():
    res = invoke("verify", "--op", "dcnv4", "--list")
    assert res.returncode == 0 and "v4-softmax/float64" in res.stdout and "v3-default" not in res.stdout
    res = invoke("verify", "--op", "dcnv3", "--case", "v3-d1025", "--backend", "pytorch", "--json", "/dev/null",
                 "--csv", "/dev/null")
    assert res.returncode == 0, res.stdout + res.stderr
