"""Gate decisions on synthetic results files: every outcome and exit code."""

import json
import random

import pytest

from dcnbench.results import gate as g
from dcnbench.errors import EXIT_FAILED, EXIT_NOISY, EXIT_OK, EXIT_PERFORMANCE
from dcnbench.results import SCHEMA, SCHEMA_VERSION
from tests.conftest import invoke

ENV = {"device": "cpu", "device_name": "CPU X", "cpu_model": "CPU X", "torch_version": "2.15", "torchvision_version": "0.29",
       "threads": 2, "backend_versions": {"kernel": "1", "conv2d": "2.15"}, "git_commit": "abc", "timestamp": "t"}
WORKLOAD = "8,64,48,48:64,3,3:1,1,1,1,1/v2/float32/cpu/fwdbwd"


def samples(median: float, spread: float, n: int = 20, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [median * (1 + spread * rng.uniform(-1, 1)) for _ in range(n)]


def speed_doc(kernel_ms: list[float], ref_ms: list[float], env=ENV, digest="d1") -> dict:
    rec = [{"case_id": WORKLOAD, "case_digest": digest, "backend": b, "status": "ok", "samples_ms": s, "baseline": "conv2d"}
           for b, s in (("kernel", kernel_ms), ("conv2d", ref_ms))]
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": "speed", "environment": env, "records": rec}


def verify_doc(status: str, failing: tuple[str, ...] = (), digest="c1") -> dict:
    quantities = [{"quantity": q, "ok": q not in failing} for q in ("output", "grad_offset")]
    rec = [{"case_id": "v2/float32", "case_digest": digest, "backend": "kernel", "status": status, "quantities": quantities,
            "message": ""}]
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": "verify", "environment": ENV, "records": rec}


BASE = [verify_doc("pass"), speed_doc(samples(100, 0.05, seed=1), samples(10, 0.05, seed=2))]


def decide(candidate, mode="gate"):
    return g.decide(BASE, candidate, g.Settings(), mode)


def test_unchanged_passes():
    d = decide([verify_doc("pass"), speed_doc(samples(100, 0.05, seed=3), samples(10, 0.05, seed=4))])
    assert d.exit_code == EXIT_OK and [p.verdict for p in d.performance] == ["same"]
    assert d.correctness_checked == 1


def test_correctness_regression_names_the_quantity_and_beats_performance():
    d = decide([verify_doc("fail", ("grad_offset",)), speed_doc(samples(140, 0.02, seed=3), samples(10, 0.02, seed=4))])
    assert d.exit_code == EXIT_FAILED
    [c] = d.regressions
    assert (c.case_id, c.backend, c.was, c.now, c.detail) == ("v2/float32", "kernel", "pass", "fail", "grad_offset")


def test_significant_slowdown_is_a_performance_regression():
    d = decide([verify_doc("pass"), speed_doc(samples(125, 0.05, seed=3), samples(10, 0.05, seed=4))])
    [p] = d.performance
    assert p.verdict == "worse" and p.p_value < 0.01 and p.change == pytest.approx(1.25, rel=0.05)
    assert d.exit_code == EXIT_PERFORMANCE


def test_machine_speed_cancels_in_the_ratio():
    # Everything 40 % slower (another machine state): the ratio to conv2d is unchanged.
    d = decide([verify_doc("pass"), speed_doc(samples(140, 0.05, seed=3), samples(14, 0.05, seed=4))])
    assert [p.verdict for p in d.performance] == ["same"] and d.exit_code == EXIT_OK


def test_improvement_is_reported_and_passes():
    d = decide([verify_doc("pass"), speed_doc(samples(70, 0.05, seed=3), samples(10, 0.05, seed=4))])
    assert [p.verdict for p in d.performance] == ["improved"] and d.exit_code == EXIT_OK


def test_small_move_within_the_factor_is_same():
    d = decide([verify_doc("pass"), speed_doc(samples(105, 0.03, seed=3), samples(10, 0.03, seed=4))])
    assert [p.verdict for p in d.performance] == ["same"]


def test_noise_that_cannot_resolve_the_factor_is_undecided():
    d = decide([verify_doc("pass"), speed_doc(samples(100, 0.9, seed=3), samples(10, 0.05, seed=4))])
    assert [p.verdict for p in d.performance] == ["noisy"] and d.exit_code == EXIT_NOISY
    assert decide([verify_doc("pass"), speed_doc(samples(100, 0.9, seed=3), samples(10, 0.05, seed=4))],
                  "report-only").exit_code == EXIT_OK


def test_another_environment_is_not_comparable_never_pass_or_regression():
    other = dict(ENV, cpu_model="CPU Y")
    d = decide([verify_doc("pass"), speed_doc(samples(300, 0.05, seed=3), samples(10, 0.05, seed=4), env=other)])
    [p] = d.performance
    assert p.verdict == "not comparable" and "cpu_model" in p.reason
    assert d.exit_code == EXIT_OK


def test_a_case_run_under_another_definition_is_not_run_and_fails_unless_allowed():
    candidate = [verify_doc("fail", digest="c2"), speed_doc(samples(300, 0.05), samples(10, 0.05), digest="d2")]
    d = decide(candidate)
    assert [p.verdict for p in d.performance] == ["not run"]
    assert not d.regressions and len(d.correctness_not_run) == 1 and d.exit_code == EXIT_FAILED
    assert g.decide(BASE, candidate, g.Settings(), allow_missing=True).exit_code == EXIT_OK


def test_a_candidate_missing_baseline_cases_fails_unless_allowed():
    speed = speed_doc(samples(100, 0.05, seed=3), samples(10, 0.05, seed=4))
    d = decide([speed])  # no verify records at all: the passing baseline case was not run
    assert d.correctness_checked == 0 and len(d.correctness_not_run) == 1 and d.exit_code == EXIT_FAILED
    assert "did not run" in d.headline
    assert g.decide(BASE, [speed], g.Settings(), allow_missing=True).exit_code == EXIT_OK
    # Performance only gates missing workloads when it gates at all.
    assert len(decide([verify_doc("pass")], "report-only").missing) == 0
    assert len(decide([verify_doc("pass")], "gate").missing) == 1


def test_suspects_are_remeasured_and_the_second_measurement_decides():
    noisy = decide([verify_doc("pass"), speed_doc(samples(100, 0.9, seed=3), samples(10, 0.05, seed=4))])
    assert g.suspects(noisy) == {WORKLOAD}
    again = g.compare_performance(BASE, [speed_doc(samples(101, 0.03, seed=5), samples(10, 0.03, seed=6))], g.Settings())
    settled = g.with_remeasured(noisy, again)
    assert [p.verdict for p in settled.performance] == ["same"] and settled.exit_code == EXIT_OK
    assert "re-measured" in settled.notes[0]


def _files(tmp_path, base, cand):
    bp, cp = tmp_path / "base.json", tmp_path / "cand.json"
    bp.write_text(json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": "baseline",
                              "environment": ENV, "parts": base}))
    cp.write_text(json.dumps(cand[0] if len(cand) == 1 else {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                                              "kind": "gate-candidate", "environment": ENV, "parts": cand}))
    return bp, cp


