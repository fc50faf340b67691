"""`dcnbench verify` end to end in a subprocess: exit codes, output, files, bad input."""

import csv
import json

import pytest

from tests.conftest import PLANTED, invoke, run_cli


def test_builtins_pass_and_exit_0(tmp_path):
    out = run_cli("verify", "--csv", str(tmp_path / "v.csv"), "--json", str(tmp_path / "v.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert "pytorch" in out.stdout and "torchvision" in out.stdout and "summary" in out.stdout
    rows = list(csv.DictReader((tmp_path / "v.csv").open()))
    assert {r["backend"] for r in rows} == {"pytorch", "torchvision", "mxnet", "paddle", "onnxruntime", "ext"}
    assert {r["op"] for r in rows} == {"deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "dcnv3", "dcnv4"}
    assert "ext ran its cpu kernels in mode: deterministic" in out.stdout
    assert json.loads((tmp_path / "v.json").read_text())["kind"] == "verify"


@pytest.mark.parametrize("bug, quantity", [("taps_column_major", "output"), ("missing_offset_grad", "grad_offset"),
                                           ("mutates_offset", "unchanged:offset")])
def test_planted_bug_exits_1_and_names_the_quantity(tmp_path, bug, quantity):
    out = run_cli("verify", "--impl", f"{PLANTED}:{bug}", "--csv", str(tmp_path / "v.csv"), "--json", str(tmp_path / "v.json"))
    assert out.returncode == 1
    problems = out.stdout.split("problems", 1)[1]
    assert quantity in problems and "fail" in problems


def test_nondeterminism_is_its_own_status_and_can_be_allowed(tmp_path):
    args = ["verify", "--impl", f"{PLANTED}:nondeterministic_backward", "--case", "v2/float32",
            "--csv", str(tmp_path / "v.csv"), "--json", str(tmp_path / "v.json")]
    out = run_cli(*args)
    assert out.returncode == 1 and "nondeterministic" in out.stdout
    assert run_cli(*args, "--allow-nondeterministic").returncode == 0


def test_list_and_filters():
    out = run_cli("verify", "--list", "--case", "border", "--dtype", "float16")
    assert out.returncode == 0
    assert out.stdout.split() and all("border" in line and "float16" in line for line in out.stdout.strip().splitlines())


@pytest.mark.parametrize("args, message", [
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--device", "cuda"], "no usable GPU"),
    (["--device", "tpu"], "unknown device"),
    (["--case", "no-such-case"], "no case matches"),
    (["--impl", "missing_file.py:f"], "does not exist"),
    (["--impl", "nofunc"], "malformed --impl"),
    (["--impl", f"{PLANTED}:no_such_function"], "has no 'no_such_function'"),
    (["--impl", f"pytorch={PLANTED}:swapped_offsets"], "clashes"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(args, message):
    out = invoke("verify", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.startswith("error:") and "hint:" in out.stderr


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("dcnbench ")
    out = run_cli()
    assert "verify" in out.stdout and "speed" in out.stdout and "backends" in out.stdout
