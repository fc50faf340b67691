"""What every command shares: consoles, option aliases, error handling, argument checks.

Nothing here imports torch: `--help` and usage errors answer without it.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, ConsoleDimensions, Group
from rich.table import Table
from rich.text import Text

from dcnbench import ops
from dcnbench.backends import ALL_DTYPES
from dcnbench.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, DcnbenchError, Terminated, UsageError

# Width of output that goes to a log (a pipe, a file, CI) when COLUMNS does not say: wide enough
# that no table folds, where Rich would assume an 80-column terminal.
LOG_WIDTH = 250


class LogConsole(Console):
    """A Rich console that a log can read: when its stream is not a terminal and COLUMNS is unset,
    lines are LOG_WIDTH wide instead of 80. Colour follows Rich's conventions: none when the stream
    is not a terminal unless FORCE_COLOR is set, none at all when NO_COLOR is set.

    Readable at any width: a line of text is never cut by Rich (the terminal wraps it, a log keeps
    it whole), and a table narrower than its longest words (COLUMNS=10) is printed as one line per
    row, `column: value, ...`, instead of cells one character wide."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("soft_wrap", True)
        super().__init__(*args, **kwargs)

    def print(self, *objects, **kwargs):
        fitted = [self._fitted(o) for o in objects]
        if any(f is not o for f, o in zip(fitted, objects)):
            kwargs.setdefault("crop", False)  # whole lines: the terminal wraps them
        super().print(*fitted, **kwargs)

    def _fitted(self, renderable):
        if isinstance(renderable, Group):
            return Group(*(self._fitted(r) for r in renderable.renderables))
        if not isinstance(renderable, Table) or _narrowest(renderable) <= self.width:
            return renderable
        lines = ([Text(str(renderable.title), style="bold")] if renderable.title else []) + [
            Text(", ".join(f"{_plain(column.header)}: {_plain(cell)}" for column, cell in zip(renderable.columns, row)))
            for row in zip(*(column.cells for column in renderable.columns))]
        for line in lines:
            line.no_wrap, line.overflow = True, "ignore"
        return Group(*lines)

    @property
    def size(self) -> ConsoleDimensions:
        found = super().size
        if self._width is None and to_a_log(self.file):
            return ConsoleDimensions(LOG_WIDTH, found.height)
        return found

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


def _plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain


def _narrowest(table: Table) -> int:
    """The width a table needs to show every word of every cell whole (borders and padding included)."""
    def longest(cell) -> int:
        return max((len(word) for word in _plain(cell).split()), default=0)

    return sum(max([longest(column.header), *map(longest, column.cells)]) + 3 for column in table.columns) + 1


def to_a_log(stream) -> bool:
    """Output to `stream` goes to a log (a pipe, a file, CI) and COLUMNS does not give its width."""
    return not os.environ.get("COLUMNS", "").isdigit() and not _isatty(stream)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


console = LogConsole()
err_console = LogConsole(stderr=True)