@pytest.mark.parametrize("cand, code, text", [
    ([verify_doc("pass"), speed_doc(samples(100, 0.05, seed=3), samples(10, 0.05, seed=4))], 0, "PASS"),
    ([verify_doc("error"), speed_doc(samples(100, 0.05, seed=3), samples(10, 0.05, seed=4))], 1, "correctness regression"),
    ([verify_doc("pass"), speed_doc(samples(125, 0.05, seed=3), samples(10, 0.05, seed=4))], 3, "performance regression"),
    ([verify_doc("pass"), speed_doc(samples(100, 0.9, seed=3), samples(10, 0.05, seed=4))], 4, "too noisy"),
])
def test_cli_exit_codes_and_markdown(tmp_path, cand, code, text):
    bp, cp = _files(tmp_path, BASE, cand)
    out = invoke("gate", "--baseline", str(bp), str(cp), "--summary", str(tmp_path / "summary.md"))
    assert out.returncode == code, out.stdout + out.stderr
    md = (tmp_path / "summary.md").read_text()
    assert text in md.splitlines()[0] and "| improved | same | worse | noisy | untrustworthy | not comparable |" in md
    assert "not comparable:" not in md.lower()  # every row was really compared


BUSY = ENV | {"contention": {"cores": 2, "load_1m": 7.5, "steal": 0.0, "probe_share": 0.4, "wait_policy": "passive",
                              "oversubscribed": True, "reasons": ["load 7.5 on 2 cores", "a busy probe got 40% of a core"]}}


def test_timings_from_an_oversubscribed_machine_are_untrustworthy_not_a_ratio(tmp_path):
    # A 25 % slowdown measured while the machine was oversubscribed: the gate gives no verdict on it.
    slow = speed_doc(samples(125, 0.05, seed=3), samples(10, 0.05, seed=4), env=BUSY)
    d = decide([verify_doc("pass"), slow])
    (p,) = d.performance
    assert p.verdict == "untrustworthy" and p.now_ratio is None and "the candidate" in p.reason and "load 7.5" in p.reason
    assert d.exit_code == EXIT_NOISY and d.headline == "UNDECIDED: timed on an oversubscribed machine"
    busy_base = [verify_doc("pass"), speed_doc(samples(100, 0.05, seed=1), samples(10, 0.05, seed=2), env=BUSY)]
    quiet = speed_doc(samples(100, 0.05, seed=3), samples(10, 0.05, seed=4))
    assert [p.verdict for p in g.decide(busy_base, [verify_doc("pass"), quiet], g.Settings()).performance] == ["untrustworthy"]
    bp, cp = _files(tmp_path, BASE, [verify_doc("pass"), slow])
    out = invoke("gate", "--baseline", str(bp), str(cp), "--summary", str(tmp_path / "summary.md"))
    md = (tmp_path / "summary.md").read_text()
    assert out.returncode == EXIT_NOISY and "Untrustworthy:" in md and "oversubscribed machine (load 7.5" in md
    assert "| 1.25" not in md  # no ratio judged
    assert invoke("gate", "--baseline", str(bp), str(cp), "--performance", "report-only").returncode == EXIT_OK


def test_report_only_never_fails_on_performance(tmp_path):
    bp, cp = _files(tmp_path, BASE, [verify_doc("pass"), speed_doc(samples(125, 0.05, seed=3), samples(10, 0.05, seed=4))])
    out = invoke("gate", "--baseline", str(bp), str(cp), "--performance", "report-only")
    assert out.returncode == 0 and "worse" in out.stdout


def test_schema_mismatch_and_usage_errors_exit_2(tmp_path):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"schema": SCHEMA, "schema_version": 99, "kind": "baseline", "parts": []}))
    bp, cp = _files(tmp_path, BASE, [verify_doc("pass")])
    for args in (["--baseline", str(bad), str(cp)], ["--baseline", str(bp), str(bad)], [str(cp)],
                 ["--baseline", str(bp), "--factor", "0.9", str(cp)], ["--baseline", str(bp), "--performance", "maybe", str(cp)],
                 ["--baseline", str(bp), "--factor-for", "oops", str(cp)]):
        out = invoke("gate", *args)
        assert out.returncode == 2 and out.stderr.startswith("error:"), (args, out.stdout, out.stderr)
