"""The RoI pooling ops through the CLI: verify --op, speed presets and shapes, and bad input (exit 2)."""

import csv
import json

import numpy as np
import pytest

from tests.conftest import invoke, run_cli

PSROI_SHAPE = "1,8,10,12:6,2:0.5,2,0.25,2,2"  # output_dim 2, group 2, pooled 2, part 2


def test_verify_op_runs_only_that_ops_cases():
    res = invoke("verify", "--op", "deform_psroi_pool", "--backend", "pytorch", "--backend", "mxnet", "--case", "inside",
                 "--json", "/dev/null", "--csv", "/dev/null", "--show", "all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "psroi-inside/float64" in res.stdout and "roi-inside/" not in res.stdout.replace("psroi-inside", "")
    assert "v2/" not in res.stdout


def test_verify_catches_a_planted_roi_bug_through_the_cli(tmp_path):
    res = invoke("verify", "--impl", "tests/plugins/planted_roi_bugs.py:roi_gamma_twice", "--case", "offsets-large",
                 "--json", str(tmp_path / "v.json"), "--csv", str(tmp_path / "v.csv"))
    assert res.returncode == 1
    assert "roi-offsets-large/float64" in res.stdout and "fail" in res.stdout
    doc = json.loads((tmp_path / "v.json").read_text())
    ran = {r["case_id"] for r in doc["records"] if r["status"] != "unsupported"}
    assert ran == {"roi-offsets-large/float64", "roi-offsets-large/float32"}  # its dcnbench_op picks the op


def test_plugin_for_a_pooling_op_takes_its_op_from_the_single_op_flag(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text("from dcnbench.ops.deform_roi_pool.oracle import deform_roi_pool as mine\n")
    res = invoke("verify", "--op", "deform_roi_pool", "--impl", f"{plugin}:mine", "--case", "roi-inside",
                 "--json", "/dev/null", "--csv", "/dev/null")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pass" in res.stdout
    wrong = invoke("verify", "--impl", f"{plugin}:mine", "--case", "v2")  # probed as deform_conv2d: wrong op
    assert wrong.returncode == 2 and "failed its probe call as deform_conv2d" in wrong.stderr


def test_speed_on_a_psroi_shape_with_the_reference_row(tmp_path):
    res = invoke("speed", "--op", "deform_psroi_pool", "--shape", PSROI_SHAPE, "--repeat", "2", "--warmup", "0",
                 "--no-memory", "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    by = {r["backend"]: r for r in rows}
    assert set(by) == {"pytorch", "torchvision", "mxnet", "paddle", "onnxruntime", "openvino", "ext", "roi_align",
                       "transformers"}  # conv2d, grid_sample: no row
    assert {by[b]["status"] for b in ("torchvision", "paddle", "onnxruntime", "openvino", "transformers")} == {"unsupported"}
    assert by["pytorch"]["status"] == by["mxnet"]["status"] == by["ext"]["status"] == "ok"
    assert by["roi_align"]["ratio_to_baseline"] == "1.0"
    assert by["pytorch"]["op"] == "deform_psroi_pool" and by["pytorch"]["gflops"] == ""
    assert "x roi_align" in res.stdout


def _save(path, array):
    np.save(path, np.asarray(array, dtype=np.float64))
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--op", "deform_roi_pool", "--shape", "1,4,8,8:3,-2"], "output_size (-2, -2) must be positive"),
    (["--op", "deform_roi_pool", "--shape", "1,4,8,8:3"], "expected N,C,H,W then K,bins"),
    (["--op", "deform_psroi_pool", "--shape", "1,5,8,8:3,2"], "C=5 must be output_dim"),
    (["--op", "deform_pool", "--shape", "1,4,8,8:3,2"], "unknown --op 'deform_pool'"),
    (["--preset", "rfcn", "--op", "deform_conv2d"], "preset 'rfcn' has no deform_conv2d workload"),
    (["--shape", "1,4,8,8:4,3,3", "--rois", "r.npy"], "--rois/--offset apply only to deform_roi_pool, deform_psroi_pool workloads"),
])
def test_bad_pooling_workloads_are_one_line_and_exit_2(args, message, tmp_path):
    res = invoke("speed", *args, "--repeat", "1", "--no-memory")
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.count("error:") == 1 and "hint:" in res.stderr


@pytest.mark.parametrize("rois, offset, message", [
    ([[0, 1, 1, 5]], None, "rois must have shape (K, 5)"),
    ([[0, 1, 1, 5, 5], [3, 1, 1, 5, 5]], None, "rois[1, 0] = 3 is not a batch index of the 1-image input"),
    ([[0, 1, 1, 5, 5]], np.zeros((1, 2, 3, 3)), "offset has shape (1, 2, 3, 3), expected (1, 2, 2, 2)"),
])
def test_bad_user_rois_and_offsets_are_exit_2(rois, offset, message, tmp_path):
    args = ["speed", "--op", "deform_roi_pool", "--shape", "1,4,8,8:1,2:1.0", "--rois", _save(tmp_path / "r.npy", rois)]
    if offset is not None:
        args += ["--offset", _save(tmp_path / "o.npy", offset)]
    before = (tmp_path / "r.npy").read_bytes()
    res = (run_cli if offset is None and "shape (K, 5)" in message else invoke)(*args, "--repeat", "1", "--no-memory")
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "r.npy").read_bytes() == before


def test_user_rois_are_timed_as_given(tmp_path):
    rois = _save(tmp_path / "r.npy", [[0, 1, 1, 5, 5], [0, 0.5, 2, 7, 6.5], [0, -2, -2, 3, 3]])
    res = invoke("speed", "--op", "deform_roi_pool", "--shape", "1,4,8,8:1,2:1.0", "--rois", rois, "--backend", "pytorch",
                 "--repeat", "1", "--warmup", "0", "--no-memory", "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    case = doc["records"][0]["case"]
    assert case["geometry"]["rois"] == 3 and case["rois_file"] == rois  # K comes from the file
