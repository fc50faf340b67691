"""Output paths: checked and claimed before any work (dcnbench/outputs.py)."""

import os
import subprocess
import sys
import time

from tests.conftest import ROOT, invoke

VERIFY = ("verify", "--backend", "pytorch", "--case", "v2/float64", "--op", "deform_conv2d")


def _refused(out, *words):
    assert out.returncode == 2 and "Traceback" not in out.stderr, (out.returncode, out.stderr)
    assert all(w in out.stderr for w in words), out.stderr


def test_two_outputs_of_one_run_may_not_be_one_file(tmp_path):
    same = tmp_path / "same"
    _refused(invoke(*VERIFY, "--json", str(same), "--csv", str(same)), "--csv and --json are the same file")
    _refused(invoke(*VERIFY, "--json", str(same), "--csv", str(tmp_path / "." / "same")), "same file")
    assert not same.exists()


def test_a_report_is_not_written_over_a_file_or_another_report_without_overwrite(tmp_path):
    assert invoke(*VERIFY, "--json", str(tmp_path / "v.json"), "--csv", os.devnull).returncode == 0
    (tmp_path / "file").write_text("mine")
    _refused(invoke("report", str(tmp_path / "v.json"), "-o", str(tmp_path / "file")), "is a file")
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.md").write_text("an earlier report")
    _refused(invoke("report", str(tmp_path / "v.json"), "-o", str(tmp_path / "r")), "already holds a report", "--overwrite")
    assert invoke("report", str(tmp_path / "v.json"), "-o", str(tmp_path / "r"), "--overwrite").returncode == 0
    assert "an earlier report" not in (tmp_path / "r" / "report.md").read_text()


def test_an_onnx_path_that_is_a_folder_is_refused_before_the_export(tmp_path):
    _refused(invoke("export-check", f"{ROOT}/tests/plugins/faults.py:nothing", "--onnx", str(tmp_path)), "is a directory")


def test_a_file_another_run_is_writing_is_refused_naming_that_run(tmp_path):
    target = tmp_path / "v.json"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from dcnbench import outputs; outputs.claim([('--json', Path(sys.argv[1]))]); "
                               "print('held', flush=True); time.sleep(600)", str(target)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        _refused(invoke(*VERIFY, "--json", str(target), "--csv", os.devnull), f"pid {holder.pid}",
                 "being written by another dcnbench run")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    # Killed, not finished: its lock file stays, unlocked by the kernel, and does not block the next run.
    assert invoke(*VERIFY, "--json", str(target), "--csv", os.devnull).returncode == 0 and target.exists()


def test_runs_started_in_the_same_second_take_their_own_default_names(tmp_path, monkeypatch):
    from pathlib import Path

    from dcnbench import outputs
    from dcnbench.cli import common

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "stamp", lambda: "20261207-051153")
    (tmp_path / "results").mkdir()
    finished = tmp_path / "results" / "verify-20261207-051153.csv"
    finished.write_text("an earlier run's results")
    running = tmp_path / "results" / "verify-20261207-051153-2.json"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from dcnbench import outputs; outputs.claim([('--json', Path(sys.argv[1]))]); "
                               "print('held', flush=True); time.sleep(600)", str(running)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        first = common.output_paths("verify", None, None)
        second = common.output_paths("verify", Path("mine.csv"), None)
    finally:
        holder.kill()
        holder.wait()
        outputs.release_all()
    assert first == (Path("results/verify-20261207-051153-3.csv"), Path("results/verify-20261207-051153-3.json"))
    assert second == (Path("mine.csv"), Path("results/verify-20261207-051153-4.json"))
    assert finished.read_text() == "an earlier run's results"
