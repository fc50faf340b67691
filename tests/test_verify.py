"""Verification against the oracle: the built-ins pass, planted bugs are caught, statuses are right."""

import math
from dataclasses import replace

import pytest
import torch

OP_DEFORM_CONV2D = "deform_conv2d"
from dcnbench.plugins import load_plugin
from dcnbench.backends import Backend, get
from dcnbench.checking.verify import default_suite, select_cases
from dcnbench import ops
from dcnbench.checking.compare import compare, tolerance
from dcnbench.checking.runs import cotangents
from dcnbench.checking.verify import failed, run_verify
from tests.conftest import PLANTED, one_dtype_per_geometry
from tests.plugins.planted_bugs import BUGS

SUITE = [c for c in default_suite() if c.op == OP_DEFORM_CONV2D]  # pooling: test_roi_verify.py


def cases(*case_ids):
    by_id = {c.case_id: c for c in SUITE}
    return [by_id[i] for i in case_ids]


@pytest.fixture(scope="module")
def builtin_results():
    return run_verify(backends=[get("pytorch"), get("torchvision")], cases=SUITE)


def test_builtins_pass_the_default_suite(builtin_results):
    bad = [(r.case.case_id, r.backend, r.status, r.message, [q.quantity for q in r.failing])
           for r in builtin_results if r.status not in ("pass", "unsupported")]
    assert not bad
    assert not failed(builtin_results)


def test_torchvision_bfloat16_is_unsupported_with_reason(builtin_results):
    rows = [r for r in builtin_results if r.backend == "torchvision" and r.case.dtype == "bfloat16"]
    assert rows and all(r.status == "unsupported" and "bfloat16" in r.message for r in rows)


def test_every_gradient_is_compared(builtin_results):
    v2_bias = next(r for r in builtin_results if r.case.case_id == "v2/float64" and r.backend == "torchvision")
    assert {q.quantity for q in v2_bias.quantities if "@" not in q.quantity} == set(ops.get("deform_conv2d").quantities)
    v1_nobias = next(r for r in builtin_results if r.case.case_id == "v1-nobias/float64" and r.backend == "torchvision")
    assert {q.quantity for q in v1_nobias.quantities if "@" not in q.quantity} == {"output", "grad_input", "grad_offset",
                                                                                   "grad_weight"}


def test_suite_covers_what_the_issue_lists():
    dtypes = {c.dtype for c in SUITE}
    assert dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert {c.geometry.n for c in SUITE} >= {0, 1, 37}
    assert any(c.geometry.groups > 1 for c in SUITE) and any(c.geometry.offset_groups > 1 for c in SUITE)
    assert any(c.geometry.stride == (2, 2) for c in SUITE) and any(c.geometry.dilation == (2, 2) for c in SUITE)
    assert any(c.geometry.stride[0] != c.geometry.stride[1] and c.geometry.kh != c.geometry.kw for c in SUITE)
    assert any(not c.contiguous for c in SUITE) and any(not c.mask for c in SUITE) and any(not c.bias for c in SUITE)
    assert {"zero_offset", "integer_offset", "zero_mask", "gradcheck"} <= {c.check for c in SUITE}
    assert {"border", "interior", "anisotropic"} <= {c.offsets for c in SUITE}
    assert len({c.case_id for c in SUITE}) == len(SUITE)  # ids key results: no two cases may share one


PAST_CHUNK = ("batch15-past-column-chunk", "batch3-past-column-chunk-2x3")


def catching_cases(results) -> set[str]:
    """The distinct cases (geometries: a case's dtypes count once) on which a backend failed."""
    return {r.case.name for r in results if r.status in ("fail", "error", "nondeterministic")}


