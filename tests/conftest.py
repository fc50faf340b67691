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
