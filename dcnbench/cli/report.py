"""`dcnbench report`: Markdown and a self-contained HTML page with plots, from results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcnbench.cli.common import console, user_errors
from dcnbench.errors import UsageError


def check_out(out: Path, overwrite: bool) -> None:
    """Before reading anything: --out is a folder (created), holds no report unless --overwrite, and no
    other run is writing one there."""
    from dcnbench import outputs
    from dcnbench.results.report import FILES

    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file, expected a folder for {' and '.join(FILES)}",
                         hint="give -o a folder (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"-o {out} cannot be created: {exc.strerror or exc}", hint="give -o a folder you can write") from None
    there = [name for name in FILES if (out / name).exists()]
    if there and not overwrite:
        raise UsageError(f"-o {out} already holds a report ({', '.join(there)})",
                         hint="pass --overwrite to replace it, or give -o another folder")
    outputs.claim([("-o", out / name) for name in FILES])


@user_errors
def command(
    files: Annotated[list[Path], typer.Argument(help="Results files (.json from verify, speed or gate; shards merge).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Directory for report.md, report.html and plots/.")] = Path("results/report"),
    title: Annotated[str, typer.Option("--title", help="Report title.")] = "dcnbench report",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a report already in --out.")] = False,
) -> None:
    """Write a comparison report: correctness error matrix, speed ratios, peak memory, environment."""
    from dcnbench.results.report import write_report
    from dcnbench.results import load_many

    check_out(out, overwrite)
    md, page = write_report(load_many(files), out, title)
    console.print(f"wrote {md} and {page}", highlight=False)
