"""`dcnbench verify` end to end in a subprocess: exit codes, output, files, bad input."""

import csv
import json

import pytest

from dcnbench import ops
from tests.conftest import PLANTED, invoke, run_cli


def test_builtins_pass_and_exit_0(tmp_path):
    # `make demo`'s verify, end to end, on a ninth of the suite (52 cases, every operator in each ninth;
    # each backend's whole suite runs in-process in its own test file, and make test's gate runs the
    # baseline's cases through ext, torchvision and the oracle).
    out = run_cli("verify", "--shard", "1/9", "--csv", str(tmp_path / "v.csv"), "--json", str(tmp_path / "v.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert "pytorch" in out.stdout and "torchvision" in out.stdout and "summary" in out.stdout
    rows = list(csv.DictReader((tmp_path / "v.csv").open()))
    assert {r["backend"] for r in rows} == {"pytorch", "torchvision", "mxnet", "paddle", "onnxruntime", "openvino",
                                            "ext", "transformers"}
    assert {r["op"] for r in rows} == set(ops.names())
    assert "ext ran its cpu kernels in mode: deterministic" in out.stdout
    assert json.loads((tmp_path / "v.json").read_text())["kind"] == "verify"


PLANTED_ON_THE_CLI = {"taps_column_major": "output", "missing_offset_grad": "grad_offset", "mutates_offset": "unchanged:offset"}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    # The CLI path (workers, exit code, failure lines) on two cases, the three bugs in one run (one start-up
    # of dcnbench, three workers); test_verify.py runs each bug on the whole suite.
    tmp = tmp_path_factory.mktemp("planted")
    impls = [a for bug in PLANTED_ON_THE_CLI for a in ("--impl", f"{PLANTED}:{bug}")]
    return run_cli("verify", *impls, "--case", "v2/float64", "--case", "v1/float32",
                   "--csv", str(tmp / "v.csv"), "--json", str(tmp / "v.json"))


@pytest.mark.parametrize("bug", PLANTED_ON_THE_CLI)
def test_planted_bug_exits_1_and_names_the_quantity(planted_run, bug):
    assert planted_run.returncode == 1
    problems = planted_run.stdout.split("not passing", 1)[1]
    assert any(bug in line and PLANTED_ON_THE_CLI[bug] in line and "fail" in line for line in problems.splitlines())


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


def _sections(stdout: str) -> list[str]:
    """Which parts the output has, in order."""
    marks = {"summary": "summary", "not passing": "not passing:", "matrix": "dcnbench verify", "dialects": "dialects:"}
    found = sorted((stdout.find(text), name) for name, text in marks.items() if text in stdout)
    return [name for _, name in found]


def test_failures_come_first_one_line_each_and_the_matrix_only_on_request(tmp_path):
    args = ["verify", "--backend", "torchvision", "--impl", f"{PLANTED}:missing_offset_grad", "--case", "band-low-v2", "--case", "v2/bfloat16",
            "--dtype", "float64", "--dtype", "bfloat16", "--json", str(tmp_path / "v.json"), "--csv", str(tmp_path / "v.csv")]
    default = invoke(*args)
    assert default.returncode == 1
    assert _sections(default.stdout) == ["summary", "not passing"]
    lines = default.stdout.splitlines()
    # One line per failing quantity: status, case, backend, quantity and why, all on it.
    fail = [ln.split(maxsplit=4) for ln in lines if ln.split()[:1] == ["fail"]]
    assert [(f[1], f[2], f[3], f[4]) for f in fail] == [("band-low-v2/float64", "missing_offset_grad", f"grad_offset{at}",
                                                          "missing (None) (tol 1e-10)")
                                                         for at in ("", "@expanded", "@transposed", "@channels_last")]
    # unsupported results: one line per backend and reason, with the count.
    unsupported = [ln for ln in lines if ln.split()[:1] == ["unsupported"]]
    assert any(ln.split()[1] == "torchvision:" and "bfloat16" in ln for ln in unsupported)
    assert len(unsupported) == len({" ".join(ln.split()[:3]) + ln.split("case(s):")[1].split("[")[0] for ln in unsupported})
    full = invoke(*args, "--show", "all")
    assert _sections(full.stdout) == ["summary", "not passing", "matrix"]
    def report(text):  # the covering-array lines say how long building the cases took: not the report
        return [ln for ln in text.splitlines() if "covering-array cases" not in ln]

    assert report(invoke(*args, "-v").stdout) == report(full.stdout)
    quiet = invoke(*args, "--show", "none")
    assert quiet.returncode == 1 and _sections(quiet.stdout) == ["summary"]
    assert invoke(*args, "--show", "everything").returncode == 2
