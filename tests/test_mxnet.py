"""The MXNet backend against the real worker in .venv-mxnet (created by `make test`)."""

import os
import signal
import sys
import time

from dataclasses import replace

import numpy as np
import pytest
import torch

import dcnbench.backends.mxnet as mxb
from dcnbench.backends.mxnet.client import WorkerClient, WorkerError
from dcnbench.backends.mxnet.protocol import decode_arrays, encode
from dcnbench.backends import get
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.checking.verify import default_suite
from dcnbench.checking.verify import run_verify
from dcnbench.ops.deform_conv2d.contract import parse_shape
from tests.conftest import invoke, run_cli, running

SUITE = {c.case_id: c for c in default_suite()}


@pytest.fixture(scope="module")
def mxnet():
    backend = get("mxnet")
    assert backend.unavailable is None, backend.unavailable
    assert backend.check() is None
    return backend


def _verify(backend, *case_ids):
    return {r.case.case_id: r for r in run_verify(backends=[backend], cases=[SUITE[i] for i in case_ids])}


def test_environment_is_separate_and_pinned(mxnet):
    assert mxb.client().hello["mxnet"] == "1.9.1" and mxb.client().hello["numpy"] == "1.23.5"
    assert np.__version__.split(".")[0] != "1"  # the main environment keeps its own numpy
    assert "mxnet 1.9.1" in mxnet.environment()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dcnv1_follows_rule_c_and_parts_from_the_paper_only_in_the_bands(mxnet, dtype):
    results = _verify(mxnet, f"interior-only-v1/{dtype}", f"band-low-v1/{dtype}", f"band-high-v1/{dtype}")
    interior = results[f"interior-only-v1/{dtype}"]
    # 1. Interior samples: exactly the paper's function, output and every gradient.
    assert interior.status == "pass"
    assert {q.quantity for q in interior.quantities if q.reference == "Z" and "@" not in q.quantity} == {
        "output", "grad_input", "grad_offset", "grad_weight", "grad_bias"}
    for band in ("band-low-v1", "band-high-v1"):
        r = results[f"{band}/{dtype}"]
        # 2. Rule C everywhere, gradients included (zero offset gradient in the clamped band).
        assert r.status == "dialect", (r.message, [(q.quantity, q.reference, q.rel_err) for q in r.quantities])
        assert r.dialect.rule == "C" and r.dialect.matches_rule
        assert all(q.ok for q in r.quantities if q.reference == "C")
        # 3. Diverges from rule Z, by O(1), only at outputs with a sample in a border band.
        assert r.dialect.band_outputs > 0 and r.dialect.band_max_abs_vs_z > 0.1
        assert not all(q.ok for q in r.quantities if q.reference == "Z")


def test_dialect_is_not_a_failure_and_is_shown(mxnet):
    out = invoke("verify", "--backend", "mxnet", "--case", "band-high-v1/float64", "--case", "interior-only-v1/float64",
                 "--show", "all", "--csv", os.devnull, "--json", os.devnull)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dialect rule C" in out.stdout and "diverges from the paper only in the border bands" in out.stdout


def test_dcnv2_forward_follows_rule_z_and_cpu_gradients_are_unsupported(mxnet):
    results = _verify(mxnet, "band-low-v2/float64", "band-high-v2/float32", "border-heavy/float64", "gradcheck-v2/float64")
    for case_id in ("band-low-v2/float64", "band-high-v2/float32", "border-heavy/float64"):
        r = results[case_id]
        assert r.status == "pass" and r.dialect is None
        output = next(q for q in r.quantities if q.quantity == "output")
        assert output.ok and output.rel_err < 1e-6
        grads = [q for q in r.quantities if q.quantity.startswith("grad_")]
        assert grads and all("GPU only" in q.unsupported for q in grads)
    assert results["gradcheck-v2/float64"].status == "unsupported"


