"""The `dcnbench` command: one small module per subcommand."""

from __future__ import annotations

import os
import sys
from typing import Annotated

try:
    import typer
    import typer.rich_utils

    from dcnbench import __version__
    from dcnbench.cli import backends, build, common, export_check, gate, repro, report, speed, train, verify
except KeyboardInterrupt:  # Ctrl-C while the CLI itself loads: one line, no traceback
    os.write(2, b"interrupted\n")  # os-level: nothing half-imported is needed to say it
    os._exit(130)

# Help piped to a file or a pager is not folded into a 20-character option column: as wide as a
# reader can still follow, unless COLUMNS or typer's own TERMINAL_WIDTH says otherwise.
HELP_LOG_WIDTH = 120
if typer.rich_utils.MAX_WIDTH is None and common.to_a_log(sys.stdout):
    typer.rich_utils.MAX_WIDTH = HELP_LOG_WIDTH

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Verify and benchmark deformable convolution and deformable RoI pooling implementations.")
app.command("verify")(verify.command)
app.command("speed")(speed.command)
app.command("gate")(gate.command)
app.command("report")(report.command)
app.command("repro")(repro.command)
app.command("backends")(backends.command)
app.command("build")(build.command)
app.command("export-check")(export_check.command)
app.command("train")(train.command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dcnbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="Print the version and exit.")] = False) -> None:
    pass


def _terminate(signum, frame) -> None:
    from dcnbench.errors import Terminated

    raise Terminated()


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)  # like Ctrl-C: partial results written, workers stopped
    try:
        app()
    except KeyboardInterrupt:  # between Typer parsing and a command's own handler
        sys.stderr.write("interrupted\n")
        sys.exit(130)
