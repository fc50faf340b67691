"""The `dcnbench` command: one small module per subcommand."""

from __future__ import annotations

import os
import sys
from typing import Annotated

try:
    import typer
    import typer.core
    import typer.rich_utils
    from typer._click import exceptions as click_errors

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


class Commands(typer.core.TyperGroup):
    """The command group, with Click's own usage errors (an unknown option, a value that is not a
    number, a missing argument) in dcnbench's `error:`/`hint:` form and exit code 2, like every other
    usage error, instead of Click's boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `dcnbench verify` with no_args_is_help: help was shown
                code = exc.exit_code
            else:
                from rich.markup import escape

                message, hint = usage_error(exc, argv, self)
                common.err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
                common.err_console.print(f"[bold]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
                code = exc.exit_code
        except typer.Abort:
            sys.stderr.write("aborted\n")
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def usage_error(exc, argv: list[str], group) -> tuple[str, str]:
    """One line naming what was wrong (the option, the value, the command) and one saying what to do."""
    ctx = getattr(exc, "ctx", None)
    command = next((a for a in argv if a in group.commands), None)
    path = ctx.command_path if ctx is not None else "dcnbench" + (f" {command}" if command else "")
    see = f"`{path} --help` lists {'the commands' if path == 'dcnbench' else 'its options'}"
    if isinstance(exc, click_errors.NoSuchOption):
        maybe = " or ".join(sorted(exc.possibilities or ()))
        return f"no such option for {path}: {exc.option_name}", (f"did you mean {maybe}? " if maybe else "") + see
    if isinstance(exc, click_errors.MissingParameter):
        param = exc.param
        what = "an argument" if param is None else param.name.upper() if param.param_type_name == "argument" \
            else "/".join(param.opts)
        return f"{path} needs {what}", see
    if isinstance(exc, click_errors.BadParameter) and exc.param is not None:
        option = "/".join(o for o in exc.param.opts if o.startswith("-")) or exc.param.name.upper()
        errors = getattr(exc.__cause__, "errors", None)
        value = errors()[0].get("input") if callable(errors) else None
        wanted = str(getattr(getattr(exc.param, "type_descriptor", None), "annotation", ""))
        kind = "an integer" if "int" in wanted else "a number" if "float" in wanted else "a valid value"
        got = f" {value!r}" if value is not None else ""
        example = f", e.g. {option} {exc.param.default}" if exc.param.default not in (None, [], ()) else ""
        return f"{option}{got} is not {kind}" + ("" if kind != "a valid value" else f": {exc.message}"), \
            f"give {option} {kind}{example}; {see}"
    if isinstance(exc, click_errors.BadOptionUsage):
        return f"{exc.option_name} needs a value" if "requires an argument" in exc.message else exc.message, \
            f"write {exc.option_name} VALUE; {see}"
    text = exc.format_message().rstrip(".")
    message, _, suggestion = text.partition(". Did you mean ")
    hint = (f"did you mean {suggestion.rstrip('?')}? " if suggestion else "") + see
    return message[:1].lower() + message[1:], hint


app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False, cls=Commands,
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