@pytest.fixture(scope="module")
def planted():
    """Every planted bug on the whole suite, each geometry in one dtype (one_dtype_per_geometry), in one
    run, so each case's reference is computed once.
    The ONNX export cases are test_export.py's (they check the forward through another runtime)."""
    plugins = [load_plugin(f"{PLANTED}:{bug}") for bug in sorted(BUGS)]
    # The grid-limit case (65599 rows) tests launches, not arithmetic a planted bug gets wrong: left out.
    cases = [c for c in SUITE if c.check != "export" and not c.name.startswith("grid-")]
    # The bugs wrap torchvision: a case torchvision itself declares unsupported (its float16 offset
    # gradient overflowing on the large-values cases) fails them for torchvision's reason, not theirs.
    tv = get("torchvision")
    cases = [c for c in cases if tv.case_unsupported is None or not tv.case_unsupported(c, "cpu")]
    # The two large cases (past ext's column chunk) are the only ones that catch the chunk bug: only
    # that bug runs them (the other bugs are caught by the small cases; they would cost them minutes).
    cases = one_dtype_per_geometry(cases)
    large = [c for c in cases if c.name in PAST_CHUNK]
    small = [c for c in cases if c not in large]
    chunk_bug = [p for p in plugins if p.name == "last_column_chunk_off_by_one"]
    return run_verify(backends=plugins, cases=small) + run_verify(backends=chunk_bug, cases=large)


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_bug_is_caught(planted, bug):
    results = [r for r in planted if r.backend == bug]
    assert results and failed(results)
    assert not [r for r in results if r.status == "error"], [r.message for r in results if r.status == "error"]
    failing = {q.quantity for r in results for q in r.failing}
    if BUGS[bug]:
        assert BUGS[bug] & failing, f"{bug}: expected one of {BUGS[bug]} to fail, got {failing}"
    else:
        assert any(r.status == "nondeterministic" for r in results)
    # Caught twice or more: one edit to the suite must not let it through (issue 21).
    assert len(catching_cases(results)) >= 2, f"{bug}: caught only by {catching_cases(results)}"


@pytest.mark.parametrize("bug", ["channel_sums_in_float16", "bfloat16_through_float16"])
def test_an_overflow_in_a_half_type_is_caught_and_named_by_the_large_values_cases_only(bug):
    from tests.plugins.planted_bugs import OVERFLOW_BUGS

    plugin = load_plugin(f"{PLANTED}:{bug}")
    large = [c for c in SUITE if c.name.startswith("large-values")]
    results = run_verify(backends=[plugin], cases=large + cases("v2/float16", "v2/bfloat16", "groups2-offset-groups4/float16"))
    caught = {r.case.name for r in results if r.status == "fail"}
    assert caught == {c.name for c in large}  # two geometries, nothing else
    assert all(OVERFLOW_BUGS[bug] <= {q.quantity for q in r.failing} for r in results if r.status == "fail")
    assert all(r.status in ("pass", "unsupported") for r in results if not r.case.name.startswith("large-values"))


def test_torchvisions_float16_offset_and_mask_gradients_still_overflow_on_the_large_values_cases():
    from dataclasses import replace as with_fields

    raw = with_fields(get("torchvision"), case_unsupported=None)
    for r in run_verify(backends=[raw], cases=[c for c in SUITE if c.name.startswith("large-values") and c.dtype == "float16"]):
        failing = {q.quantity for q in r.failing}
        assert r.status == "fail" and {"overflow:grad_offset", "overflow:grad_mask"} <= failing, (r.case.case_id, failing)
        assert not {"output", "overflow:output", "grad_input", "grad_weight"} & failing  # its forward is right


def test_half_accumulation_fails_float32_rows():
    plugin = load_plugin(f"{PLANTED}:half_precision_accumulation")
    results = run_verify(backends=[plugin], cases=cases("v2/float32"))
    assert [r.status for r in results] == ["fail"]
    assert any(q.quantity == "output" and q.rel_err > 100 * q.tolerance for q in results[0].failing)


def _backend(fn, name="fake") -> Backend:
    dtypes = ("float64", "float32")
    return Backend(name=name, description="", ops={OP_DEFORM_CONV2D: fn}, dtypes={"cpu": dtypes})


