"""Start-up is part of the interface: help, version and usage errors answer without torch."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy", "matplotlib", "numpy", "pandas")

PROBE = """
import sys
from dcnbench.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print("HEAVY", ",".join(heavy), "EXIT", code)
""" % (HEAVY,)


def _run(*args: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY")][-1]
    heavy, code = line[len("HEAVY "):].rsplit(" EXIT ", 1)
    return heavy.strip(), int(code)


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("verify", "--help"), ("speed", "--help"),
                                  ("gate", "--help"), ("report", "--help"), ("build", "--help"), ("export-check", "--help"),
                                  ("repro", "--help"), ("verify", "--show", "bogus"),
                                  ("speed", "--shape", "1,2,3"), ("verify", "--op", "nope")])
def test_no_heavy_import_before_the_command_needs_it(args):
    heavy, code = _run(*args)
    assert heavy == "", f"{args} imported {heavy}"
    assert code in (0, 2)


def test_the_probe_sees_heavy_imports_when_a_command_needs_them():
    heavy, code = _run("verify", "--list", "--op", "deform_conv2d")
    assert "torch" in heavy.split(",") and code == 0
