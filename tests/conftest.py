import os
import subprocess
import sys
from pathlib import Path

import pytest

import dcnbench  # noqa: F401  before anything loads torch: OpenMP's idle threads sleep here too (contention.py)

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 (set by execnet); dcnbench's consoles,
# created on import, must see what a log or CI gives them (no COLUMNS), as a run without -n does.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

ROOT = Path(__file__).resolve().parent.parent
PLANTED = ROOT / "tests" / "plugins" / "planted_bugs.py"


@pytest.fixture(autouse=True)
def _fixed_console(monkeypatch):
    # Wide, colourless output so assertions see whole words.
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess: real exit codes, real stderr."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env_extra or {})}
    exe = Path(sys.executable).parent / "dcnbench"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


def running(pid: int) -> bool:
    """Whether process `pid` is alive (a zombie has exited; only its parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Invoked:
    def __init__(self, result):
        self.returncode = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception


def invoke(*args: str) -> Invoked:
    """The Typer app in-process (fast); exit codes and stderr as a subprocess would see them."""
    from typer.testing import CliRunner

    from dcnbench.cli.app import app

    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Invoked(result)


def one_dtype_per_geometry(cases: list) -> list:
    """Each geometry (case name) once: in float64 where the suite runs it so, else in its first dtype.
    The planted bugs are errors of geometry and arithmetic, and a test counts the geometries that catch
    each: caught twice here is caught twice in the whole suite, at half the time (the dtypes' own
    failures, overflow in the half types, have tests of their own)."""
    chosen: dict = {}
    for c in cases:
        if c.name not in chosen or (c.dtype == "float64" and chosen[c.name].dtype != "float64"):
            chosen[c.name] = c
    return [c for c in cases if chosen[c.name] is c]


# Seconds of test time per file in a clean-clone `make test` (2026-12-08, 2 workers; files under 10 s
# left out). pytest runs with `--dist loadfile --no-loadscope-reorder`: each worker takes the next
# file when it is nearly done with its own, so the files go out longest first and the short ones
# fill in at the end, and the two workers finish together instead of one running a late two-minute
# file alone (xdist's own order, most tests first, sent test_ext_emu.py and test_against.py late).
# Only the order: a stale or missing figure costs time, never a test.
FILE_SECONDS = {
    "test_ext_emu.py": 207, "test_faults.py": 178, "test_against.py": 112, "test_cli_verify.py": 102,
    "test_roi_verify.py": 102, "test_verify.py": 91, "test_isolation.py": 75, "test_cli_speed.py": 56,
    "test_ext_cpu_overflow.py": 46, "test_race.py": 42, "test_export.py": 41, "test_ext.py": 39,
    "test_msda_verify.py": 35, "test_worker.py": 34, "test_pch.py": 34, "test_mxnet.py": 32, "test_cli_roi.py": 30,
    "test_fuzz.py": 28, "test_report.py": 23, "test_testing.py": 19, "test_report_browser.py": 18,
    "test_dcnv34_verify.py": 16, "test_msda_oracle.py": 15, "test_repro.py": 14, "test_cli_errors.py": 13,
    "test_cli_startup.py": 11, "test_memory.py": 10,
}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: a file's own order stays