def test_a_raising_backend_is_an_error_row_and_the_run_goes_on():
    def boom(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    results = run_verify(backends=[_backend(boom), get("pytorch")], cases=cases("v2/float64", "v1/float64"))
    assert [r.status for r in results] == ["error", "pass", "error", "pass"]
    assert "kernel exploded" in results[0].message


def test_wrong_dtype_output_fails():
    from dcnbench.ops.deform_conv2d.oracle import deform_conv2d

    def upcasts(*args, **kwargs):
        return deform_conv2d(*args, **kwargs).double()

    [r] = run_verify(backends=[_backend(upcasts)], cases=cases("v2/float32"))
    assert r.status == "fail" and "dtype" in r.failing[0].note


def test_unsupported_dtype_is_reported_not_run():
    [r] = run_verify(backends=[_backend(lambda *a, **k: None)], cases=cases("v2/float16"))
    assert r.status == "unsupported" and "float16" in r.message


def test_compare_rules():
    ref = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    assert compare("grad_input", None, ref, "float64").note.startswith("missing")
    zero = compare("grad_input", torch.zeros(3), ref, "float64")
    assert not zero.ok and "zero" in zero.note
    nan = compare("output", torch.tensor([1.0, float("nan"), 3.0]), ref, "float64")
    assert not nan.ok and nan.note.startswith("nan")
    inf = compare("output", torch.tensor([1.0, float("inf"), 3.0]), ref, "float64")
    assert inf.quantity == "overflow:output" and inf.note.startswith("overflow") and not inf.ok
    # In float16, -2 rounds to a finite value: Inf there is an overflow; 1e5 does not: Inf is its rounding.
    assert compare("output", torch.tensor([1.0, float("-inf"), 3.0]), ref, "float16").quantity == "overflow:output"
    past = compare("output", torch.tensor([1.0, float("inf")]), torch.tensor([1.0, 1e5], dtype=torch.float64), "float16")
    assert past.quantity == "output" and "past float16's largest" in past.note
    assert not compare("output", torch.ones(4), ref, "float64").ok
    assert compare("output", ref.clone(), ref, "float64").rel_err == 0
    off = compare("output", ref * (1 + 1e-6), ref, "float32")
    assert off.ok and math.isclose(off.rel_err, 1e-6, rel_tol=1e-3)
    assert not compare("output", ref * (1 + 1e-6), ref, "float64").ok
    # Exact zeros in the reference allow nothing else; the error is then the max abs error, never NaN.
    at_zero = compare("grad_weight", torch.tensor([0.0, -3e-30], dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                      "float32")
    assert not at_zero.ok and at_zero.rel_err == at_zero.max_abs_err == 3e-30 and "exactly zero" in at_zero.note
    assert compare("grad_weight", torch.zeros(0), torch.zeros(0, dtype=torch.float64), "float32").ok


def test_offset_gradient_has_its_own_tolerance_only_in_half_types():
    assert tolerance("float32", "grad_offset") == tolerance("float32", "output")
    assert tolerance("float16", "grad_offset") > tolerance("float16", "output")


def test_kink_margin_holds_in_every_dtype():
    from dcnbench.ops.deform_conv2d.oracle import sampling_points
    from dcnbench.ops.deform_conv2d.workloads import make_inputs

    for case in SUITE:
        if case.kink_margin is None or case.geometry.n == 0:
            continue
        t = make_inputs(case)
        py, px = sampling_points(t["offset"].double(), case.geometry)
        for p in (py, px):
            assert float((p - p.round()).abs().min()) >= case.kink_margin * 0.999, case.case_id


def test_identity_cases_have_integer_sampling_points():
    from dcnbench.ops.deform_conv2d.workloads import make_inputs

    case = next(c for c in SUITE if c.check == "integer_offset")
    off = make_inputs(case)["offset"]
    assert torch.equal(off, off.round()) and off.abs().max() > 0
    assert replace(case, dtype="float32") in SUITE


def test_select_cases_filters_by_text_and_dtype():
    chosen = select_cases(SUITE, ["border"], ["float32"])
    assert chosen and all("border" in c.case_id and c.dtype == "float32" for c in chosen)
    assert select_cases(SUITE, None, None) == SUITE


def test_a_backward_that_reads_its_gradient_as_contiguous_is_caught_only_by_the_cotangent_layouts():
    plugin = load_plugin(f"{PLANTED}:grad_output_read_as_contiguous")
    [r] = run_verify(backends=[plugin], cases=cases("v2/float64"))
    failing = {q.quantity for q in r.failing}
    assert r.status == "fail"
    assert not {q for q in failing if "@" not in q}, failing  # the fresh random cotangent sees nothing wrong
    assert {"grad_input@expanded", "grad_input@transposed", "grad_input@channels_last"} <= failing


def test_every_gradient_is_checked_under_every_cotangent_layout(builtin_results):
    r = next(r for r in builtin_results if r.case.case_id == "v2/float64" and r.backend == "torchvision")
    names = {q.quantity for q in r.quantities}
    for layout in ("expanded", "transposed", "channels_last"):
        assert {f"{q}@{layout}" for q in ops.get("deform_conv2d").quantities if q != "output"} <= names
    # Every case but the two past the column chunk (cotangent_layouts=False: the random cotangent alone,
    # every gradient still compared) runs each layout its output allows.
    for r in builtin_results:
        if r.backend == "torchvision" and r.status == "pass" and r.case.check == "oracle":
            names = {q.quantity for q in r.quantities}
            layouts = {q.partition("@")[2] for q in names if "@" in q}
            assert {"grad_input", "grad_offset", "grad_weight"} <= names, r.case.case_id
            assert layouts == (set() if r.case.name in PAST_CHUNK else set(cotangents(r.case)) - {"random"}), r.case.case_id


def test_the_suite_holds_a_batch_one_image_past_every_declared_chunk():
    from dcnbench.backends import all_backends

    declared = [b for b in all_backends() if b.batch_chunk and not b.unavailable]
    assert {"ext", "torchvision"} <= {b.name for b in declared}
    for b in declared:
        past = [c for c in default_suite() if c.op in b.ops and (chunk := b.batch_chunk(c.op, c.geometry))
                and c.geometry.n > chunk and c.geometry.n % chunk == 1]
        assert past, f"no case lands one image past {b.name}'s batch chunk"
    assert {31, 32, 33} <= {c.geometry.n for c in SUITE}


def test_a_bug_in_the_last_partial_chunk_is_caught_only_past_the_chunk(planted):
    results = [r for r in planted if r.backend == "last_column_chunk_off_by_one"]
    assert catching_cases(results) == set(PAST_CHUNK)


def test_knob_invariance_catches_a_result_that_depends_on_the_thread_count():
    from tests.plugins.planted_bugs import KNOB_BUGS

    plugin = load_plugin(f"{PLANTED}:serial_path_drops_bias")
    chosen = cases("v2/float64", "v2-nobias/float64")
    assert not failed(run_verify(backends=[plugin], cases=chosen))  # the default run cannot see it
    with_knobs = run_verify(backends=[plugin], cases=chosen, knobs=True)
    assert [r.status for r in with_knobs] == ["fail", "pass"]
    assert KNOB_BUGS["serial_path_drops_bias"] <= {q.quantity for q in with_knobs[0].failing}


def test_knobs_hold_ext_to_its_bitwise_claim():
    ext = get("ext")
    results = run_verify(backends=[ext], cases=cases("batch15-past-column-chunk/float32", "groups2/float64"), knobs=True)
    assert [r.status for r in results] == ["pass", "pass"]
    labels = {q.quantity.split("~")[1] for r in results for q in r.quantities if "~" in q.quantity}
    assert {"threads=1", "column_budget=4096"} <= labels


def test_a_knob_that_changes_bits_fails_a_bitwise_claim():
    from dataclasses import replace as with_fields

    def rounding(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
        import torchvision

        out = torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
        return out * (1 + 1e-15) if torch.get_num_threads() == 1 else out  # far inside tolerance, not bitwise

    base = _backend(rounding, "claims_bitwise")
    honest = run_verify(backends=[base], cases=cases("v2/float64"), knobs=True)
    claims = run_verify(backends=[with_fields(base, thread_invariant=lambda device: True)], cases=cases("v2/float64"),
                        knobs=True)
    assert honest[0].status == "pass" and claims[0].status == "fail"
    assert "not bitwise equal" in claims[0].failing[0].note


def test_worker_backends_run_beside_the_in_process_ones_and_keep_their_order():
    # A backend behind a worker process takes its rows on the worker lane while this process runs the
    # others. The worker-side op below waits for the in-process op of the same case: run one after
    # the other (the worker backend first, as listed), it would time out and be an error row.
    import threading

    pytorch = get("pytorch")
    oracle = pytorch.ops[OP_DEFORM_CONV2D]
    ran_in_process, threads = threading.Event(), set()

    def in_process(*args, **kwargs):
        ran_in_process.set()
        return oracle(*args, **kwargs)

    def behind_a_worker(*args, **kwargs):
        threads.add(threading.current_thread().name)
        if not ran_in_process.wait(timeout=30):
            raise RuntimeError("the in-process backend did not run while this one waited")
        return oracle(*args, **kwargs)

    remote = replace(pytorch, name="remote", ops={OP_DEFORM_CONV2D: behind_a_worker}, self_timed=lambda *a: None)
    local = replace(pytorch, name="local", ops={OP_DEFORM_CONV2D: in_process})
    chosen = cases("v2/float64", "v2-nobias/float64", "groups2/float64")
    emitted = []
    found = run_verify(backends=[remote, local], cases=chosen, on_result=emitted.append)
    assert [(r.case, r.backend, r.status) for r in found] == [(c, b, "pass") for c in chosen for b in ("remote", "local")], \
        [r.message for r in found]
    assert emitted == found  # as they come, in the same order
    assert threads and threading.current_thread().name not in threads
