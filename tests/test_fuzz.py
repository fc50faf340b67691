"""`verify --fuzz`: random problems, shrunk failures, and a one-line repro that fails again."""

import json

import pytest

from dcnbench import ops

from dcnbench.checking import fuzz
from dcnbench.backends import get
from dcnbench.checking.fuzz import case_from_json, case_json, run_fuzz
from dcnbench.plugins import load_plugin
from dcnbench.checking.verify import default_suite
from tests.conftest import PLANTED, invoke, run_cli

PLANTED_DCNV34 = PLANTED.with_name("planted_dcnv34_bugs.py")

CORNER = "corner_stride_w3_dilation_h2"


def test_the_default_suite_cannot_see_the_planted_corner():
    # Outside its corner the planted kernel is torchvision itself, so no suite case can fail it.
    suite = default_suite(op_names=["deform_conv2d"])
    assert not [c for c in suite if c.geometry.stride[1] == 3 and c.geometry.dilation[0] == 2]


def test_fuzz_finds_a_geometry_corner_bug_shrinks_it_and_the_repro_fails_again(tmp_path):
    res = run_cli("verify", "--fuzz", "100", "--seed", "0", "--op", "deform_conv2d", "--impl", f"{PLANTED}:{CORNER}",
                  "--json", str(tmp_path / "f.json"), "--csv", str(tmp_path / "f.csv"))
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads((tmp_path / "f.json").read_text())
    [summary] = doc["fuzz"]
    assert summary["failed"] and 1 <= summary["problems"] <= 100
    [failure] = doc["records"]
    geo = failure["case"]["geometry"]
    assert geo["stride"][1] == 3 and geo["dilation"][0] == 2  # the corner, and shrunk: nothing bigger than it needs
    assert geo["n"] <= 1 and geo["c"] <= 2 and geo["o"] <= 2 and geo["kh"] * geo["kw"] <= 4
    line = next(ln.strip() for ln in res.stdout.splitlines() if ln.strip().startswith("dcnbench verify --impl"))
    again = run_cli(*__import__("shlex").split(line)[1:], "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"))
    assert again.returncode == 1 and "fuzz/" in again.stdout, again.stdout + again.stderr


def test_every_registered_operator_has_a_fuzz_strategy():
    # Without one, `verify --fuzz` on that operator tests nothing (it then says so and exits 1).
    assert [s.name for s in ops.all_ops() if s.fuzz is None] == []


def test_builtin_backends_survive_a_short_seeded_fuzz():
    backends = [get("pytorch"), get("torchvision"), get("ext")]
    found = run_fuzz(backends=backends, op_names=None, examples=6, seconds=20, seed=7)
    assert {f.op for f in found} == set(ops.names())
    assert all(f.tried > 0 for f in found), [(f.op, f.backend, f.nothing) for f in found if f.tried == 0]
    assert not [(f.op, f.backend, f.failure.message) for f in found if f.failure]


@pytest.mark.parametrize("bug", ["xy_swapped", "xy_swapped_v4"])
def test_the_dcnv3_and_dcnv4_strategies_find_a_planted_bug(bug):
    plugin = load_plugin(f"{PLANTED_DCNV34}:{bug}")
    (finding,) = run_fuzz(backends=[plugin], op_names=None, examples=10, seconds=30, seed=1)
    assert finding.failure is not None


def test_an_operator_without_a_strategy_tests_nothing_and_says_so(monkeypatch):
    from dataclasses import replace

    spec = ops.get("dcnv3")
    monkeypatch.setitem(ops._registry, "dcnv3", replace(spec, fuzz=None))
    (finding,) = run_fuzz(backends=[get("pytorch")], op_names=["dcnv3"], examples=5, seconds=5, seed=0)
    assert finding.tested_nothing and "no fuzz strategy" in finding.nothing


def test_a_fuzz_run_that_tests_nothing_exits_1_and_says_why(tmp_path):
    out = invoke("verify", "--fuzz", "1", "--fuzz-time", "0", "--op", "deform_roi_pool", "--backend", "pytorch",
                 "--json", str(tmp_path / "f.json"), "--csv", str(tmp_path / "f.csv"))
    assert out.returncode == 1 and "tested nothing" in out.stdout and "--fuzz-time 0" in out.stdout, out.stdout
    # Every drawn problem declared unsupported (torchvision has no deformable RoI pooling: no pair at all).
    out = invoke("verify", "--fuzz", "3", "--op", "deform_roi_pool", "--backend", "torchvision",
                 "--json", str(tmp_path / "g.json"), "--csv", str(tmp_path / "g.csv"))
    assert out.returncode == 1 and "tested nothing: no selected backend implements" in out.stdout, out.stdout
    finding = fuzz.fuzz_backend(get("mxnet"), ops.get("deform_conv2d"), examples=3, seconds=30, seed=0, device="cuda")
    assert finding.tested_nothing and "unsupported" in finding.nothing, finding


def test_fuzz_options_are_checked():
    for args, culprit in ((("--fuzz-time", "5"), "--fuzz-time"), (("--fuzz", "0"), "--fuzz 0")):
        out = invoke("verify", *args)
        assert out.returncode == 2 and culprit in out.stderr and "hint:" in out.stderr, out.stderr


def test_case_json_round_trips_every_operator():
    for spec in ops.all_ops():
        case = spec.suite(0)[0]
        assert case_from_json(case_json(case)) == case


def test_the_time_bound_stops_drawing_problems(monkeypatch):
    # With the bound past, the fuzzer used to go on drawing problems only to reject them, up to
    # hypothesis's limit of invalid examples (108 s on a 15 s bound); now it stops at once. A clock
    # that passes the bound after a few problems counts the draws made past it: no wall-clock limit.
    from types import SimpleNamespace

    from dcnbench.checking import fuzz
    reads = {"n": 0, "late": 0}

    def monotonic():
        reads["n"] += 1
        late = reads["n"] > 4  # the start, then three problems inside the bound
        reads["late"] += late
        return 100.0 if late else 0.0

    monkeypatch.setattr(fuzz, "time", SimpleNamespace(monotonic=monotonic))
    finding = fuzz.fuzz_backend(get("pytorch"), ops.get("deform_roi_pool"), examples=10**6, seconds=1.0, seed=3)
    assert finding.failure is None and finding.tried >= 1
    assert reads["late"] == 2, reads  # the one draw that meets the bound, and the finding's duration