def test_dcnv1_gradcheck_passes(mxnet):
    assert _verify(mxnet, "gradcheck-v1-border/float64")["gradcheck-v1-border/float64"].status == "pass"


def test_killed_worker_becomes_an_error_row_and_the_run_goes_on(mxnet):
    cases = [SUITE[i] for i in ("v1/float64", "v1/float32", "interior-only-v1/float64")]
    killed = []

    def kill_after_first(result):
        if not killed:
            killed.append(mxb.client().proc.pid)
            worker = mxb.client().hello["pid"]
            os.kill(mxb.client().proc.pid, signal.SIGKILL)
            # The keeper dies at once; the worker below it on its parent-death signal, a moment later (on a
            # loaded machine it answered the next case first: CI's one failure of this test). Dead, not dying.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and running(worker):
                time.sleep(0.01)

    results = run_verify(backends=[mxnet], cases=cases, on_result=kill_after_first)
    assert [r.status for r in results] == ["dialect", "error", "pass"]
    assert "died (killed by SIGKILL)" in results[1].message
    assert mxb.client().proc.pid != killed[0]


def test_hung_worker_is_killed_at_the_timeout_and_replaced():
    client = WorkerClient(mxb.python(), timeout_s=1.0)
    try:
        first = client.start()
        pid = client.proc.pid
        with pytest.raises(WorkerError, match="timed out after 1 s"):
            client.request({"cmd": "sleep", "seconds": 30})
        assert not client.alive
        client.request({"cmd": "sleep", "seconds": 0})  # a fresh worker answers
        assert client.proc.pid != pid and first["protocol"] == client.hello["protocol"]
    finally:
        client.close()


def test_broken_environment_is_a_clear_error(tmp_path):
    client = WorkerClient(sys.executable, timeout_s=30)  # dcnbench's own python has no mxnet
    with pytest.raises(WorkerError, match="No module named 'mxnet'"):
        client.start()
    client.close()
    # An environment whose metadata says mxnet is installed, but whose python cannot import it.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "lib" / "python3.11" / "site-packages" / "mxnet-1.9.1.dist-info").mkdir(parents=True)
    out = run_cli("verify", "--backend", "mxnet", env_extra={"DCNBENCH_MXNET_PYTHON": str(tmp_path / "bin" / "python")})
    assert out.returncode == 2, out.stderr
    assert "environment is broken" in out.stderr and "No module named 'mxnet'" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("verify", "--backend", "mxnet", env_extra={"DCNBENCH_MXNET_PYTHON": sys.executable})
    assert out.returncode == 2 and "has no mxnet" in out.stderr


def test_missing_environment_exits_2_when_asked_for_and_is_skipped_otherwise(monkeypatch, tmp_path):
    import dcnbench.worker.client as worker_client

    monkeypatch.setattr(worker_client, "PROJECT_ROOT", tmp_path)  # no .venv-mxnet there
    assert "make mxnet-env" in get("mxnet").unavailable
    out = invoke("verify", "--backend", "mxnet")
    assert out.returncode == 2 and "make mxnet-env" in out.stderr
    out = invoke("backends")
    assert "make mxnet-env" in out.stdout
    out = invoke("verify", "--case", "v2/float64", "--csv", os.devnull, "--json", os.devnull)
    assert out.returncode == 0 and "skipping mxnet" in out.stderr