BackendOpt = Annotated[list[str] | None, typer.Option("--backend", "-b", help="Backend to run (repeatable). Default: every available one.")]
ImplOpt = Annotated[list[str] | None, typer.Option("--impl", help="Add a kernel as a backend: [NAME=]PATH.py:FUNC (repeatable).")]
DtypeOpt = Annotated[list[str] | None, typer.Option("--dtype", help=f"{', '.join(ALL_DTYPES)} (repeatable).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed for every generated tensor.")]
CsvOpt = Annotated[Path | None, typer.Option("--csv", help="CSV path (default: results/<command>-<time>.csv).")]
ShardOpt = Annotated[str | None, typer.Option("--shard", help="Run only shard K of N of the cases, e.g. 2/4 (deterministic).")]
OpOpt = Annotated[list[str] | None, typer.Option("--op", help=f"{', '.join(ops.names())} (repeatable). Default: all.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="JSON path (default: results/<command>-<time>.json).")]
IsolateOpt = Annotated[bool, typer.Option("--isolate", help="Run every in-process backend (built-ins too) in a worker "
                                          "process: a crash or hang costs one case, not the run.")]
InProcessOpt = Annotated[bool, typer.Option("--in-process", help="Run --impl plugins in dcnbench's own process "
                                            "(no worker start-up or transfer; a crash or hang takes the run down).")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="Seconds any one wait on a worker process may take "
                                                  "(default: 60 for plugins and --isolate, 300 for mxnet and paddle or "
                                                  "their DCNBENCH_<NAME>_TIMEOUT).")]


def user_errors(func):
    """Turn a DcnbenchError into `error:`/`hint:` lines on stderr and its exit code, and Ctrl-C
    into one line and exit 130; no traceback for either."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DcnbenchError as exc:
            err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            if exc.hint:
                err_console.print(f"[bold]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            interrupted(exc)

    return wrapper


def interrupted(exc: KeyboardInterrupt, detail: str = "") -> None:
    """Ctrl-C (or SIGTERM): one line, exit 130 (143); atexit handlers then stop any worker processes."""
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    err_console.print(f"{what}{': ' + detail if detail else ''}", style="yellow", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)


# ---- numeric options: finite and in range, checked before any work ---------------------------------

MAX_SEED = 2**62  # seeds are offset per case and per tensor; torch takes 64-bit seeds


def check_count(option: str, value: int, low: int = 1, high: int = 10**9) -> int:
    if not low <= value <= high:
        raise UsageError(f"{option} {value} is out of range", hint=f"give an integer from {low} to {high}")
    return value


def check_seconds(option: str, value: float, high: float = 86400.0) -> float:
    if not (math.isfinite(value) and 0 <= value <= high):
        raise UsageError(f"{option} {value} is not a number of seconds", hint=f"give a finite number from 0 to {high:g}")
    return value


def check_seed(value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f"--seed {value} is out of range", hint=f"give an integer from 0 to {MAX_SEED}")
    return value


def check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{device}'", hint="use --device cpu or --device cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but this machine has no usable GPU (torch.cuda.is_available() is False)",
                             hint="run on a machine with a GPU, or use --device cpu")
    return device


def check_dtype(name: str) -> str:
    if name not in ALL_DTYPES:
        raise UsageError(f"unknown dtype '{name}'", hint=f"choose from: {', '.join(ALL_DTYPES)}")
    return name


def plugin_op(op_names: list[str] | None) -> str | None:
    """The op an --impl plugin implements when it does not say: the one --op given, if exactly one."""
    return op_names[0] if op_names and len(op_names) == 1 else None


def check_isolation(*, isolate: bool, in_process: bool, timeout: float | None) -> bool:
    """Check the isolation options and set the worker time limit; whether plugins run in workers."""
    if isolate and in_process:
        raise UsageError("--isolate and --in-process contradict each other",
                         hint="--isolate moves every backend into a worker; --in-process keeps plugins in this one")
    from dcnbench.worker.settings import set_timeout

    set_timeout(timeout)
    return not in_process


def stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def output_paths(command: str, csv: Path | None, json: Path | None) -> tuple[Path, Path]:
    """The CSV and JSON paths a command writes, checked and claimed before any work is done (exit 2
    when one cannot be written, both are one file, or another run is writing it: dcnbench.outputs);
    the default folder results/ is created.

    A default name carries the start time to the second; a second run started in the same second in
    the same folder (two CI jobs, a script's loop) takes the next free name, `-2`, `-3`, ..., instead of
    stopping on the first run's lock or replacing its finished file."""
    from dcnbench import outputs, results
    from dcnbench.errors import ResultsFileError

    outputs.claim([("--csv", csv), ("--json", json)])
    if csv is not None and json is not None:
        return csv, json
    results.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    when = stamp()
    for n in range(1, 1000):
        tag = when if n == 1 else f"{when}-{n}"
        named = (results.default_path(command, "csv", tag), results.default_path(command, "json", tag))
        if any(path.exists() or outputs.lock_path(path).exists() for path in named):
            continue  # a name of a pair another run holds or wrote: this run's files keep one name
        paths = (csv or named[0], json or named[1])
        defaults = [("--csv", paths[0])] * (csv is None) + [("--json", paths[1])] * (json is None)
        try:
            outputs.claim(defaults)
        except ResultsFileError:  # another run took this name between our look and our lock
            outputs.release(path for _, path in defaults)
            continue
        return paths
    raise ResultsFileError(f"no free results file name for {command} in {results.RESULTS_DIR}",
                           hint="give --csv and --json paths")


def run_writing(writer, run, describe: str):
    """`run()` with its results reaching `writer` as they come; the files are final afterwards, and
    partial (still valid) after Ctrl-C, SIGTERM or a crash."""
    writer.flush(partial=True)  # a valid (empty) file exists from the start, whatever happens next
    try:
        found = run()
    except KeyboardInterrupt as exc:
        writer.flush(partial=True)
        interrupted(exc, f"wrote partial results ({len(writer.results)} of {writer.expected} {describe}) to "
                    f"{writer.csv_path} and {writer.json_path}")
    except BaseException:
        writer.flush(partial=True)
        raise
    writer.flush(partial=False)
    return found
