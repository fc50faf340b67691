"""dcnbench.testing: the pytest API checks a callable exactly as `verify --impl` does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from dcnbench.testing import assert_op_matches_oracle, case_params, oracle_cases, verify_callable
from tests.conftest import PLANTED, invoke
from tests.plugins import planted_bugs, planted_roi_bugs

# A few cheap cases that still cover DCNv1/v2, groups and a non-contiguous layout.
FEW = ["v2/", "v1/", "groups2/", "noncontiguous"]
ROOT = Path(__file__).resolve().parent.parent


def test_a_correct_kernel_passes():
    assert_op_matches_oracle(tv_deform_conv2d, op="deform_conv2d", dtypes=["float64"], cases=FEW)


def test_a_planted_bug_fails_naming_case_quantity_error_and_tolerance():
    with pytest.raises(AssertionError) as caught:
        assert_op_matches_oracle(planted_bugs.weight_grad_off_by_0_1_percent, dtypes=["float64"], cases=["v2/"])
    text = str(caught.value)
    assert "weight_grad_off_by_0_1_percent does not match the deform_conv2d oracle" in text
    # The gradient is 0.1 % off: rel err ~1e-3 against float64's 1e-10; nothing else fails.
    line = next(x for x in text.splitlines() if "v2/float64" in x)
    assert "grad_weight: rel err 1.00e-03 > tol 1e-10" in line
    assert not any(q in text for q in ("output:", "grad_input:", "grad_offset:", "grad_mask:"))


def test_the_api_fails_on_exactly_what_verify_impl_fails(tmp_path):
    # Same cases, same tolerances, same checks: the failing (case, quantity, error) sets coincide to the bit.
    out = tmp_path / "v.json"
    r = invoke("verify", "--impl", f"{PLANTED}:mask_grad_doubled", "--dtype", "float32", "--case", "v2/", "--case", "v1/",
               "--json", str(out), "--csv", str(tmp_path / "v.csv"), "--show", "none")
    assert r.returncode == 1
    records = json.loads(out.read_text())["records"]
    cli = {(rec["case_id"], q["quantity"], q["rel_err"], q["tolerance"]) for rec in records for q in rec["quantities"] if not q["ok"]}
    results = verify_callable(planted_bugs.mask_grad_doubled, dtypes=["float32"], cases=["v2/", "v1/"])
    api = {(x.case.case_id, q.quantity, q.rel_err, q.tolerance) for x in results for q in x.quantities if not q.ok}
    assert cli and api == cli
    assert [x.case.case_id for x in results] == [rec["case_id"] for rec in records]
    with pytest.raises(AssertionError) as caught:
        assert_op_matches_oracle(planted_bugs.mask_grad_doubled, dtypes=["float32"], cases=["v2/", "v1/"])
    for case_id, quantity, rel_err, tol in cli:
        assert f"{case_id} on mask_grad_doubled: fail: {quantity}: rel err {rel_err:.2e} > tol {tol:.0e}" in str(caught.value)


def test_the_pooling_ops_and_their_planted_bugs():
    # The op comes from the callable's dcnbench_op, as for --impl.
    with pytest.raises(AssertionError, match=r"roi-inside/float64 on roi_offset_xy_swapped: fail: output: rel err"):
        assert_op_matches_oracle(planted_roi_bugs.roi_offset_xy_swapped, dtypes=["float64"], cases=["roi-inside"])


def test_a_broken_callable_is_an_assertion_error_from_the_probe():
    with pytest.raises(AssertionError, match="failed its probe call"):
        assert_op_matches_oracle(lambda *a, **k: 1.0, dtypes=["float64"], cases=["v2/"])


def test_params_are_one_per_case_with_the_case_id():
    params = case_params("deform_conv2d", dtypes=["float32"], cases=["v2/", "v1/"])
    assert [p.id for p in params] == [c.case_id for c in oracle_cases("deform_conv2d", dtypes=["float32"], cases=["v2/", "v1/"])]
    assert len({p.id for p in params}) == len(params) > 1


@pytest.mark.parametrize("case", case_params("deform_conv2d", dtypes=["float32"], cases=["v2/", "v1/"]))
def test_each_case_is_its_own_test(case):
    assert_op_matches_oracle(tv_deform_conv2d, cases=[case])


def _readme_example() -> str:
    """The docs' pytest example (docs/pytest.md, once the README's), verbatim."""
    section = (ROOT / "docs" / "pytest.md").read_text()
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python\n"))]


@pytest.mark.parametrize("kernel, outcome", [("from torchvision.ops import deform_conv2d", "1 passed"),
                                             ("from tests.plugins.planted_bugs import weight_grad_off_by_0_1_percent as deform_conv2d",
                                              "grad_weight: rel err 1.00e-03 > tol 1e-05")])
def test_the_readme_example_runs_as_written(tmp_path, kernel, outcome):
    # The example's own file under pytest, `mykernels` standing for the user's module; one of its
    # parametrised tests (the whole suite is the other tests' job), by the test id the README names.
    (tmp_path / "test_example.py").write_text(_readme_example())
    (tmp_path / "mykernels.py").write_text(kernel + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
                          "test_example.py::test_each_case[v2/float32]"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert outcome in run.stdout, run.stdout + run.stderr
    assert run.returncode == (0 if outcome == "1 passed" else 1), run.stdout + run.stderr
