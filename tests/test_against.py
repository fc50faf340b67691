"""`gate --against REV`: the base built in a worktree, base and head timed in alternating runs, merged, judged."""

import json
import re

import pytest

from dcnbench.results import against
from dcnbench.errors import EXIT_FAILED, EXIT_USAGE
from tests.conftest import PLANTED, ROOT, invoke

SLOWABLE = "kernel=benchmarks/slowable.py:deform_conv2d"


def _doc(records):
    return {"kind": "speed", "environment": {"git_commit": "x"}, "records": records}


def _rec(backend, samples, status="ok", digest="d"):
    return {"case_id": "w", "case_digest": digest, "backend": backend, "status": status, "samples_ms": samples,
            "baseline": "conv2d"}


def test_runs_merge_in_order_so_samples_stay_paired_with_their_reference():
    merged = against.merge_runs([_doc([_rec("k", [1, 2]), _rec("conv2d", [10, 20])]),
                                 _doc([_rec("k", [3, 4]), _rec("conv2d", [30, 40])])])
    by = {r["backend"]: r for r in merged["records"]}
    assert by["k"]["samples_ms"] == [1, 2, 3, 4] and by["conv2d"]["samples_ms"] == [10, 20, 30, 40]
    assert by["k"]["median_ms"] == 2.5 and merged["runs"] == 2


def test_a_run_that_failed_or_missed_a_backend_is_not_merged_as_ok():
    merged = against.merge_runs([_doc([_rec("k", [1]), _rec("m", [1])]), _doc([_rec("k", [], status="error")])])
    by = {r["backend"]: r for r in merged["records"]}
    assert by["k"]["status"] == "error"
    assert by["m"]["status"] == "error" and "only 1 of 2 runs" in by["m"]["message"]


def test_a_plugin_inside_the_repository_is_the_base_revisions_copy(tmp_path):
    base = tmp_path / "base"
    (base / "benchmarks").mkdir(parents=True)
    (base / "benchmarks" / "slowable.py").write_text("")
    outside = tmp_path / "elsewhere.py"
    found = against.base_impls([SLOWABLE, f"{outside}:f", f"new={ROOT}/tests/plugins/planted_bugs.py:g"], ROOT, base)
    assert found == (f"kernel={base}/benchmarks/slowable.py:deform_conv2d", f"f={outside}:f")  # the base lacks planted_bugs.py


@pytest.mark.parametrize("args, message", [
    (["--against", "no-such-revision-xyz"], "unknown revision 'no-such-revision-xyz'"),
    (["--against", "HEAD", "results.json"], "--against measures both revisions now"),
    (["--against", "HEAD", "--rounds", "1"], "need at least 2 rounds"),
    (["--against", "HEAD", "--shape", "1,2,3"], "shape"),
])
def test_bad_against_options_are_exit_2(args, message):
    r = invoke("gate", *args)
    assert r.returncode == EXIT_USAGE and message in r.stderr and "hint:" in r.stderr


def test_the_head_is_gated_on_its_oracle(monkeypatch):
    import dcnbench.checking.verify

    suite = dcnbench.checking.verify.default_suite
    monkeypatch.setattr(dcnbench.checking.verify, "default_suite", lambda *a, **k: [c for c in suite() if c.case_id == "v2/float64"])
    r = invoke("gate", "--against", "HEAD", "--impl", f"{PLANTED}:missing_mask_grad", "--performance", "off")
    assert r.returncode == EXIT_FAILED, r.stdout + r.stderr
    assert "| v2/float64 | missing_mask_grad | oracle | **fail** | grad_mask, grad_mask@expanded," in r.stdout


def test_base_and_head_alternate_and_the_gate_decides(tmp_path):
    # The mechanics end to end on a tiny workload (the verdict itself is timing: not asserted).
    summary = tmp_path / "summary.md"
    r = invoke("gate", "--against", "HEAD", "--impl", SLOWABLE, "--backend", "conv2d", "--no-correctness",
               "--shape", "1,4,8,8:4,3,3", "--rounds", "2", "--repeat", "4", "--warmup", "0", "--summary", str(summary))
    assert r.returncode in (0, 3, 4), r.stdout + r.stderr  # a decision, not an error
    text = summary.read_text()
    if r.returncode == 4:  # timed on an oversubscribed machine (this suite's own load may make it one): no ratio judged
        assert re.search(r"- 1,4,8,8:4,3,3\S* · kernel: the (baseline|candidate) was timed on an oversubscribed", text), text
    else:
        assert re.search(r"\| 1,4,8,8:4,3,3\S* \| kernel \| conv2d \| [\d.]+ \| [\d.]+ \|", text), text
    rounds = [ln for ln in r.stderr.splitlines() if ln.startswith("round ")]
    assert [re.findall(r"(base|head) \d+ s", ln) for ln in rounds[:2]] == [["base", "head"], ["head", "base"]]
    scratch = ROOT / re.search(r"every run's results in `([^`]+)`", r.stdout).group(1)
    base = json.loads((scratch / "base.json").read_text())
    kernel = next(rec for rec in base["records"] if rec["backend"] == "kernel")
    assert len(kernel["samples_ms"]) == 4 and base["runs"] == 2
    commit = base["environment"]["git_commit"]
    assert commit and (ROOT / ".cache" / "gate" / commit[:12] / ".venv" / "bin" / "dcnbench").is_file()