def test_protocol_round_trip_and_no_pickles():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((0, 4))}
    blob = encode({"cmd": "x"}, arrays)
    import json
    import struct

    (n,) = struct.unpack(">Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    back = decode_arrays(header, blob[8 + n:])
    assert all(np.array_equal(arrays[k], back[k]) and arrays[k].dtype == back[k].dtype for k in arrays)
    with pytest.raises(ValueError):
        encode({}, {"o": np.array([object()])})


def test_speed_times_inside_the_worker(mxnet):
    cases = [SpeedCase(parse_shape("1,8,12,12:8,3,3"), mask=False), SpeedCase(parse_shape("1,8,12,12:8,3,3"))]
    results = run_speed(backends=[mxnet], cases=cases, repeat=3, warmup_s=0, baseline=None)
    ok, unsupported = results
    assert ok.status == "ok" and len(ok.measurement.samples_ms) == 3 and ok.peak_bytes is not None
    assert unsupported.status == "unsupported" and "GPU only" in unsupported.message


def test_empty_batch_really_kills_mxnet_so_it_is_declared_unsupported(mxnet):
    # The claim behind the `unsupported` row: the batch-0 case, sent as verify would send it, kills MXNet.
    case = SUITE["batch0/float64"]
    mxb.client().close()
    with pytest.raises(WorkerError, match="SIGFPE"):
        case.call(mxb.deform_conv2d, case.inputs())
    [r] = run_verify(backends=[mxnet], cases=[case])
    assert r.status == "unsupported" and "SIGFPE" in r.message


def test_worker_errors_carry_mxnets_own_message(mxnet):
    with pytest.raises(WorkerError, match="MXNetError: .*infer|Check failed|MXNetError"):
        mxb.client().request({"cmd": "forward", "params": mxb.params_of(parse_shape("1,2,5,5:2,3,3")), "device": "cpu",
                              "record": False, "call": 0},
                             {"input": np.zeros((1, 2, 5, 5)), "offset": np.zeros((1, 7, 5, 5)), "weight": np.zeros((2, 2, 3, 3))})
    assert mxb.client().alive  # a refused request does not kill the worker


def test_output_channels_that_the_deformable_groups_do_not_divide_are_unsupported_not_errors(mxnet):
    # Found by `verify --fuzz`: paddle (both variants) and MXNet's DCNv2 require O % offset_groups == 0;
    # the operator does not, and MXNet's DCNv1 does not either (it matches rule C there).
    from dcnbench.ops.deform_conv2d.contract import ConvGeometry
    from dcnbench.ops.deform_conv2d.workloads import ConvCase
    from dcnbench.checking.verify import run_verify, verify_case

    geo = ConvGeometry(n=1, c=4, h=6, w=6, o=3, kh=2, kw=2, padding=(1, 1), offset_groups=2)
    v2, v1 = (ConvCase(name="fuzz", geometry=geo, mask=mask, offsets="border", seed=9) for mask in (True, False))
    for name, case in (("mxnet", v2), ("paddle", v2), ("paddle", v1)):
        r = verify_case(get(name), case, "cpu", {})
        assert r.status == "unsupported" and "multiple of the deformable groups" in r.message, (name, r.message)
    assert verify_case(get("pytorch"), v2, "cpu", {}).status == "pass"
    # MXNet's DCNv1 runs it: every quantity against its own rule C, and the declaration is needed for DCNv2 only.
    (r,) = run_verify(backends=[mxnet], cases=[v1])
    assert r.status == "dialect" and r.dialect.matches_rule, (r.status, r.message)
    (r,) = run_verify(backends=[replace(mxnet, case_unsupported=None)], cases=[v2])
    assert r.status == "error" and "num_filter must divide deformable group" in r.message


def test_dcnv1_passes_onnxs_multiple_offset_groups_node_case(mxnet):
    # ONNX's own node test test_deform_conv_with_multiple_offset_groups (onnx/backend/test/case/node/
    # deformconv.py): 1 output channel, 2 offset groups, expected output worked out by hand.
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0] = torch.arange(9.0).reshape(3, 3)
    x[0, 1] = torch.arange(8.0, -1, -1).reshape(3, 3)
    offset = torch.zeros(1, 16, 2, 2)
    offset[0, 0, 0, 0], offset[0, 13, 0, 1] = 0.5, -0.1
    got = mxnet.ops["deform_conv2d"](x, offset, torch.ones(1, 2, 2, 2))
    torch.testing.assert_close(got, torch.tensor([[[[33.5, 32.1], [32.0, 32.0]]]]), rtol=0, atol=1e-5)
