"""`dcnbench report`: Markdown and a self-contained HTML page with plots, from results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcnbench.cli.common import console, user_errors


@user_errors
def command(
    files: Annotated[list[Path], typer.Argument(help="Results files (.json from verify, speed or gate; shards merge).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Directory for report.md, report.html and plots/.")] = Path("results/report"),
    title: Annotated[str, typer.Option("--title", help="Report title.")] = "dcnbench report",
) -> None:
    """Write a comparison report: correctness error matrix, speed ratios, peak memory, environment."""
    from dcnbench.report import write_report
    from dcnbench.results import load_many

    md, page = write_report(load_many(files), out, title)
    console.print(f"wrote {md} and {page}", highlight=False)
