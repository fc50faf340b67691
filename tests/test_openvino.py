"""The openvino backends: OpenVINO's CPU plugin running opset8 DeformableConvolution, forward only,
under the paper's rule (`openvino`, bilinear_interpolation_pad=True) and its default (`openvino-default`,
rule C, a declared dialect). Each declaration here stands on a measurement the test repeats."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from dcnbench.backends import get
from dcnbench.ops.deform_conv2d.contract import parse_shape
from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as oracle
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.checking.verify import default_suite, failed, run_verify

SUITE = {c.case_id: c for c in default_suite(op_names=["deform_conv2d"])}
BANDS = [f"{c}/float32" for c in ("band-low-v1", "band-high-v1", "band-low-v2", "band-high-v2", "border-heavy")]
INTERIOR = ["interior-only/float32", "interior-only-v1/float32"]  # no sample in a border band


@pytest.fixture(scope="module")
def ov():
    backend = get("openvino")
    assert backend.unavailable is None, backend.unavailable
    return backend


@pytest.fixture(scope="module")
def ov_default():
    backend = get("openvino-default")
    assert backend.unavailable is None, backend.unavailable
    return backend


def test_the_padding_flag_gives_the_papers_rule_on_every_border_and_layout(ov):
    ids = BANDS + INTERIOR + ["batch0/float32", "non-contiguous/float32", "channels-last/float32", "v2/float16"]
    results = run_verify(backends=[ov], cases=[SUITE[i] for i in ids])
    assert not failed(results) and {r.status for r in results} == {"pass"}, [(r.case.case_id, r.message) for r in results]
    for r in results:
        output, *grads = r.quantities
        assert output.quantity == "output" and output.ok
        assert grads and all(q.unsupported.startswith("OpenVINO is an inference runtime") for q in grads)


def test_its_default_is_rule_c_a_declared_dialect_and_fails_without_the_declaration(ov_default):
    cases = [SUITE[i] for i in BANDS + INTERIOR]
    found = {r.case.case_id: r for r in run_verify(backends=[ov_default], cases=cases)}
    assert not failed(found.values())
    assert all(found[i].status == "dialect" and found[i].dialect.rule == "C" for i in BANDS), \
        {i: found[i].status for i in BANDS}
    assert all(found[i].status == "pass" for i in INTERIOR)  # both rules agree away from the bands
    # How far the default is from the paper's rule there: O(1) on unit-scale data, not roundoff.
    assert min(found[i].dialect.band_max_abs_vs_z for i in BANDS) > 0.05
    # The declaration is what makes those rows `dialect`: without it they fail against rule Z.
    undeclared = run_verify(backends=[replace(ov_default, dialects={})], cases=[SUITE[i] for i in BANDS])
    assert {r.status for r in undeclared} == {"fail"}


def test_float64_is_declared_unsupported_because_it_runs_in_float32():
    # The declaration's measurement: a float64 model's output is float32-accurate, far outside the
    # float64 tolerance (1e-10), although the runtime accepts it and answers in float64.
    import openvino as ov
    import openvino.opset8 as opset

    case = SUITE["interior-only/float64"]
    t = case.inputs()
    geo = case.geometry
    params = [opset.parameter(list(t[k].shape), ov.Type.f64) for k in ("input", "offset", "weight", "mask")]
    node = opset.deformable_convolution(params[0], params[1], params[2], list(geo.stride), list(geo.padding),
                                        list(geo.padding), list(geo.dilation), mask=params[3],
                                        bilinear_interpolation_pad=True)
    compiled = ov.Core().compile_model(ov.Model([node], params), "CPU")
    got = compiled([t[k].numpy() for k in ("input", "offset", "weight", "mask")])[0]
    ref = oracle(t["input"], t["offset"], t["weight"], None, geo.stride, geo.padding, geo.dilation, t["mask"]).numpy()
    assert got.dtype == np.float64
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 1e-10 < rel < 1e-5, rel
    r, = run_verify(backends=[get("openvino")], cases=[case])
    assert r.status == "unsupported" and "float32" in r.message


def test_threads_follow_torch_and_compiled_models_are_cached(ov):
    from dcnbench.backends import openvino

    case = SUITE["interior-only/float32"]
    t = case.inputs()
    geo = case.geometry
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            args = (t["input"], t["offset"], t["weight"], t["bias"], geo.stride, geo.padding, geo.dilation, t["mask"])
            first = ov.ops["deform_conv2d"](*args[:4], stride=geo.stride, padding=geo.padding, dilation=geo.dilation,
                                            mask=t["mask"])
            request = openvino._request(t["input"], t["offset"], t["weight"], t["bias"], t["mask"],
                                        replace(geo), pad=True)
            assert request.get_compiled_model().get_property("INFERENCE_NUM_THREADS") == threads
            assert openvino._request(t["input"], t["offset"], t["weight"], t["bias"], t["mask"], geo, pad=True) is request
            assert torch.equal(first, ov.ops["deform_conv2d"](*args[:4], stride=geo.stride, padding=geo.padding,
                                                              dilation=geo.dilation, mask=t["mask"]))
    finally:
        torch.set_num_threads(before)


def test_speed_times_the_forward_and_refuses_the_backward(ov):
    shape = parse_shape("1,8,12,12:8,3,3")
    fwd, bwd = run_speed(backends=[ov], cases=[SpeedCase(shape, direction="fwd"), SpeedCase(shape, direction="fwdbwd")],
                         repeat=3, warmup_s=0, measure_memory=False)
    assert fwd.status == "ok" and len(fwd.measurement.samples_ms) == 3
    assert bwd.status == "unsupported" and "inference runtime" in bwd.message


def test_the_default_runs_only_when_named(monkeypatch, ov, ov_default):
    from dcnbench import backends

    monkeypatch.setattr(backends, "all_backends", lambda: [ov, ov_default])
    assert [b.name for b in backends.select(None, [], kinds=("deformable", "reference"))[0]] == ["openvino"]
    assert [b.name for b in backends.select(["openvino-default"], [], kinds=("deformable",))[0]] == ["openvino-default"]
