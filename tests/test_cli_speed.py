"""`dcnbench speed` and `dcnbench backends` end to end in a subprocess."""

import csv
import json

import pytest

from tests.conftest import PLANTED, invoke, run_cli

FAST = ["--repeat", "2", "--warmup", "0"]


def test_speed_table_files_and_reference_row(tmp_path):
    out = run_cli("speed", "--shape", "2,8,12,12:8,3,3", "--threads", "1", *FAST, "--csv", str(tmp_path / "s.csv"),
                  "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    for name in ("pytorch", "torchvision", "conv2d", "median ms", "x conv2d", "GFLOP/s", "peak mem"):
        assert name in out.stdout
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["backend"] for r in rows] == ["pytorch", "torchvision", "mxnet", "paddle", "onnxruntime", "openvino",
                                            "ext", "conv2d", "transformers"]  # roi_align, grid_sample: no conv
    ok = [r for r in rows if r["status"] == "ok"]
    # MXNet: no DCNv2 backward on the CPU; onnxruntime and openvino: inference only; transformers: no conv
    assert [r["backend"] for r in ok] == ["pytorch", "torchvision", "paddle", "ext", "conv2d"]
    assert all(int(r["peak_bytes"]) >= 0 for r in ok) and {r["env_threads"] for r in rows} == {"1"}
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["environment"]["threads"] == 1 and all(len(r["samples_ms"]) == 2 for r in doc["records"] if r["status"] == "ok")
    # The machine's state over the run, in the footer and the environment (the gate reads it).
    seen = doc["environment"]["contention"]
    assert {"load_1m", "steal", "probe_share", "oversubscribed", "reasons"} <= set(seen) and seen["wait_policy"] == "passive"
    assert "machine: " in out.stdout + out.stderr and "OpenMP wait policy passive" in out.stdout + out.stderr


def test_plugins_are_timed_next_to_the_reference(tmp_path):
    out = run_cli("speed", "--shape", "1,4,8,8:4,3,3", "--impl", f"mine={PLANTED}:swapped_offsets", "--no-memory",
                  "--direction", "fwd", *FAST, "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    assert [r["backend"] for r in csv.DictReader((tmp_path / "s.csv").open())] == ["mine", "conv2d"]


@pytest.mark.parametrize("args, message", [
    (["--shape", "8,64,56:64,3,3"], "malformed --shape"),
    (["--shape", "8,64,56,56:64,3,3:1,1,1,3"], "groups=3 must divide"),
    (["--preset", "resnet-9000"], "unknown preset"),
    (["--dtype", "int8"], "unknown dtype"),
    (["--device", "cuda"], "no usable GPU"),
    (["--direction", "sideways"], "unknown --direction"),
    (["--backend", "pytorch", "--baseline", "torchvision"], "--baseline 'torchvision' is not among"),
    (["--threads", "0"], "--threads 0 is out of range"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    out = invoke("speed", *args, "--no-memory", *FAST)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_backends_command_lists_versions_and_dtypes():
    out = run_cli("backends")
    assert out.returncode == 0
    for text in ("pytorch", "torchvision", "conv2d", "reference", "float64", "bfloat16", "available"):
        assert text in out.stdout
