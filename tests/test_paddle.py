"""The paddle backend against the real worker in .venv-paddle (created by `make test`)."""

import os

import pytest
import torch

import dcnbench.backends.paddle as pdb
from dcnbench.backends import get
from dcnbench.ops.case import cotangent
from dcnbench.ops.deform_conv2d.contract import parse_shape
from dcnbench.ops.deform_conv2d.oracle import deform_conv2d as oracle
from dcnbench.ops.deform_conv2d.suite import _geo
from dcnbench.ops.deform_conv2d.workloads import ConvCase
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.checking.runs import run_call as _run
from dcnbench.checking.verify import default_suite, run_verify
from tests.conftest import invoke
from tests.roundoff import deform_conv2d_bound

SUITE = {c.case_id: c for c in default_suite()}


@pytest.fixture(scope="module")
def paddle():
    backend = get("paddle")
    assert backend.unavailable is None, backend.unavailable
    assert backend.check() is None
    return backend


def test_environment_is_its_own_and_pinned(paddle):
    assert pdb._worker.client().hello["paddle"] == "3.3.1"
    assert paddle.version == "3.3.1" and "paddle 3.3.1" in paddle.environment()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_both_variants_follow_rule_z_in_each_border_band_with_every_gradient(paddle, dtype):
    ids = [f"{band}-{v}/{dtype}" for band in ("band-low", "band-high") for v in ("v1", "v2")] + [f"groups2-offset-groups4/{dtype}"]
    for r in run_verify(backends=[paddle], cases=[SUITE[i] for i in ids]):
        assert r.status == "pass" and r.dialect is None, (r.case.case_id, r.message)
        checked = {q.quantity for q in r.quantities if q.ok and not q.unsupported}
        assert {"output", "grad_input", "grad_offset", "grad_weight", "grad_bias"} <= checked


def test_gradcheck_and_half_types(paddle):
    found = {r.case.case_id: r for r in run_verify(backends=[paddle], cases=[SUITE["gradcheck-v1-border/float64"],
                                                                            SUITE["v2/float16"], SUITE["v2/bfloat16"]])}
    assert found["gradcheck-v1-border/float64"].status == "pass"
    assert found["v2/float16"].status == "unsupported" and "float64 and float32 only" in found["v2/float16"].message


@pytest.mark.any_cpu
def test_its_offset_gradient_differs_only_exactly_at_p_minus_1(paddle):
    # The README's claim: with integer sampling points (no kink margin), paddle's grad_offset is the
    # oracle's everywhere except where a coordinate is exactly -1 (paddle 0, the oracle the right
    # derivative), which the suite's margin keeps every case away from.
    case = ConvCase(name="kink", geometry=_geo(c=4, h=8, w=8), offsets="zero", kink_margin=None, seed=5)
    inputs = case.inputs()
    ref = _run(oracle, case, inputs, {"random": cotangent(case)})
    got = _run(paddle.ops["deform_conv2d"], case, inputs, {"random": cotangent(case)})
    # Its output agrees with the oracle's within what rounding allows (tests/roundoff.py); bitwise
    # equality held on one CPU and not on another.
    assert bool(((got.output - ref.output).abs() <= deform_conv2d_bound(case, inputs)).all())
    differs = (got.grads["grad_offset"] - ref.grads["grad_offset"]).abs() > 1e-9
    geo = case.geometry
    taps = torch.arange(3, dtype=torch.float64)
    pos = torch.arange(geo.ho, dtype=torch.float64)
    p = (pos[None, :] - 1 + taps[:, None])  # zero offsets, padding 1: py (and px) per tap and output position
    py = p[:, None, :, None].expand(3, 3, geo.ho, geo.wo)
    px = p[None, :, None, :].expand(3, 3, geo.ho, geo.wo)
    at = torch.stack([py, px], dim=2).reshape(1, 18, geo.ho, geo.wo).expand_as(differs)
    assert differs.any() and bool((at[differs] == -1).all())


def test_speed_times_inside_the_worker(paddle):
    found = run_speed(backends=[paddle], cases=[SpeedCase(parse_shape("1,8,12,12:8,3,3"), direction=d)
                                                for d in ("fwd", "bwd")], repeat=3, warmup_s=0)
    for r in found:
        assert r.status == "ok" and len(r.measurement.samples_ms) == 3 and r.peak_bytes is not None, r.message


def test_missing_environment_exits_2_when_asked_for_and_is_skipped_otherwise(monkeypatch, tmp_path):
    import dcnbench.worker.client as worker_client

    monkeypatch.setattr(worker_client, "PROJECT_ROOT", tmp_path)  # no .venv-paddle there
    assert "make paddle-env" in get("paddle").unavailable
    out = invoke("verify", "--backend", "paddle")
    assert out.returncode == 2 and "make paddle-env" in out.stderr and "Traceback" not in out.stderr
    out = invoke("verify", "--backend", "pytorch", "--backend", "paddle", "--case", "v2/float64", "--csv", os.devnull,
                 "--json", os.devnull)
    assert out.returncode == 2
    out = invoke("verify", "--case", "v2/float64", "--op", "deform_conv2d", "--csv", os.devnull, "--json", os.devnull)
    assert out.returncode == 0 and "skipping paddle" in out.stderr
