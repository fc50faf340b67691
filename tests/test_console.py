"""Output a log can read: no folding at 80 columns, no colour codes unless forced, footnotes for unsupported rows."""

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dcnbench.cli.common import LOG_WIDTH, LogConsole
from dcnbench.cli.progress import LateProgress

LONG = "unsupported: " + "a reason that would fold over many lines in an eighty-column table cell " * 2


def _table_text(monkeypatch, **env) -> str:
    for key in ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    table = Table(title="t")
    table.add_column("backend", style="green")
    table.add_column("notes")
    table.add_row("torchvision", LONG)
    LogConsole(file=out).print(table)
    return out.getvalue()


def test_a_log_is_wide_and_colourless(monkeypatch):
    text = _table_text(monkeypatch)
    assert any(LONG.strip() in line for line in text.splitlines())  # the cell on one line: not folded
    assert "\x1b[" not in text
    assert LogConsole(file=io.StringIO()).width == LOG_WIDTH


def test_columns_and_force_color_are_honoured(monkeypatch):
    narrow = _table_text(monkeypatch, COLUMNS="80")
    assert not any(LONG.strip() in line for line in narrow.splitlines()) and max(map(len, narrow.splitlines())) <= 80
    green = "\x1b[32m"  # the backend column's colour
    assert green in _table_text(monkeypatch, FORCE_COLOR="1")
    assert green not in _table_text(monkeypatch, FORCE_COLOR="1", NO_COLOR="1")  # bold may stay, colours go


def test_speed_piped_to_a_log_puts_an_unsupported_backend_in_one_footnote_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    exe = Path(sys.executable).parent / "dcnbench"
    out = subprocess.run([str(exe), "speed", "--shape", "1,2,6,6:2,3,3", "--backend", "pytorch", "--backend", "mxnet",
                          "--repeat", "1", "--warmup", "0", "--no-memory", "--json", str(tmp_path / "s.json"),
                          "--csv", str(tmp_path / "s.csv")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "  mxnet: unsupported: MXNet implements the DCNv2 (ModulatedDeformableConvolution) backward on the GPU only" in lines
    assert not any(line.startswith("│ mxnet") for line in lines)  # no table row for it
    assert "\x1b[" not in out.stdout + out.stderr


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_progress_bar_waits_a_few_seconds_and_needs_a_terminal():
    clock = _Clock()
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    with LateProgress(terminal, total=10, label="verify", delay_s=3, clock=clock) as bar:
        bar.advance("a")
        assert bar.progress is None  # a short run shows nothing
        clock.now = 3.5
        bar.advance("b")
        assert bar.progress is not None and bar.progress.tasks[0].completed == 2 and bar.progress.tasks[0].total == 10
    log = Console(file=io.StringIO(), force_terminal=False)
    with LateProgress(log, total=10, label="verify", delay_s=0, clock=clock) as bar:
        clock.now = 100
        bar.advance("a")
        assert bar.progress is None  # never in a log
    assert log.file.getvalue() == ""


def test_help_piped_to_a_log_is_not_folded_into_a_narrow_option_column():
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH", "NO_COLOR", "FORCE_COLOR")}
    exe = Path(sys.executable).parent / "dcnbench"
    piped = subprocess.run([str(exe), "gate", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "Backend to run (repeatable). Default: every available one." in piped.stdout  # one line, not folded
    narrow = subprocess.run([str(exe), "gate", "--help"], capture_output=True, text=True, env=env | {"COLUMNS": "80"}, timeout=120)
    assert max(map(len, narrow.stdout.splitlines())) <= 80  # COLUMNS still rules
