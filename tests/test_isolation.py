"""Isolation with real processes: plugins (and built-ins under --isolate) run in a worker, so a
kernel that hangs, segfaults or exits costs the case it ran, names the cause, and leaves every
other backend's results and no process behind; isolated results equal in-process ones."""

import json
import shutil

import pytest

from dcnbench.backends import get
from dcnbench.errors import PluginError
from dcnbench.ops.deform_conv2d.contract import parse_shape
from dcnbench.plugins import load_plugin, probe_backend
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.checking.verify import default_suite, run_verify, select_cases
from dcnbench.worker import isolation
from tests.conftest import PLANTED, ROOT, run_cli
from tests.test_worker import alive

SUITE = default_suite(op_names=["deform_conv2d"])


@pytest.fixture
def faults(tmp_path):
    """tests/plugins/faults.py copied under tmp_path, so the test can find every process that loads it."""
    shutil.copy(ROOT / "tests" / "plugins" / "faults.py", tmp_path / "faults.py")
    return tmp_path / "faults.py"


def test_a_crash_or_an_exit_is_an_error_row_and_the_run_goes_on(faults, tmp_path):
    # Each plugin passes its probe (float32) and kills its worker on the float64 case; in one process
    # they took dcnbench down (exit 139, 1, 3) with every result lost.
    res = run_cli("verify", "--impl", f"segv={faults}:segfaults", "--impl", f"osexit={faults}:os_exits",
                  "--impl", f"sysexit={faults}:sys_exits", "--backend", "torchvision", "--op", "deform_conv2d", "--case", "batch1/float64",
                  "--json", str(tmp_path / "v.json"), "--csv", str(tmp_path / "v.csv"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    doc = json.loads((tmp_path / "v.json").read_text())
    rows = {r["backend"]: r for r in doc["records"]}
    assert len(rows) == 4 and not doc.get("partial")
    for name, cause in (("segv", "died (killed by SIGSEGV)"), ("osexit", "died (exit status 1)"),
                        ("sysexit", "died (exit status 3): the code in this worker called sys.exit(3)")):
        assert rows[name]["status"] == "error" and cause in rows[name]["message"], rows[name]["message"]
    assert rows["torchvision"]["status"] == "pass"
    assert not alive(str(tmp_path))


def test_a_hang_is_killed_at_the_limit_and_a_fresh_worker_serves_the_next_case(faults, tmp_path):
    plugin = load_plugin(f"{faults}:hangs", isolate=True)
    plugin.worker._timeout_s = 2.0  # --timeout bounds start-up too; narrow only the calls here
    first = plugin.worker.proc.pid
    hung, fine = run_verify(backends=[plugin], cases=select_cases(SUITE, ["batch1/"], ["float64", "float32"]))
    assert hung.status == "error" and "timed out after 2 s and was killed" in hung.message
    assert fine.status == "pass" and plugin.worker.proc.pid != first
    isolation.close(plugin)
    assert not alive(str(tmp_path))


def test_a_plugin_that_hangs_in_speed_costs_its_row_only(faults, tmp_path):
    plugin = load_plugin(f"{faults}:hangs_on_third_call", isolate=True)  # the probe was call 1
    plugin.worker._timeout_s = 2.0
    found = {r.backend: r for r in run_speed(backends=[plugin, get("conv2d")], repeat=3, warmup_s=0, measure_memory=False,
                                             cases=[SpeedCase(parse_shape("1,4,8,8:4,3,3"))])}
    assert found["hangs_on_third_call"].status == "error" and "timed out after 2 s" in found["hangs_on_third_call"].message
    assert found["conv2d"].status == "ok" and len(found["conv2d"].measurement.samples_ms) == 3
    isolation.close(plugin)
    assert not alive(str(tmp_path))


def test_a_plugin_that_crashes_or_hangs_on_its_probe_is_a_plugin_error(faults, tmp_path):
    with pytest.raises(PluginError, match="failed its probe call .*killed by SIGSEGV"):
        load_plugin(f"{faults}:segfaults_always", isolate=True)
    plugin = isolation.plugin_backend(f"{faults}:hangs_always", None, "hangs", None)
    plugin.worker._timeout_s = 2.0
    with pytest.raises(PluginError, match="timed out after 2 s"):
        probe_backend(plugin, f"{faults}:hangs_always", "cpu", "deform_conv2d")
    isolation.close(plugin)
    assert not alive(str(tmp_path))


def _summary(results):
    return [(r.case.case_id, str(r.status), tuple((q.quantity, q.ok, q.rel_err) for q in r.quantities)) for r in results]


def test_isolated_results_equal_in_process_ones():
    # The caller's tensors changed in place must read as changed through the worker too, a
    # non-contiguous input keeps its strides, and gradcheck's many calls agree.
    cases = select_cases(SUITE, ["non-contiguous/float64", "band-low-v2/float64", "gradcheck-v2"], None)
    here = load_plugin(f"{PLANTED}:mutates_offset")
    there = load_plugin(f"{PLANTED}:mutates_offset", isolate=True)
    try:
        got = _summary(run_verify(backends=[there], cases=cases))
        assert got == _summary(run_verify(backends=[here], cases=cases))
        assert any("unchanged:offset" in [q for q, ok, _ in quantities if not ok] for _, _, quantities in got)
    finally:
        isolation.close(there)


def test_isolate_moves_a_builtin_into_a_worker_with_the_same_results():
    cases = select_cases(SUITE, ["border-heavy/", "non-contiguous/float64"], ["float64", "bfloat16"])  # bfloat16 crosses as its bits
    builtin = get("pytorch")
    moved = isolation.isolate(builtin)
    try:
        assert moved.worker is not None and moved.dtypes == builtin.dtypes
        assert _summary(run_verify(backends=[moved], cases=cases)) == _summary(run_verify(backends=[builtin], cases=cases))
    finally:
        isolation.close(moved)


def test_the_cotangent_keeps_its_layout_across_the_worker():
    # A backward that reads its incoming gradient as if contiguous fails the cotangent-layout checks
    # in a worker too (the cotangent crossed as a fresh contiguous array before, and it passed).
    plugin = load_plugin(f"{PLANTED}:grad_output_read_as_contiguous", isolate=True)
    try:
        (result,) = run_verify(backends=[plugin], cases=select_cases(SUITE, ["v2/float64"], None)[:1])
    finally:
        isolation.close(plugin)
    assert result.case.case_id == "v2/float64" and result.status == "fail"
    failing = {q.quantity for q in result.failing}
    assert {"grad_input@expanded", "grad_input@transposed", "grad_input@channels_last"} <= failing
    assert all("@" in q for q in failing)  # the random contiguous cotangent still passes
